"""The pipeline's row functions, one per stage: read -> decode -> prompt -> infer -> assemble.

Pure functions over plain dict rows so they can be unit-tested without Ray and reused by the bench.
`jobs.pipeline` wires them into Ray Data operators and `ray.data.llm`.

Row shapes:
* source row  (read):   source_id, source_uri, source_row, name, data, prompt, load_error
* request row (decode+prompt): one per page / audio chunk, or one error row per bad source
  (segment_index = -1); carries `messages_json`, the OpenAI chat messages from `model.inputs.prompts`
* work row    (after infer): the segment result, written to the run's work area (resume state)
* output rows (assemble): `sources/` and `segments/` tables, see SOURCE_SCHEMA / SEGMENT_SCHEMA
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterator

import pyarrow as pa

from connectors.sources import ParquetColumns, file_source, iter_parquet_sources
from connectors.storage import StorageConfig, StorageError, read_bytes
from model.inputs import audio_chunks, media, prompts

ERROR_SEGMENT = -1  # segment_index of a source that failed before it had segments


@dataclasses.dataclass(frozen=True)
class StageContext:
    run_id: str
    attempt: str  # unique per invocation; tells resumed work apart in the work area
    task: str
    storage: StorageConfig
    limits: media.MediaLimits
    parquet: ParquetColumns
    chunk_s: float
    overlap_s: float
    max_new_tokens: int
    # What task `auto` means per modality for this checkpoint (`prompts.default_tasks`).
    default_tasks: dict = dataclasses.field(default_factory=lambda: dict(prompts.DEFAULT_TASKS))
    # Resume state: sources finished in earlier invocations, and finished segments of sources
    # that were only partly done.
    done_sources: frozenset = frozenset()
    done_segments: dict = dataclasses.field(default_factory=dict)


# -- read -----------------------------------------------------------------------------------------


def expand_unit(unit: dict, ctx: StageContext) -> Iterator[dict]:
    """A listed input unit -> source rows, minus the sources an earlier invocation finished."""
    rows = ([file_source(unit["uri"])] if unit["unit"] == "file"
            else iter_parquet_sources(unit["uri"], ctx.storage, ctx.parquet))
    for row in rows:
        if row["source_id"] not in ctx.done_sources:
            yield row


# -- decode + prompt ------------------------------------------------------------------------------


def _request(source: dict, **fields) -> dict:
    base = dict(
        source_id=source["source_id"], source_uri=source["source_uri"], source_row=source["source_row"],
        modality=None, format=None, segment_index=ERROR_SEGMENT, num_segments=0, page=None,
        start_s=None, end_s=None, duration_s=None, source_bytes=None, decode_s=0.0,
        messages_json=None, error=None, error_stage=None,
    )
    base.update(fields)
    return base


def decode_source(source: dict, ctx: StageContext) -> Iterator[dict]:
    """Fetch + decode one source and build one chat request per page or audio chunk.

    Any failure becomes a single error row for the source (never an exception): the job goes on.
    """
    started = time.perf_counter()
    if source.get("load_error"):
        yield _request(source, error=source["load_error"], error_stage="read")
        return
    data = source.get("data")
    try:
        if data is None:
            data = read_bytes(source["source_uri"], ctx.storage, max_bytes=ctx.limits.max_input_bytes)
    except StorageError as exc:
        yield _request(source, error=str(exc), error_stage="fetch" if not exc.permanent else "read")
        return
    except Exception as exc:  # noqa: BLE001 - e.g. a malformed URI in a Parquet row
        yield _request(source, error=f"cannot read {source['source_uri']}: {exc}", error_stage="read")
        return
    skip = ctx.done_segments.get(source["source_id"], ())
    known: dict = {}
    try:
        kind, fmt = media.sniff_kind(data, source.get("name"))
        known = dict(modality="audio" if kind == "audio" else "document", format=fmt)
        task = source.get("prompt") or ctx.task
        if kind == "audio":
            audio = media.decode_audio(data, ctx.limits)
            chunks = audio_chunks.plan_chunks(len(audio), chunk_s=ctx.chunk_s, overlap_s=ctx.overlap_s)
            duration = len(audio) / media.TARGET_SAMPLE_RATE
            # Nothing can fail past decoding: build chunk requests lazily (a long recording's
            # encoded chunks are never all in memory at once).
            requests = (dict(segment_index=c.index, start_s=c.start_s, end_s=c.end_s,
                             messages_json=json.dumps(prompts.messages_for_item(
                                 task, "audio", audio=audio[c.start_sample:c.end_sample],
                                 defaults=ctx.default_tasks)))
                        for c in chunks if c.index not in skip)
            common = dict(modality="audio", format=fmt, num_segments=len(chunks), duration_s=duration)
        else:
            # Pages are collected first: a page that fails to render fails the whole source (one
            # error row), so no page of it may have been emitted yet.
            pages = media.iter_images(data, ctx.limits) if kind == "image" else media.iter_pdf_pages(data, ctx.limits)
            requests = []
            count = 0
            for index, page in enumerate(pages):
                count += 1
                if index in skip:
                    continue
                messages = prompts.messages_for_item(task, "document", image=page, defaults=ctx.default_tasks)
                requests.append(dict(segment_index=index, page=index + 1, messages_json=json.dumps(messages)))
            common = dict(modality="document", format=fmt, num_segments=count)
    except (media.MediaError, ValueError) as exc:
        yield _request(source, error=str(exc), error_stage="decode", source_bytes=len(data), **known)
        return
    except Exception as exc:  # noqa: BLE001 - a decoder bug must still not lose the row
        yield _request(source, error=f"unexpected decoding failure ({type(exc).__name__}: {exc})",
                       error_stage="decode", source_bytes=len(data), **known)
        return
    elapsed = (time.perf_counter() - started) / max(common["num_segments"], 1)
    for request in requests:
        yield _request(source, **common, **request, source_bytes=len(data), decode_s=elapsed)


# -- infer (ray.data.llm pre-processing) ----------------------------------------------------------


class OpaqueRow:
    """A value Arrow cannot convert, put in every row the processor carries.

    ray.data.llm carries each row as one nested `__data` column. Rows of one batch differ (an
    image request, an audio request, a pass-through error row), so Arrow infers a different struct
    type per batch, and Ray 2.60 then fails to concatenate them (`_backfill_missing_fields`:
    "'pyarrow.lib.DataType' object is not iterable") when a nested field is null in one batch and
    a struct in another. With this value present, Ray stores the column as pickled Python objects
    (its documented fallback), which concatenates regardless of the per-row shapes.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueRow)

    def __hash__(self) -> int:
        return 0


