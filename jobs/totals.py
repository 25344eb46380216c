"""The run summary's totals, computed on the cluster.

Each block of the published tables (and of this invocation's work rows) is reduced to one small
dict of counts by a Ray Data task; the driver merges one dict per block (`merge`): its memory is
bounded by the number of blocks and the summary's fixed shape, not by the number of sources.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from jobs import quality, stages
from jobs.spec import JobSpec
from jobs.workarea import OutputLayout, published_dataset, work_dataset

ERRORS_SAMPLE = 20  # error rows quoted in the summary
SOURCE_COLUMNS = ["source_uri", "status", "error", "modality", "pages", "duration_s", "num_segments",
                  "input_tokens", "output_tokens", "flags"]
SEGMENT_COLUMNS = ["flags", "finish_reason", "text_source", "text_layer", "attempts"]
WORK_COLUMNS = ["source_id", "segment_index", "status", "attempt", "retry_round", "text_source"]


def merge(a: dict, b: dict) -> dict:
    """Counts added key by key (nested dicts merged); lists (samples) concatenated up to ERRORS_SAMPLE."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, list):
            out[key] = (out[key] + value)[:ERRORS_SAMPLE]
        else:
            out[key] = out[key] + value
    return out


def reduce(ds, fn) -> dict:
    """`fn(pyarrow batch) -> dict` on every block on the cluster, merged here."""
    def one_row(batch: pa.Table) -> pa.Table:
        return pa.table({"totals": [json.dumps(fn(batch))]})

    out: dict = {}
    for row in ds.map_batches(one_row, batch_format="pyarrow", batch_size=None).iter_rows():
        out = merge(out, json.loads(row["totals"]))
    return out


def _sum(array) -> float:
    return pc.sum(pc.fill_null(array, 0)).as_py() or 0


def source_totals(batch: pa.Table) -> dict:
    ok = pc.equal(batch.column("status"), "ok")
    modality = pc.fill_null(batch.column("modality"), "unknown")
    by_modality: dict = {}
    for row in (pa.table({"modality": modality, "ok": ok}).group_by(["modality", "ok"])
                .aggregate([("ok", "count")]).to_pylist()):
        by_modality.setdefault(row["modality"], {"ok": 0, "error": 0})["ok" if row["ok"] else "error"] += row["ok_count"]
    errors = batch.filter(pc.invert(ok)).slice(0, ERRORS_SAMPLE)
    flags = quality.summary_counts(_empty(stages.SEGMENT_SCHEMA, SEGMENT_COLUMNS), batch)["flags"]
    return {
        "total": batch.num_rows,
        "error": batch.num_rows - int(_sum(ok.cast(pa.int64()))),
        "by_modality": by_modality,
        "pages": int(_sum(batch.column("pages"))),
        "audio_seconds": float(_sum(pc.if_else(pc.equal(modality, "audio"), batch.column("duration_s"), 0.0))),
        "segments": int(_sum(batch.column("num_segments"))),
        "tokens": {"input": int(_sum(batch.column("input_tokens"))), "output": int(_sum(batch.column("output_tokens")))},
        "quality": {"flags": flags},
        "errors_sample": errors.select(["source_uri", "error"]).to_pylist(),
    }


def segment_totals(batch: pa.Table) -> dict:
    counts = quality.summary_counts(batch, _empty(stages.SOURCE_SCHEMA, ["flags"]))
    return {"quality": counts}


def invocation_totals(batch: pa.Table, attempt: str) -> dict:
    """This invocation's first-pass segments (not retries, not failure markers)."""
    mine = batch.filter(pc.equal(batch.column("attempt"), attempt))
    seg = mine.filter(pc.and_(pc.not_equal(mine.column("segment_index"), stages.ERROR_SEGMENT),
                              pc.equal(pc.fill_null(mine.column("retry_round"), 0), 0)))
    from_text = pc.equal(pc.fill_null(seg.column("text_source"), ""), "pdf_text")
    ok = pc.equal(seg.column("status"), "ok")
    return {"segments": seg.num_rows,
            "segments_inferred": int(_sum(pc.and_(ok, pc.invert(from_text)).cast(pa.int64()))),
            "segments_from_pdf_text": int(_sum(from_text.cast(pa.int64()))),
            "segments_failed": seg.num_rows - int(_sum(ok.cast(pa.int64())))}


def _empty(schema: pa.Schema, columns: list[str]) -> pa.Table:
    return pa.schema([schema.field(c) for c in columns]).empty_table()


def run_totals(spec: JobSpec, layout: OutputLayout, attempt: str) -> dict:
    """Everything `pipeline.summarize` reports, from the published tables and this invocation's work rows."""
    sources = reduce(published_dataset(spec, layout, "sources", SOURCE_COLUMNS), source_totals)
    segments = reduce(published_dataset(spec, layout, "segments", SEGMENT_COLUMNS), segment_totals)
    work = work_dataset(spec, layout, WORK_COLUMNS)
    invocation = reduce(work, lambda b: invocation_totals(b, attempt))
    # Distinct sources this invocation wrote: a grouping on the cluster, one count back.
    mine = work.map_batches(lambda b: b.filter(pc.equal(b.column("attempt"), attempt)).select(["source_id"]),
                            batch_format="pyarrow")
    invocation["sources"] = mine.groupby("source_id").count().count()
    zero = quality.summary_counts(_empty(stages.SEGMENT_SCHEMA, SEGMENT_COLUMNS), _empty(stages.SOURCE_SCHEMA, ["flags"]))
    quality_counts = merge(merge(zero, segments.get("quality", {})), sources.pop("quality", {}))
    return {"sources": sources, "quality": quality_counts, "invocation": invocation}
