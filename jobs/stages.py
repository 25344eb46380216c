"""The pipeline's row functions, one per stage: read -> decode -> prompt -> infer -> assemble.

Pure functions over plain dict rows so they can be unit-tested without Ray and reused by the bench.
`jobs.pipeline` wires them into Ray Data operators and `ray.data.llm`.

Row shapes:
* source row  (read):   source_id, source_uri, source_row, name, data, prompt, json_schema, load_error
  (+ retry_segments, retry_round in a retry round, `jobs.retry`)
* request row (decode+prompt): one per page / audio chunk, or one error row per bad source
  (segment_index = -1); carries `messages_json`, the OpenAI chat messages from `model.inputs.prompts`,
  and for a document page the page itself at the model's size (`page_*`, from `model.inputs.pages`:
  encoded bytes, never a full-resolution bitmap); a page that failed to render is an error row of
  its own segment; a PDF page whose text layer is its text (`--pdf-text prefer`) carries `pdf_text`
  and no request (`NO_INFERENCE`)
* work row    (after infer): the segment result with its output checks (finish_reason, flags,
  json; `jobs.quality`), written to the run's work area (resume state); one per attempt
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
from jobs import quality
from model.inputs import audio_chunks, media, pages, pdf_text, prompts

ERROR_SEGMENT = -1  # segment_index of a source that failed before it had segments
# `__inference_error__` value of a segment whose text needs no engine call (a PDF page's usable text
# layer under `--pdf-text prefer`): ray.data.llm passes rows with that column set through every
# stage untouched (the mechanism it has for failed rows), and `collect_segment` turns it back into
# an ok segment. Splitting the stream instead would re-run the read and decode for each branch.
NO_INFERENCE = "__no_inference__:text_layer"
# The same pass-through marks the one row of a recording in which the VAD found no speech: nothing is
# sent to the model, and the source is an ok row with an empty transcript and no segments.
NO_SPEECH = "__no_inference__:no_speech"


@dataclasses.dataclass(frozen=True)
class StageContext:
    run_id: str
    attempt: str  # unique per invocation; tells resumed work apart in the work area
    task: str
    storage: StorageConfig
    limits: media.MediaLimits
    parquet: ParquetColumns
    segmentation: audio_chunks.Segmentation
    max_new_tokens: int
    # Output checks: the checkpoint's stop token ids and the context length (finish_reason), the
    # job's JSON schema (compact text; a Parquet schema column overrides it per row).
    stop_token_ids: frozenset = frozenset()
    max_model_len: int | None = None
    json_schema: str | None = None
    seed: int = 0
    # PDF text layer: "ignore", "anchor" (context for the model) or "prefer" (usable layer = text).
    pdf_text: str = "ignore"
    # What task `auto` means per modality for this checkpoint (`prompts.default_tasks`).
    default_tasks: dict = dataclasses.field(default_factory=lambda: dict(prompts.DEFAULT_TASKS))
    # The checkpoint's page size rules (image processor settings + budget), resolved on the driver.
    geometry: pages.PageGeometry = pages.PageGeometry()
    # Resume state (`jobs.resume.ResumeIndex`, in the object store): sources finished in earlier
    # invocations, and finished segments of sources that were only partly done. None: nothing done.
    # (Typed loosely: jobs.resume imports this module through jobs.workarea.)
    resume: object | None = None
    # What the checkpoint declares about long audio (its window and packing).
    audio: audio_chunks.CheckpointAudio = audio_chunks.CheckpointAudio()


# -- read -----------------------------------------------------------------------------------------


def expand_unit(unit: dict, ctx: StageContext) -> Iterator[dict]:
    """A listed input unit -> source rows, minus the sources an earlier invocation finished."""
    rows = ([file_source(unit["uri"])] if unit["unit"] == "file"
            else iter_parquet_sources(unit["uri"], ctx.storage, ctx.parquet))
    for row in rows:
        if ctx.resume is None or not ctx.resume.is_done(row["source_id"]):
            yield row


# -- decode + prompt ------------------------------------------------------------------------------


def _request(source: dict, **fields) -> dict:
    base = dict(
        source_id=source["source_id"], source_uri=source["source_uri"], source_row=source["source_row"],
        modality=None, format=None, segment_index=ERROR_SEGMENT, num_segments=0, page=None,
        start_s=None, end_s=None, duration_s=None, source_bytes=None, decode_s=0.0,
        messages_json=None, error=None, error_stage=None,
        text_source="model", retry_round=int(source.get("retry_round") or 0), json_schema=None,
        pdf_text=None, text_layer=None,
        page_data=None, page_codec=None, page_mode=None, page_width=None, page_height=None,
        page_resized=None, max_soft_tokens=None, orientation=None,
    )
    base.update(fields)
    return base


def decode_source(source: dict, ctx: StageContext) -> Iterator[dict]:
    """Fetch + decode one source and build one chat request per page or audio chunk.

    Pages are emitted as they are prepared (a task holds one page's bitmap, whatever the page
    count). A page that fails to render is an error row for that page only; a file that cannot be
    opened at all is a single error row for the source. Never an exception: the job goes on.
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
    skip = ctx.resume.finished_segments(source["source_id"]) if ctx.resume is not None else ()
    only = source.get("retry_segments")  # a retry pass: just these segments
    only = None if only is None else frozenset(int(i) for i in only)

    def wanted(index: int) -> bool:
        return index in only if only is not None else index not in skip

    known: dict = {}
    try:
        kind, fmt = media.sniff_kind(data, source.get("name"))
        known = dict(modality="audio" if kind == "audio" else "document", format=fmt)
        task = source.get("prompt") or ctx.task
        schema = _row_schema(source) or ctx.json_schema
        if kind != "audio":
            document = pages.open_pages(data, source.get("name"), ctx.geometry, ctx.limits)
        else:
            # Two streaming passes over the bytes (the waveform of a long recording never exists
            # whole): this one plans the chunks (VAD), the second cuts them out. The plan comes
            # first because every row must carry the source's chunk count (the resume state).
            plan = audio_chunks.plan_recording(media.iter_audio(data, ctx.limits), ctx.segmentation,
                                               checkpoint=ctx.audio)
    except (media.MediaError, ValueError) as exc:
        yield _request(source, error=str(exc), error_stage="decode", source_bytes=len(data), **known)
        return
    except Exception as exc:  # noqa: BLE001 - a decoder bug must still not lose the row
        yield _request(source, error=f"unexpected decoding failure ({type(exc).__name__}: {exc})",
                       error_stage="decode", source_bytes=len(data), **known)
        return
    if kind != "audio":
        skipped = frozenset(i for i in range(document.count) if not wanted(i))
        layers = None
        if document.kind == "pdf" and ctx.pdf_text != "ignore":
            layers = pdf_text.DocumentLayers(data)
            # With a schema the layer is context, never the answer: the model must write the JSON.
            if ctx.pdf_text == "prefer" and not schema:
                taken = []
                for row in _text_layer_rows(source, document, layers, skipped, len(data)):
                    taken.append(row["segment_index"])
                    yield row
                skipped |= frozenset(taken)
        try:
            yield from _page_requests(source, document, task, schema, skipped, ctx, len(data),
                                      time.perf_counter() - started, layers=layers)
        finally:
            if layers is not None:
                layers.close()
        return
    common = dict(modality="audio", format=fmt, num_segments=len(plan.chunks), duration_s=plan.duration_s,
                  json_schema=schema, source_bytes=len(data),
                  decode_s=(time.perf_counter() - started) / max(len(plan.chunks), 1))
    if not plan.chunks:  # no speech: one marker row, nothing for the engine (NO_SPEECH)
        yield _request(source, **common)
        return
    # Chunk requests are built lazily, one chunk's samples at a time. The second pass decodes the
    # bytes the first pass already decoded without error.
    for c, samples in audio_chunks.iter_chunk_audio(media.iter_audio(data, ctx.limits), plan.chunks):
        if wanted(c.index):
            messages = prompts.messages_for_item(task, "audio", audio=samples, defaults=ctx.default_tasks,
                                                 json_schema=schema)
            yield _request(source, **common, segment_index=c.index, start_s=c.start_s, end_s=c.end_s,
                           messages_json=json.dumps(messages))