def to_llm_request(row: dict, max_new_tokens: int) -> dict:
    """Processor preprocess: a request for the engine, or a pass-through error row.

    Rows with `__inference_error__` set skip every ray.data.llm stage unchanged; that is how rows
    that already failed to decode travel through the processor without an engine call.
    """
    if row.get("error"):
        return {"__inference_error__": f"[{row['error_stage']}] {row['error']}", "_opaque": OpaqueRow()}
    return {
        "_opaque": OpaqueRow(),
        "messages": json.loads(row["messages_json"]),
        # Greedy: batch output must be reproducible (same token ids as a direct engine call).
        "sampling_params": {"temperature": 0.0, "max_tokens": max_new_tokens},
    }


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN: how Ray fills a column a batch's rows do not all have
    except (TypeError, ValueError):
        return False


def _str(value) -> str | None:
    return None if _missing(value) or value == "" else str(value)


def _int(value) -> int | None:
    return None if _missing(value) else int(value)


def _float(value) -> float | None:
    return None if _missing(value) else float(value)


def collect_segment(row: dict, ctx: StageContext) -> dict:
    """Processor output (success, engine error or pass-through error) -> work row."""
    error, stage = _str(row.get("error")), _str(row.get("error_stage"))
    tokens = row.get("generated_tokens")
    tokens = None if tokens is None or (not hasattr(tokens, "__len__") and _missing(tokens)) else tokens
    if not error:
        engine_error = _str(row.get("__inference_error__"))
        if engine_error:
            error, stage = f"inference failed: {engine_error}", "infer"
        elif tokens is None:
            error, stage = "inference produced no output for this item", "infer"
    ok = error is None
    token_ids = [int(t) for t in tokens] if ok else None
    return dict(
        source_id=str(row["source_id"]), source_uri=str(row["source_uri"]), source_row=_str(row.get("source_row")),
        segment_index=int(row["segment_index"]), num_segments=_int(row.get("num_segments")) or 0,
        modality=_str(row.get("modality")), format=_str(row.get("format")),
        page=_int(row.get("page")), start_s=_float(row.get("start_s")), end_s=_float(row.get("end_s")),
        duration_s=_float(row.get("duration_s")), source_bytes=_int(row.get("source_bytes")),
        status="ok" if ok else "error", error=error, error_stage=stage,
        text=(_str(row.get("generated_text")) or "") if ok else None,
        output_token_ids=token_ids,
        input_tokens=(_int(row.get("num_input_tokens")) or 0) if ok else 0,
        output_tokens=len(token_ids) if ok else 0,
        decode_s=_float(row.get("decode_s")) or 0.0,
        infer_s=max(_float(row.get("time_taken_llm")) or 0.0, 0.0) if ok else 0.0,
        run_id=ctx.run_id, attempt=ctx.attempt, written_at=time.time(),
    )


