"""Resume state computed on the cluster: which sources earlier invocations finished, which are partly done.

The work area (jobs/workarea.py) is the checkpoint. At the start of each attempt its small columns
(ids, segment indexes, error stages: `RESUME_COLUMNS`) are read by Ray Data on the cluster, hashed
into buckets by source id and reduced per bucket with the Arrow resume rule
(`workarea.source_states`). The result stays in the object store: the driver holds the blocks'
ObjectRefs and three counts, never a row per source.

Stage tasks ask `ResumeIndex.is_done` / `finished_segments`; the first lookup in a worker process
fetches the state blocks (zero-copy Arrow from the object store) and builds one Python set of done
ids and one dict of the partly done sources' segments, kept for the process's later tasks.

Cost: per attempt, one scan of the work area's small columns plus a shuffle of about 60 bytes per work
row; per worker process that looks sources up, about 100 bytes per finished source (1M finished
sources: about 100 MB) and nothing in the driver. Partly done sources are at most the rows that were
in flight when an invocation stopped (hundreds), so their segment lists are small.
"""

from __future__ import annotations

import dataclasses
import zlib

import pyarrow as pa
import pyarrow.compute as pc

from jobs.spec import JobSpec
from jobs.workarea import OutputLayout, shuffle_partitions, source_states, work_dataset, work_files

RESUME_COLUMNS = ["source_id", "segment_index", "num_segments", "error_stage"]

# Per worker process: the looked-up state of the index last used (keyed by its block refs).
_CACHE: dict = {}


@dataclasses.dataclass(frozen=True)
class ResumeIndex:
    """Done and partly done sources of a run. `refs`: ObjectRefs of Arrow tables (source_id, done,
    segments) in the object store; tests build one from Python sets with `of`."""

    done: int = 0  # sources finished by earlier invocations
    partial: int = 0  # sources with some finished segments
    finished_share: float = 0.0  # partly done sources counted as their finished share (progress)
    refs: tuple = ()
    local: tuple | None = None  # (frozenset done ids, {id: set of segments}) when built in memory

    @classmethod
    def of(cls, done: frozenset | set = frozenset(), partial: dict | None = None) -> ResumeIndex:
        partial = partial or {}
        return cls(done=len(done), partial=len(partial), local=(frozenset(done), dict(partial)))

    @classmethod
    def build(cls, spec: JobSpec, layout: OutputLayout) -> ResumeIndex:
        """The work area's resume state, reduced on the cluster (see the module doc)."""
        paths = work_files(spec, layout)
        if not paths:
            return cls()
        buckets = shuffle_partitions(len(paths))
        states = (work_dataset(spec, layout, RESUME_COLUMNS, paths)
                  .map_batches(_with_bucket, fn_kwargs={"buckets": buckets}, batch_format="pyarrow")
                  .groupby("bucket", num_partitions=buckets)
                  .map_groups(_bucket_states, batch_format="pyarrow")
                  .materialize())
        totals = states.map_batches(_state_counts, batch_format="pyarrow").sum(["done", "partial", "share"]) or {}
        done, partial = int(totals.get("sum(done)") or 0), int(totals.get("sum(partial)") or 0)
        if not (done or partial):
            return cls()
        return cls(done=done, partial=partial, finished_share=float(totals.get("sum(share)") or 0.0),
                   refs=tuple(states.to_arrow_refs()))

    # -- lookups (stage tasks) ----------------------------------------------------------------------
    def _sets(self) -> tuple[frozenset, dict, pa.Array]:
        if self.local is not None:
            done, partial = self.local
            return done, partial, pa.array(sorted(done), pa.string())
        key = tuple(ref.hex() for ref in self.refs)
        if _CACHE.get("key") != key:
            import ray

            tables = [t for t in ray.get(list(self.refs)) if t.num_rows]
            table = pa.concat_tables(tables) if tables else None
            done, partial, ids = frozenset(), {}, pa.array([], pa.string())
            if table is not None:
                ids = table.filter(table.column("done")).column("source_id").combine_chunks()
                done = frozenset(ids.to_pylist())
                rest = table.filter(pc.invert(table.column("done")))
                partial = dict(zip(rest.column("source_id").to_pylist(),
                                   (set(s) for s in rest.column("segments").to_pylist())))
            _CACHE.clear()
            _CACHE.update(key=key, sets=(done, partial, ids))
        return _CACHE["sets"]

    def is_done(self, source_id: str) -> bool:
        return bool(self.done) and source_id in self._sets()[0]

    def finished_segments(self, source_id: str) -> set[int]:
        return self._sets()[1].get(source_id, set()) if self.partial else set()


def _with_bucket(batch: pa.Table, buckets: int) -> pa.Table:
    # A stable hash of the id (Python's hash() is salted per process); crc32 runs at ~10M ids/s.
    ids = batch.column("source_id").to_pylist()
    return batch.append_column("bucket", pa.array([zlib.crc32(i.encode()) % buckets for i in ids], pa.int32()))


def _bucket_states(group: pa.Table) -> pa.Table:
    states = source_states(group)
    # Progress of partly done sources: finished segments over their expected count.
    share = pc.divide(pc.list_value_length(states.column("segments")).cast(pa.float64()),
                      pc.max_element_wise(states.column("expected"), 1).cast(pa.float64()))
    return states.select(["source_id", "done", "segments"]).append_column(
        "share", pc.if_else(states.column("done"), 0.0, share))


def _state_counts(batch: pa.Table) -> pa.Table:
    done = batch.column("done")
    return pa.table({"done": [int(pc.sum(done.cast(pa.int64())).as_py() or 0)],
                     "partial": [int(pc.sum(pc.invert(done).cast(pa.int64())).as_py() or 0)],
                     "share": [float(pc.sum(batch.column("share")).as_py() or 0.0)]})