PAGE_REF = "$page"  # stands for the row's page (its page_* columns) inside messages_json


def _messages_json(messages: list[dict]) -> str:
    def encode(value):
        if pages.is_encoded_image(value):
            return PAGE_REF
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    return json.dumps(messages, default=encode)


def _text_layer_rows(source: dict, document: pages.Pages, layers: pdf_text.DocumentLayers, skip: frozenset,
                     source_bytes: int) -> Iterator[dict]:
    """`--pdf-text prefer`: a segment row carrying the text of each page whose layer is usable. The
    page is never rendered and no request goes to the engine (`NO_INFERENCE`)."""
    common = dict(modality="document", format=document.format, num_segments=document.count,
                  source_bytes=source_bytes)
    started = time.perf_counter()
    for index, layer in layers.take_usable():
        if index not in skip:
            yield _request(source, **common, segment_index=index, page=index + 1, text_source="pdf_text",
                           pdf_text=layer.text, text_layer=layer.verdict,
                           decode_s=time.perf_counter() - started)
        started = time.perf_counter()


def _page_requests(source: dict, document: pages.Pages, task: str, schema: str | None, skip: frozenset,
                   ctx: StageContext, source_bytes: int, open_s: float,
                   layers: pdf_text.DocumentLayers | None = None) -> Iterator[dict]:
    """One request row per page, as each page is prepared; failures stay on their page. `layers`:
    the PDF's text layers (`--pdf-text`): each page records its verdict; under `anchor` (or
    `prefer` with a schema) an anchorable layer goes into the prompt."""
    common = dict(modality="document", format=document.format, num_segments=document.count,
                  source_bytes=source_bytes, json_schema=schema)
    share = open_s / max(document.count, 1)  # fetch + open, spread over the pages
    emitted: set[int] = set()
    try:
        for page in document.iter(skip):
            emitted.add(page.index)
            where = dict(segment_index=page.index, page=page.number, decode_s=share + page.prepare_s)
            if page.error and document.count == 1:  # a single image: the source failed, as a whole
                yield _request(source, modality="document", format=document.format, source_bytes=source_bytes,
                               error=page.error, error_stage="decode", decode_s=where["decode_s"])
                continue
            if page.error:
                yield _request(source, **common, **where, error=page.error, error_stage="decode")
                continue
            image = page.image
            verdict, anchor = None, None
            if layers is not None:
                verdict = layers.verdict(page.index)
                if verdict is None:  # not seen by a `prefer` pass: anchor mode
                    layer = layers.at(page.index)
                    verdict, anchor = layer.verdict, (layer.text if layer.anchorable else None)
            messages = prompts.messages_for_item(task, "document", image=image, defaults=ctx.default_tasks,
                                                 json_schema=schema, anchor_text=anchor)
            yield _request(
                source, **common, **where, messages_json=_messages_json(messages), text_layer=verdict,
                page_data=image.encoded, page_codec=image.codec, page_mode=image.mode,
                page_width=image.width, page_height=image.height, page_resized=page.resized,
                max_soft_tokens=ctx.geometry.max_soft_tokens, orientation=page.orientation,
            )
    except Exception as exc:  # noqa: BLE001 - a bug mid-document: the pages not emitted still get rows
        message = f"unexpected decoding failure ({type(exc).__name__}: {exc})"
        for index in range(document.count):
            if index not in emitted and index not in skip:
                yield _request(source, **common, segment_index=index, page=index + 1,
                               error=f"page {index + 1}: {message}", error_stage="decode")


