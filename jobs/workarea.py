"""The run's work area and its output tables: where a run writes, what it has done, and finalize.

The work area `<output>/_work/<run_id>/segments/` holds one *work row* per finished page/chunk (or
one error row per failed source), appended as Parquet files while the job streams. It is the job's
checkpoint: `jobs.resume.ResumeIndex` reduces it (on the cluster) to which sources are complete and
which segments of partly done sources exist, so a resumed run recomputes nothing finished.
`finalize` groups it by source (Ray Data, on the cluster) into exactly one `sources/` row per input
and one `segments/` row per page/chunk in the run-date partition, replacing any earlier files of
the same run id (`_publish`), so re-running a run never duplicates rows. The driver lists files and
moves them; it never holds the work rows (`read_work` does, for tests and small tools).
"""

from __future__ import annotations

import logging
import os
import uuid

import pyarrow as pa
import pyarrow.compute as pc
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
    """Where a run writes. All paths are URIs under `spec.output.uri` (local or s3://)."""

    def __init__(self, spec: JobSpec):
        root = spec.output.uri.rstrip("/")
        self.root = root
        self.work = f"{root}/_work/{spec.run.run_id}/segments"
        self.staging = f"{root}/_work/{spec.run.run_id}/staging"
        self.sources = f"{root}/sources/run_date={spec.run.run_date}"
        self.segments = f"{root}/segments/run_date={spec.run.run_date}"
        self.summary = f"{root}/summaries/run_date={spec.run.run_date}/{spec.run.run_id}.json"
        self.run_id = spec.run.run_id


# -- resume state ---------------------------------------------------------------------------------


def _list_parquet(uri: str, storage) -> list[tuple[pafs.FileSystem, str]]:
    fs, path = resolve(uri, storage)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return [(fs, i.path) for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")]


# What a work file written before a column existed meant by its absence (jobs.stages reads a null
# text_source as "not the model's", which would count an old segment as zero attempts).
OLDER_WORK_DEFAULTS = {"text_source": "model", "retry_round": 0}


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in `schema`'s columns and types. A column the file lacks (written by an older version
    of the job, before the column existed) is its OLDER_WORK_DEFAULTS value or null: an older work
    area is read, resumed and finalized, never discarded."""
    def column(field: pa.Field) -> pa.Array:
        if field.name in table.column_names:
            return table.column(field.name).cast(field.type)
        if field.name in OLDER_WORK_DEFAULTS:
            return pa.array([OLDER_WORK_DEFAULTS[field.name]] * table.num_rows, field.type)
        return pa.nulls(table.num_rows, field.type)

    return pa.table([column(f) for f in schema], schema=schema)


def read_work_file(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> pa.Table | None:
    """One work file's rows in `schema` (WORK_SCHEMA columns); None when the file was cut short by
    a kill mid-write (not a whole Parquet file): it is deleted, its rows were never counted as done
    and the resumed run recomputes them. A whole file is never deleted: a store error (unreachable,
    access denied) is raised, and so is a column that cannot take the schema's type."""
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            table = parquet.read(columns=[n for n in schema.names if n in parquet.schema_arrow.names])
    except pa.ArrowInvalid as exc:  # not a whole Parquet file (an OSError is the store's: raised)
        log.warning("removing incomplete work file %s (%s)", path, exc)
        fs.delete_file(path)
        return None
    try:
        return _conform(table, schema)
    except (pa.ArrowException, ValueError) as exc:
        raise RuntimeError(f"work file {path} does not fit the work schema: {exc}") from exc


def read_work(layout: OutputLayout, spec: JobSpec, columns: list[str] | None = None) -> pa.Table:
    """All work rows of the run in this process (tests, small tools; the job itself reads the work
    area on the cluster with `work_dataset`). See `read_work_file`."""
    schema = _schema(columns)
    tables = [t for fs, path in _list_parquet(layout.work, spec.storage)
              if (t := read_work_file(fs, path, schema)) is not None]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _schema(columns: list[str] | None) -> pa.Schema:
    return stages.WORK_SCHEMA if columns is None else pa.schema([stages.WORK_SCHEMA.field(c) for c in columns])


# -- the work area on the cluster -------------------------------------------------------------------

# Work files per read task. A work file is one block the stream wrote (about batch_size rows), so a
# read task holds some thousand small rows.
FILES_PER_READ = 64


def work_files(spec: JobSpec, layout: OutputLayout) -> list[str]:
    """Paths of the run's work files. The driver's one per-file list: about sources x segments /
    batch_size paths (1M two-page sources at batch 16: 125k paths, about 15 MB)."""
    return [path for _, path in _list_parquet(layout.work, spec.storage)]


