"""The run's work area and its output tables: where a run writes, what it has done, and finalize.

The work area `<output>/_work/<run_id>/segments/` holds one *work row* per finished page/chunk (or
one error row per failed source), appended as Parquet files while the job streams. It is the job's
checkpoint: `read_work` + `resume_state` say which sources are complete and which segments of
partly done sources exist, so a resumed run recomputes nothing finished. `finalize` groups it by
source into exactly one `sources/` row per input and one `segments/` row per page/chunk in the
run-date partition, replacing any earlier files of the same run id (`_publish`), so re-running a
run never duplicates rows.
"""

from __future__ import annotations

import logging
import os
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.storage import resolve
from jobs import stages
from jobs.spec import JobSpec

log = logging.getLogger("jobs")


# error_stage of a source that the last attempt of a stalled stream never finished (jobs.pipeline).
STALL_STAGE = "stall"
# Error rows a re-run retries: a fetch error (store unreachable after retries), a stalled source.
RETRIED_ERROR_STAGES = ("fetch", STALL_STAGE)


class OutputLayout:
    """Where a run writes. All paths are URIs under `spec.output` (local or s3://)."""

    def __init__(self, spec: JobSpec):
        root = spec.output.rstrip("/")
        self.root = root
        self.work = f"{root}/_work/{spec.run_id}/segments"
        self.staging = f"{root}/_work/{spec.run_id}/staging"
        self.sources = f"{root}/sources/run_date={spec.run_date}"
        self.segments = f"{root}/segments/run_date={spec.run_date}"
        self.summary = f"{root}/summaries/run_date={spec.run_date}/{spec.run_id}.json"
        self.run_id = spec.run_id


# -- resume state ---------------------------------------------------------------------------------


def _list_parquet(uri: str, storage) -> list[tuple[pafs.FileSystem, str]]:
    fs, path = resolve(uri, storage)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return [(fs, i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]


def read_work(layout: OutputLayout, spec: JobSpec, columns: list[str] | None = None) -> pa.Table:
    """All work rows of the run. A file cut short by a kill mid-write is deleted: its rows were
    never counted as done, so the resumed run recomputes them."""
    tables = []
    for fs, path in _list_parquet(layout.work, spec.storage):
        try:
            with fs.open_input_file(path) as handle:
                tables.append(pq.read_table(handle, columns=columns))
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt file from an interrupted write
            log.warning("removing incomplete work file %s (%s)", path, exc)
            fs.delete_file(path)
    if not tables:
        schema = stages.WORK_SCHEMA if columns is None else pa.schema([stages.WORK_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def resume_state(work: pa.Table) -> tuple[frozenset, dict[str, set[int]]]:
    """(sources complete in the work area, {source_id: finished segment indices} for partial ones)."""
    per_source: dict[str, dict] = {}
    for row in work.select(["source_id", "segment_index", "num_segments", "error_stage", "written_at"]).to_pylist():
        entry = per_source.setdefault(row["source_id"], {"segments": set(), "expected": 0, "final_error": False})
        if row["segment_index"] == stages.ERROR_SEGMENT:
            entry["final_error"] |= row["error_stage"] not in RETRIED_ERROR_STAGES
        else:
            entry["segments"].add(row["segment_index"])
            entry["expected"] = max(entry["expected"], row["num_segments"])
    done, partial = set(), {}
    for source_id, entry in per_source.items():
        if entry["final_error"] or (entry["expected"] and len(entry["segments"]) >= entry["expected"]):
            done.add(source_id)
        elif entry["segments"]:
            partial[source_id] = entry["segments"]
    return frozenset(done), partial


# -- finalize ---------------------------------------------------------------------------------------


def finalize(spec: JobSpec, layout: OutputLayout) -> pa.Table:
    """Group the work area by source into the output tables; return the sources table (no text)."""
    import ray

    work = read_work(layout, spec)
    if work.num_rows == 0:
        raise RuntimeError("nothing was processed: the work area is empty")
    strict = spec.strict

    def _assemble(kind: str):
        schema = stages.SOURCE_SCHEMA if kind == "source" else stages.SEGMENT_SCHEMA

        def fn(group: pa.Table) -> pa.Table:
            source, segments = stages.assemble_source(group.to_pylist(), strict=strict)
            return pa.Table.from_pylist([source] if kind == "source" else segments, schema=schema)

        return fn

    # The work table is already in driver memory here (resume needed it); Ray Data spreads the
    # grouping and the Parquet writing over the cluster.
    partitions = max(1, min(64, work.num_rows // 20_000 + 1))
    work_ds = ray.data.from_arrow(work)
    for kind, target in (("source", layout.sources), ("segment", layout.segments)):
        staging = f"{layout.staging}/{kind}-{uuid.uuid4().hex[:8]}"
        fs, staging_path = resolve(staging, spec.storage)
        (work_ds.groupby("source_id", num_partitions=partitions)
         .map_groups(_assemble(kind), batch_format="pyarrow")
         .write_parquet(staging_path, filesystem=fs, min_rows_per_file=50_000))
        _publish(spec, staging, target, layout.run_id)
    sfs, staging_root = resolve(layout.staging, spec.storage)
    try:
        sfs.delete_dir(staging_root)
    except OSError:
        pass
    fs, path = resolve(layout.sources, spec.storage)
    files = [p for _, p in _list_parquet(layout.sources, spec.storage) if os.path.basename(p).startswith(f"{layout.run_id}_")]
    cols = [c for c in stages.SOURCE_SCHEMA.names if c != "text"]
    tables = []
    for p in files:
        with fs.open_input_file(p) as h:
            tables.append(pq.read_table(h, columns=cols))
    return pa.concat_tables(tables) if tables else pa.schema([stages.SOURCE_SCHEMA.field(c) for c in cols]).empty_table()


def _publish(spec: JobSpec, staging: str, target: str, run_id: str) -> None:
    """Replace this run's files in the partition with the staged ones (other runs' files stay)."""
    fs, target_path = resolve(target, spec.storage)
    fs.create_dir(target_path, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(target_path, allow_not_found=True)):
        if os.path.basename(info.path).startswith(f"{run_id}_"):
            fs.delete_file(info.path)
    staged = sorted(p for _, p in _list_parquet(staging, spec.storage))
    for index, path in enumerate(staged):
        fs.move(path, f"{target_path}/{run_id}_{index:05d}.parquet")


def read_published_segments(spec: JobSpec, layout: OutputLayout, columns: list[str]) -> pa.Table:
    """Columns of this run's published segments/ files (the summary's output-check counts)."""
    tables = []
    for fs, path in _list_parquet(layout.segments, spec.storage):
        if os.path.basename(path).startswith(f"{layout.run_id}_"):
            with fs.open_input_file(path) as handle:
                tables.append(pq.read_table(handle, columns=columns))
    if not tables:
        return pa.schema([stages.SEGMENT_SCHEMA.field(c) for c in columns]).empty_table()
    return pa.concat_tables(tables)