def _row_schema(source: dict) -> str | None:
    """A Parquet row's own JSON schema (compact text); ValueError when it is not a valid schema or
    one guided decoding cannot run (that row's error, named before any page is rendered)."""
    from model.structured_outputs import check_schema

    value = source.get("json_schema")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        text = quality.canonical_schema(value)
        check_schema(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the row's JSON schema column: {exc}") from None
    return text


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


def sampling_params(row: dict, max_new_tokens: int, seed: int = 0) -> dict:
    """Greedy on the first pass: batch output must be reproducible (same token ids as a direct
    engine call). Retry round k: the round's temperature and fixed seed (`quality.retry_sampling`).
    A JSON schema: guided decoding (vLLM structured outputs through ray.data.llm)."""
    params: dict = {"temperature": 0.0, "max_tokens": max_new_tokens}
    round_index = int(row.get("retry_round") or 0)
    if round_index > 0:
        params.update(quality.retry_sampling(round_index, seed=seed, source_id=str(row["source_id"]),
                                             segment_index=int(row["segment_index"])))
    schema = _str(row.get("json_schema"))
    if schema:
        params["structured_outputs"] = {"json": schema}
    return params


def to_llm_request(row: dict, max_new_tokens: int, seed: int = 0) -> dict:
    """Processor preprocess: a request for the engine, or a pass-through row.

    Rows with `__inference_error__` set skip every ray.data.llm stage unchanged; that is how rows
    that already failed to decode, and pages whose text layer is used as is, travel through the
    processor without an engine call.
    """
    # The processor carries every input column along: drop the page and the JSON messages once the
    # request holds them (or no request is made), so a page is in a row once.
    dropped = {"messages_json": None, "page_data": None}
    if row.get("error"):
        return {"__inference_error__": f"[{row['error_stage']}] {row['error']}", "_opaque": OpaqueRow(), **dropped}
    if row.get("text_source") == "pdf_text":
        return {"__inference_error__": NO_INFERENCE, "_opaque": OpaqueRow(), **dropped}
    if row.get("messages_json") is None:  # a recording without speech (NO_SPEECH)
        return {"__inference_error__": NO_SPEECH, "_opaque": OpaqueRow(), **dropped}
    messages = json.loads(row["messages_json"])
    request = {
        "_opaque": OpaqueRow(),
        "messages": messages,
        "sampling_params": sampling_params(row, max_new_tokens, seed),
        **dropped,
    }
    if not _missing(row.get("page_codec")):
        image = pages.encoded_page(row["page_data"], row["page_codec"], row["page_mode"],
                                   (int(row["page_width"]), int(row["page_height"])))
        for message in messages:
            for part in message["content"] if isinstance(message.get("content"), list) else ():
                if part.get("type") == "image_pil" and part.get("image_pil") == PAGE_REF:
                    part["image_pil"] = image
        kwargs = {"max_soft_tokens": int(row["max_soft_tokens"])}
        if bool(row.get("page_resized")):
            kwargs["do_resize"] = False  # already at the model's size (model.inputs.pages)
        request["mm_processor_kwargs"] = kwargs
    return request


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
    """Processor output (success, engine error, pass-through error or text-layer row) -> work row,
    with the output checks: finish_reason, quality flags and, with a schema, JSON validation."""
    error, stage = _str(row.get("error")), _str(row.get("error_stage"))
    tokens = row.get("generated_tokens")
    tokens = None if tokens is None or (not hasattr(tokens, "__len__") and _missing(tokens)) else tokens
    text_source = _str(row.get("text_source")) or "model"
    from_layer = no_speech = False
    if not error:
        engine_error = _str(row.get("__inference_error__"))
        if engine_error == NO_INFERENCE:
            from_layer = True
        elif engine_error == NO_SPEECH and int(row["segment_index"]) == ERROR_SEGMENT:
            no_speech = True
        elif engine_error:
            error, stage = f"inference failed: {engine_error}", "infer"
        elif tokens is None:
            error, stage = "inference produced no output for this item", "infer"
    ok = error is None
    token_ids = [int(t) for t in tokens] if ok and not (from_layer or no_speech) else None
    text = None
    finish, flags, json_text = None, [], None
    if ok and no_speech:
        text = ""
    elif ok and from_layer:
        text = _str(row.get("pdf_text")) or ""
    elif ok:
        text = _str(row.get("generated_text")) or ""
        finish = quality.finish_reason(token_ids, max_tokens=ctx.max_new_tokens, stop_ids=ctx.stop_token_ids,
                                       prompt_tokens=_int(row.get("num_input_tokens")) or 0,
                                       max_model_len=ctx.max_model_len)
        flags = quality.generation_flags(token_ids, finish, ctx.stop_token_ids)
        schema = _str(row.get("json_schema"))
        if schema:
            json_text, problem = quality.check_json(text, schema)
            if problem and finish == quality.FINISH_LENGTH:
                problem = quality.cut_off(problem, ctx.max_new_tokens)
            if problem:
                flags.append(quality.INVALID_JSON)
                ok, error, stage = False, problem, "validate"
    model_ran = token_ids is not None
    return dict(
        source_id=str(row["source_id"]), source_uri=str(row["source_uri"]), source_row=_str(row.get("source_row")),
        segment_index=int(row["segment_index"]), num_segments=_int(row.get("num_segments")) or 0,
        modality=_str(row.get("modality")), format=_str(row.get("format")),
        page=_int(row.get("page")), start_s=_float(row.get("start_s")), end_s=_float(row.get("end_s")),
        duration_s=_float(row.get("duration_s")), source_bytes=_int(row.get("source_bytes")),
        status="ok" if ok else "error", error=error, error_stage=stage,
        text=text,
        output_token_ids=token_ids,
        input_tokens=(_int(row.get("num_input_tokens")) or 0) if model_ran else 0,
        output_tokens=len(token_ids) if model_ran else 0,
        decode_s=_float(row.get("decode_s")) or 0.0,
        infer_s=max(_float(row.get("time_taken_llm")) or 0.0, 0.0) if model_ran else 0.0,
        finish_reason=finish, flags=flags, text_source=text_source, text_layer=_str(row.get("text_layer")),
        json=json_text, retry_round=_int(row.get("retry_round")) or 0,
        orientation=_int(row.get("orientation")),
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
    ("finish_reason", pa.string()), ("flags", pa.list_(pa.string())), ("text_source", pa.string()),
    ("text_layer", pa.string()), ("json", pa.string()), ("retry_round", pa.int32()),
    ("orientation", pa.int32()),
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
    ("decode_s", pa.float64()), ("infer_s", pa.float64()),
    ("flags", pa.list_(pa.string())), ("text_source", pa.string()), ("pdf_text_pages", pa.int32()),
    ("retried_segments", pa.int32()), ("json", pa.string()),
    ("run_id", pa.string()), ("finished_at", pa.timestamp("us", tz="UTC")),
])