WORK_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("source_uri", pa.string()), ("source_row", pa.string()),
    ("segment_index", pa.int32()), ("num_segments", pa.int32()),
    ("modality", pa.string()), ("format", pa.string()),
    ("page", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("duration_s", pa.float64()), ("source_bytes", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("error_stage", pa.string()),
    ("text", pa.string()), ("output_token_ids", pa.list_(pa.int32())),
    ("input_tokens", pa.int32()), ("output_tokens", pa.int32()),
    ("decode_s", pa.float64()), ("infer_s", pa.float64()),
    ("run_id", pa.string()), ("attempt", pa.string()), ("written_at", pa.float64()),
])


def work_batch(rows_batch: dict, ctx: StageContext) -> pa.Table:
    """map_batches form of `collect_segment` with a fixed Arrow schema (stable Parquet files)."""
    keys = list(rows_batch)
    n = len(rows_batch[keys[0]]) if keys else 0
    rows = [collect_segment({k: rows_batch[k][i] for k in keys}, ctx) for i in range(n)]
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


# -- assemble -------------------------------------------------------------------------------------

SOURCE_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("source_uri", pa.string()), ("source_row", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("error_stage", pa.string()),
    ("text", pa.string()), ("num_segments", pa.int32()), ("modality", pa.string()),
    ("format", pa.string()), ("pages", pa.int32()), ("duration_s", pa.float64()),
    ("source_bytes", pa.int64()), ("input_tokens", pa.int64()), ("output_tokens", pa.int64()),
    ("decode_s", pa.float64()), ("infer_s", pa.float64()), ("run_id", pa.string()),
    ("finished_at", pa.timestamp("us", tz="UTC")),
])

SEGMENT_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("source_uri", pa.string()), ("segment_index", pa.int32()),
    ("status", pa.string()), ("error", pa.string()), ("text", pa.string()),
    ("page", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("modality", pa.string()), ("input_tokens", pa.int32()), ("output_tokens", pa.int32()),
    ("output_token_ids", pa.list_(pa.int32())), ("infer_s", pa.float64()), ("run_id", pa.string()),
])


def assemble_source(rows: list[dict]) -> tuple[dict, list[dict]]:
    """All work rows of one source (any order, possibly from several attempts) -> (source row,
    segment rows). Resume duplicates are resolved here: one row per segment, the latest wins, and
    an early failure marker is dropped once a later attempt produced segments."""
    rows = sorted(rows, key=lambda r: r["written_at"])
    latest: dict[int, dict] = {}
    for row in rows:
        latest[row["segment_index"]] = row
    marker = latest.pop(ERROR_SEGMENT, None)
    if marker is not None and latest and max(r["written_at"] for r in latest.values()) > marker["written_at"]:
        marker = None  # a later attempt got past the failure
    segments = [latest[i] for i in sorted(latest)]
    head = (marker or segments[0]) if (marker or segments) else None
    expected = max((r["num_segments"] for r in segments), default=0)
    ok_segments = [s for s in segments if s["status"] == "ok"]
    if marker is not None:
        status, error, stage = "error", marker["error"], marker["error_stage"]
        segments = []
    elif len(segments) < expected:
        status, error, stage = "error", f"only {len(segments)} of {expected} segments were processed", "infer"
    elif len(ok_segments) < len(segments):
        bad = next(s for s in segments if s["status"] != "ok")
        where = f"page {bad['page']}" if bad["page"] is not None else f"{bad['start_s']:.1f}-{bad['end_s']:.1f} s"
        status, error, stage = "error", f"{len(segments) - len(ok_segments)} of {len(segments)} segments failed; {where}: {bad['error']}", bad["error_stage"]
    else:
        status, error, stage = "ok", None, None
    text = None
    if status == "ok":
        if head["modality"] == "audio":
            chunks = [audio_chunks.Chunk(s["segment_index"], round(s["start_s"] * 16000), round(s["end_s"] * 16000))
                      for s in segments]
            text, _ = audio_chunks.stitch(chunks, [s["text"] or "" for s in segments])
        else:
            text = "\n\n".join((s["text"] or "").strip() for s in segments)
    source = dict(
        source_id=head["source_id"], source_uri=head["source_uri"], source_row=head["source_row"],
        status=status, error=error, error_stage=stage, text=text,
        num_segments=len(segments), modality=head["modality"], format=head["format"],
        pages=len(segments) if head["modality"] == "document" and segments else None,
        duration_s=head["duration_s"], source_bytes=head["source_bytes"],
        input_tokens=sum(s["input_tokens"] for s in segments),
        output_tokens=sum(s["output_tokens"] for s in segments),
        decode_s=sum(s["decode_s"] for s in segments) if segments else head["decode_s"],
        infer_s=sum(s["infer_s"] for s in segments), run_id=head["run_id"],
        finished_at=dt.datetime.fromtimestamp(max(r["written_at"] for r in rows), dt.timezone.utc),
    )
    segment_rows = [
        {k: s[k] for k in SEGMENT_SCHEMA.names if k in s} for s in segments
    ]
    return source, segment_rows