def shuffle_partitions(files: int) -> int:
    """Partitions for grouping the work area by source: about 20k work rows each (a thousand work
    files), at most 64."""
    return max(1, min(64, files // 1000 + 1))


def work_dataset(spec: JobSpec, layout: OutputLayout, columns: list[str] | None = None,
                 paths: list[str] | None = None):
    """The run's work rows (these WORK_SCHEMA columns) as a Ray Dataset read on the cluster.

    Why not `ray.data.read_parquet`: a work file cut short by a kill must be deleted and skipped (the
    reader fails the whole dataset on it), and a file an older version of the job wrote must read
    with its absent columns at their OLDER_WORK_DEFAULTS (the reader would fail, or give nulls that
    mean something else). So the listing is split into chunks of FILES_PER_READ paths and each read
    task applies `read_work_file` to its chunk.
    """
    import ray

    schema = _schema(columns)
    paths = work_files(spec, layout) if paths is None else paths
    if not paths:
        return ray.data.from_arrow(schema.empty_table())
    listing = pa.table({"path": paths})
    chunks = [listing.slice(i, FILES_PER_READ) for i in range(0, len(paths), FILES_PER_READ)]
    return ray.data.from_arrow(chunks).map_batches(
        _read_chunk, fn_kwargs={"work_uri": layout.work, "storage": spec.storage, "schema": schema},
        batch_size=None, batch_format="pyarrow")


def _read_chunk(listing: pa.Table, work_uri: str, storage, schema: pa.Schema) -> pa.Table:
    fs, _ = resolve(work_uri, storage)
    tables = [t for path in listing.column("path").to_pylist() if (t := read_work_file(fs, path, schema)) is not None]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def source_states(work: pa.Table) -> pa.Table:
    """The resume rule, vectorized with Arrow over work rows (source_id, segment_index,
    num_segments, error_stage): one row per source that is done or partly done, (source_id, done,
    finished segment indexes, expected segment count). No Python object per work row.

    Done: a final error (a failure marker whose stage is not in RETRIED_ERROR_STAGES, which a
    re-run retries), or every one of its `num_segments` segments present. Partly done: some
    segments present.
    """
    segment = work.column("segment_index")
    marker = pc.equal(segment, stages.ERROR_SEGMENT)
    rows = pa.table({
        "source_id": work.column("source_id"),
        "segment": pc.if_else(marker, pa.scalar(None, pa.int32()), segment.cast(pa.int32())),
        "expected": pc.if_else(marker, pa.scalar(None, pa.int32()), work.column("num_segments").cast(pa.int32())),
        "final": pc.and_(marker, pc.invert(pc.is_in(pc.fill_null(work.column("error_stage").cast(pa.string()), ""),
                                                    pa.array(RETRIED_ERROR_STAGES)))),
    })
    grouped = rows.group_by("source_id").aggregate(
        [("segment", "count_distinct"), ("segment", "distinct"), ("expected", "max"), ("final", "any")])
    present = grouped.column("segment_count_distinct")
    expected = pc.fill_null(grouped.column("expected_max"), 0)
    done = pc.or_(grouped.column("final_any"),
                  pc.and_(pc.greater(expected, 0), pc.greater_equal(present, expected)))
    keep = pc.or_(done, pc.greater(present, 0))
    return pa.table({"source_id": grouped.column("source_id"), "done": done,
                     "segments": grouped.column("segment_distinct").cast(pa.list_(pa.int32())),
                     "expected": expected}).filter(keep)


def resume_state(work: pa.Table) -> tuple[frozenset, dict[str, set[int]]]:
    """(sources complete in the work area, {source_id: finished segment indices} for partial ones),
    from `source_states`."""
    states = source_states(work)
    done = frozenset(states.filter(states.column("done")).column("source_id").to_pylist())
    partial = states.filter(pc.invert(states.column("done")))
    return done, {r["source_id"]: set(r["segments"]) for r in partial.to_pylist()}


# -- finalize ---------------------------------------------------------------------------------------


def finalize(spec: JobSpec, layout: OutputLayout) -> None:
    """Group the work area by source into the output tables, on the cluster: Ray Data reads the work
    files, groups them by source and writes staged files, which then replace this run's files in
    the run-date partition. The driver lists files and moves them; it holds no row."""
    paths = work_files(spec, layout)
    if not paths:
        raise RuntimeError("nothing was processed: the work area is empty")
    strict = spec.output.strict

    def _assemble(kind: str):
        schema = stages.SOURCE_SCHEMA if kind == "source" else stages.SEGMENT_SCHEMA

        def fn(group: pa.Table) -> pa.Table:
            source, segments = stages.assemble_source(group.to_pylist(), strict=strict)
            return pa.Table.from_pylist([source] if kind == "source" else segments, schema=schema)

        return fn

    # One scan of the work area, kept in the object store (which spills to disk) for both tables.
    work = work_dataset(spec, layout, paths=paths).materialize()
    for kind, target in (("source", layout.sources), ("segment", layout.segments)):
        staging = f"{layout.staging}/{kind}-{uuid.uuid4().hex[:8]}"
        fs, staging_path = resolve(staging, spec.storage)
        (work.groupby("source_id", num_partitions=shuffle_partitions(len(paths)))
         .map_groups(_assemble(kind), batch_format="pyarrow")
         .write_parquet(staging_path, filesystem=fs, min_rows_per_file=50_000))
        _publish(spec, staging, target, layout.run_id)
    del work
    sfs, staging_root = resolve(layout.staging, spec.storage)
    try:
        sfs.delete_dir(staging_root)
    except OSError:
        pass


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


def published_dataset(spec: JobSpec, layout: OutputLayout, table: str, columns: list[str]):
    """This run's published `sources` or `segments` files (these columns) as a Ray Dataset."""
    import ray

    target = layout.sources if table == "sources" else layout.segments
    schema = stages.SOURCE_SCHEMA if table == "sources" else stages.SEGMENT_SCHEMA
    listed = [(fs, p) for fs, p in _list_parquet(target, spec.storage)
              if os.path.basename(p).startswith(f"{layout.run_id}_")]
    if not listed:
        return ray.data.from_arrow(pa.schema([schema.field(c) for c in columns]).empty_table())
    return ray.data.read_parquet([p for _, p in listed], filesystem=listed[0][0], columns=columns,
                                 partitioning=None)