SEGMENT_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("source_uri", pa.string()), ("segment_index", pa.int32()),
    ("status", pa.string()), ("error", pa.string()), ("text", pa.string()),
    ("page", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("modality", pa.string()), ("input_tokens", pa.int32()), ("output_tokens", pa.int32()),
    ("output_token_ids", pa.list_(pa.int32())), ("infer_s", pa.float64()),
    ("finish_reason", pa.string()), ("flags", pa.list_(pa.string())), ("text_source", pa.string()),
    ("text_layer", pa.string()), ("json", pa.string()), ("attempts", pa.int32()), ("retry_round", pa.int32()),
    ("orientation", pa.int32()),
    ("run_id", pa.string()),
])


def best_attempt(attempts: list[dict]) -> dict:
    """The attempt to keep for one segment: the least degenerate (`quality.badness`), then the
    earliest retry round (the greedy first pass wins ties), then the latest write (a resumed run
    may have written the same round twice)."""
    return min(attempts, key=lambda r: (quality.badness(r["status"], r.get("flags") or ()),
                                        r.get("retry_round") or 0, -r["written_at"]))


def _where(segment: dict) -> str:
    if segment["page"] is not None:
        return f"page {segment['page']}"
    return f"{segment['start_s']:.1f}-{segment['end_s']:.1f} s"


