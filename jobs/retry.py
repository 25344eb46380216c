"""The retry step (`--retries N`): degenerate segments run again, as separate passes after the stream.

A Ray Data pipeline has no feedback loop, and a second engine in the same pipeline would need a
second copy of the model in GPU memory. So retries are rounds over the work area, after the stream
and before finalize. Round k (1..N):

1. **targets** - the work area (its small columns, read by Ray Data, grouped by source) -> the
   segments whose best attempt so far (`stages.best_attempt`) is flagged `truncated`, `repetitive`
   or `invalid_json` and that have no attempt of round k yet (so a resumed run continues where it
   stopped and never repeats a round); materialized in the object store, not on the driver. None:
   the round starts no engine.
2. **re-source** - targets grouped by input unit: a file is fetched again; a Parquet table is
   scanned once for all its retried rows (bytes, prompt and schema columns come back with them).
3. **infer** - the stream's own tail (`pipeline.infer_sources`): decode builds requests for just
   those segments; sampling is round k's (`quality.retry_sampling`: temperature 0.2k, capped at 1.0,
   with a seed fixed per run seed, source, segment and round); work rows carry `retry_round = k` and
   are appended.

Finalize keeps each segment's best attempt and records how many it had (`attempts`) and which one
it kept (`retry_round`); the sources table stays one row per input.

Cost per round that has targets: one engine start (tiny checkpoint on CPU: about 20-40 s; a 12B
model on a GPU: the weight load, about 1-2 min) plus re-fetching each retried source and preparing
its retried pages again (`Pages.iter(skip)` renders no other page; audio is decoded again whole)
and a scan of the work area's small columns.
Nothing is spent when no segment is degenerate. A page that is simply longer than
`--max-new-tokens` stays truncated on every round: raise the limit rather than the retries.
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from connectors.sources import file_source, iter_parquet_sources
from jobs import quality, stages
from jobs.spec import JobSpec
from jobs.workarea import work_dataset

TARGET_COLUMNS = ["source_id", "source_uri", "source_row", "segment_index", "status", "flags",
                  "text_source", "retry_round", "written_at"]
TARGETS_SCHEMA = pa.schema([("source_id", pa.string()), ("unit", pa.string()), ("unit_uri", pa.string()),
                            ("retry_segments", pa.list_(pa.int32()))])
UNITS_SCHEMA = pa.schema([("unit", pa.string()), ("unit_uri", pa.string()), ("retry", pa.string())])


def segments_to_retry(rows: list[dict], round_index: int) -> list[int]:
    """Segment indices of one source to run in round `round_index`: the best attempt so far is
    degenerate, the model produced it, and the round has not run for the segment yet."""
    by_segment: dict[int, list[dict]] = {}
    for row in rows:
        if row["segment_index"] != stages.ERROR_SEGMENT and (row.get("text_source") or "model") == "model":
            by_segment.setdefault(row["segment_index"], []).append(row)
    chosen = []
    for index, attempts in sorted(by_segment.items()):
        best = stages.best_attempt(attempts)
        done_rounds = max(r.get("retry_round") or 0 for r in attempts)
        if quality.needs_retry(best.get("flags") or ()) and done_rounds < round_index:
            chosen.append(index)
    return chosen


def _targets_of_source(round_index: int):
    def fn(group: pa.Table) -> pa.Table:
        rows = group.to_pylist()
        chosen = segments_to_retry(rows, round_index)
        if not chosen:
            return TARGETS_SCHEMA.empty_table()
        head = rows[0]
        if head["source_row"]:  # a Parquet row: re-read from its table
            unit, unit_uri = "parquet", head["source_row"].rpartition("#")[0]
        else:
            unit, unit_uri = "file", head["source_uri"]
        return pa.Table.from_pylist([dict(source_id=head["source_id"], unit=unit, unit_uri=unit_uri,
                                          retry_segments=chosen)], schema=TARGETS_SCHEMA)

    return fn


def _count_segments(batch: pa.Table) -> pa.Table:
    return pa.table({"n": pc.list_value_length(batch.column("retry_segments"))})


def _unit_of_targets(group: pa.Table) -> pa.Table:
    rows = group.to_pylist()
    retry = {r["source_id"]: r["retry_segments"] for r in rows}
    return pa.Table.from_pylist([dict(unit=rows[0]["unit"], unit_uri=rows[0]["unit_uri"], retry=json.dumps(retry))],
                                schema=UNITS_SCHEMA)


def expand_retry_unit(unit: dict, ctx: stages.StageContext, round_index: int):
    """One input unit with retried sources -> their source rows, marked with the segments to run."""
    retry = json.loads(unit["retry"])
    if unit["unit"] == "file":
        rows = [file_source(unit["unit_uri"])]
    else:
        rows = (r for r in iter_parquet_sources(unit["unit_uri"], ctx.storage, ctx.parquet) if r["source_id"] in retry)
    for row in rows:
        if row["source_id"] in retry:
            yield {**row, "retry_segments": retry[row["source_id"]], "retry_round": round_index}


def run_retry_rounds(spec: JobSpec, layout, ctx: stages.StageContext, infer) -> list[dict]:
    """Rounds 1..spec.output.retries over the work area; returns what each round did (for the summary).
    `infer(spec, layout, ctx, source_rows)`: the pipeline's decode -> infer -> write tail
    (`pipeline.infer_sources`)."""
    done = []
    for round_index in range(1, spec.output.retries + 1):
        started = time.time()
        work = work_dataset(spec, layout, TARGET_COLUMNS)
        targets = (work.groupby("source_id").map_groups(_targets_of_source(round_index), batch_format="pyarrow")
                   .materialize())
        sources = targets.count()
        if sources == 0:
            done.append(dict(round=round_index, sources=0, segments=0, seconds=round(time.time() - started, 3)))
            continue
        segments = int(targets.map_batches(_count_segments, batch_format="pyarrow").sum("n") or 0)
        print(f"[jobs] retry round {round_index}/{spec.output.retries}: {segments} degenerate segments of {sources} sources",
              flush=True)
        units = targets.groupby("unit_uri").map_groups(_unit_of_targets, batch_format="pyarrow")
        rows = units.flat_map(expand_retry_unit, fn_kwargs={"ctx": ctx, "round_index": round_index})
        infer(spec, layout, ctx, rows)
        done.append(dict(round=round_index, sources=sources, segments=segments,
                         seconds=round(time.time() - started, 3)))
    return done