def assemble_source(rows: list[dict], *, strict: bool = False) -> tuple[dict, list[dict]]:
    """All work rows of one source (any order, possibly from several invocations and retry rounds)
    -> (source row, segment rows). One row per segment: the best attempt (`best_attempt`); an
    early failure marker is dropped once a later invocation produced segments.

    Segments still flagged `truncated`/`repetitive` after the retries leave the source `ok` with
    those flags (its other pages are good and the flags make it filterable); with `strict` the source
    becomes an error (`error_stage` "quality"). A segment whose JSON does not validate is an error
    either way, and so is its source."""
    rows = sorted(rows, key=lambda r: r["written_at"])
    by_segment: dict[int, list[dict]] = {}
    for row in rows:
        by_segment.setdefault(row["segment_index"], []).append(row)
    markers = by_segment.pop(ERROR_SEGMENT, None)
    marker = markers[-1] if markers else None
    latest_segment = max((r["written_at"] for group in by_segment.values() for r in group), default=None)
    if marker is not None and latest_segment is not None and latest_segment > marker["written_at"]:
        marker = None  # a later invocation got past the failure
    segments = []
    for index in sorted(by_segment):
        group = by_segment[index]
        kept = dict(best_attempt(group))
        kept["attempts"] = len({r.get("retry_round") or 0 for r in group if r.get("text_source", "model") == "model"})
        kept["flags"] = list(kept.get("flags") or [])
        segments.append(kept)
    head = (marker or segments[0]) if (marker or segments) else None
    expected = max((r["num_segments"] for r in segments), default=0)
    ok_segments = [s for s in segments if s["status"] == "ok"]
    degenerate = [s for s in ok_segments if quality.needs_retry(s["flags"])]
    if marker is not None and marker["status"] == "ok":  # a recording without speech (NO_SPEECH)
        status, error, stage = "ok", None, None
        segments = []
    elif marker is not None:
        status, error, stage = "error", marker["error"], marker["error_stage"]
        segments = []
    elif len(segments) < expected:
        status, error, stage = "error", f"only {len(segments)} of {expected} segments were processed", "infer"
    elif len(ok_segments) < len(segments):
        bad = next(s for s in segments if s["status"] != "ok")
        status, error, stage = "error", f"{len(segments) - len(ok_segments)} of {len(segments)} segments failed; {_where(bad)}: {bad['error']}", bad["error_stage"]
    elif strict and degenerate:
        shown = "; ".join(f"{_where(s)} {', '.join(s['flags'])} after {s['attempts']} attempt(s)" for s in degenerate[:5])
        status, error, stage = "error", f"{len(degenerate)} of {len(segments)} segments are still degenerate ({shown}); raise --max-new-tokens or --retries, or run without --strict to keep them flagged", "quality"
    else:
        status, error, stage = "ok", None, None
    text = json_text = None
    if status == "ok":
        if head["modality"] == "audio":
            # Chunks that overlap (fixed windows) get their seams merged; VAD chunks never overlap.
            chunks = [audio_chunks.Chunk(s["segment_index"], ((round(s["start_s"] * 16000), round(s["end_s"] * 16000)),))
                      for s in segments]
            text, _ = audio_chunks.stitch(chunks, [s["text"] or "" for s in segments])
        else:
            text = "\n\n".join((s["text"] or "").strip() for s in segments)
        if any(s.get("json") is not None for s in segments):
            # One JSON value per page/chunk, in order: the schema describes one page.
            json_text = "[" + ",".join(s.get("json") or "null" for s in segments) + "]"
    sources_of_text = {s.get("text_source") or "model" for s in segments}
    is_document = head["modality"] == "document"
    source = dict(
        source_id=head["source_id"], source_uri=head["source_uri"], source_row=head["source_row"],
        status=status, error=error, error_stage=stage, text=text,
        num_segments=len(segments), modality=head["modality"], format=head["format"],
        pages=len(segments) if is_document and segments else None,
        duration_s=head["duration_s"], source_bytes=head["source_bytes"],
        input_tokens=sum(s["input_tokens"] for s in segments),
        output_tokens=sum(s["output_tokens"] for s in segments),
        decode_s=sum(s["decode_s"] for s in segments) if segments else head["decode_s"],
        infer_s=sum(s["infer_s"] for s in segments),
        flags=sorted({f for s in segments for f in s["flags"]}),
        text_source=(sources_of_text.pop() if len(sources_of_text) == 1 else "mixed") if segments else None,
        pdf_text_pages=sum(1 for s in segments if s.get("text_source") == "pdf_text") if is_document else None,
        retried_segments=sum(1 for s in segments if s["attempts"] > 1),
        json=json_text, run_id=head["run_id"],
        finished_at=dt.datetime.fromtimestamp(max(r["written_at"] for r in rows), dt.timezone.utc),
    )
    segment_rows = [
        {k: s.get(k) for k in SEGMENT_SCHEMA.names} for s in segments
    ]
    return source, segment_rows
