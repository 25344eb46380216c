"""POST /v1/audio/transcriptions: OpenAI's multipart upload, any length, cut and stitched like batch.

decode + plan (`model.inputs.media.iter_audio` -> `model.inputs.audio_chunks.plan_recording`: a
   streaming pass over the upload, any soundfile format -> 16 kHz mono blocks -> VAD speech regions
   packed into chunks of at most the checkpoint's window, cut at pauses; silence is not sent)
-> chunk audio (`audio_chunks.iter_chunk_audio`: a second streaming pass, one chunk's samples at a time)
-> prompt (`model.inputs.prompts.messages_for_item(task, "audio", audio=...)`)
-> infer (one greedy chat call per chunk through the LLMServer handle; chunks run concurrently, up to
   `max_transcription_concurrency`, so the engine batches them)
-> stitch (`model.inputs.audio_chunks.stitch`) -> json / text / srt / vtt / verbose_json (one segment per
   chunk, with its true start/end seconds in the recording).

A recording without speech answers 200 with an empty transcript (no segments, no cues), as OpenAI's
API does for silence. The form's `prompt` is used as the task, like the batch pipeline's `--task`:
empty means "transcribe".

Memory per request, whatever the recording's length: the upload as starlette keeps it (in memory up
to 1 MB, then spooled to a temporary file), the plan's per-10 ms energy and per-32 ms speech values
(about 2 MB per audio hour), one decoded block of 30 s and the samples of at most
`max_transcription_concurrency` chunks. The whole waveform (921 MB of float32 for 4 h, the
`max_audio_seconds` default) never exists; the batch job streams the same two passes
(`jobs.stages.decode_source`).
"""

from __future__ import annotations

import asyncio
import functools
import io
import time
from typing import Any, Awaitable, BinaryIO, Callable, Protocol

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from model.inputs import audio_chunks, prompts, subtitles
from model.inputs.media import MediaError, MediaLimits, iter_audio
from serving.config import ServingConfig
from serving.errors import RequestError


class ChatBackend(Protocol):
    """What a transcription needs from the ingress (`serving.ingress.GuardedOpenAiIngress`): its
    settings, model-name resolution and one chat call per chunk. A protocol, so this module does
    not import the ingress that routes requests to it."""

    config: ServingConfig

    async def model_id_for(self, model: str | None) -> str: ...

    async def chat_once(self, body: Any) -> Any: ...

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
MEDIA_TYPES = {"srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


@functools.lru_cache(maxsize=8)
def _checkpoint_audio(model: str) -> audio_chunks.CheckpointAudio:
    """The checkpoint's audio window and packing, read once per replica."""
    return audio_chunks.checkpoint_audio(model)


async def _form(request: Request):
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(400, "Send the audio as multipart/form-data with a 'file' field (OpenAI's format).")
    try:
        return await request.form(max_files=1, max_fields=32)
    except Exception as e:  # noqa: BLE001 - starlette raises several types for malformed multipart
        raise RequestError(400, f"Malformed multipart body: {type(e).__name__}.") from None


def _field(form, name: str, default: str | None = None) -> str | None:
    value = form.get(name)
    if value is None:
        return default
    if isinstance(value, UploadFile):
        raise RequestError(400, f"'{name}' must be a form field, not a file.", param=name)
    return value


class SegmentationError(ValueError):
    """The segmentation settings cannot plan this recording (a 400, not a server error)."""


async def transcribe_stream(
    source: BinaryIO, limits: MediaLimits, seg: audio_chunks.Segmentation,
    checkpoint: audio_chunks.CheckpointAudio, concurrency: int,
    infer: Callable[[audio_chunks.Chunk, Any], Awaitable[Any]],
) -> tuple[audio_chunks.Plan, list[Any]]:
    """Plan the upload in one streaming pass, then read it again chunk by chunk, starting each
    chunk's `infer` as soon as its samples are read and fewer than `concurrency` are in flight.
    The next chunk is read only when a slot is free, so at most `concurrency` chunks' samples are
    held. Results come back in chunk order; the first failure cancels the chunks still running."""
    try:
        plan = await asyncio.to_thread(audio_chunks.plan_recording, iter_audio(source, limits), seg,
                                       checkpoint=checkpoint)
    except MediaError:
        raise
    except ValueError as e:
        raise SegmentationError(str(e)) from None
    pieces = audio_chunks.iter_chunk_audio(iter_audio(source, limits), plan.chunks)
    gate = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task] = []

    async def run(chunk, samples):
        try:
            return await infer(chunk, samples)
        finally:
            gate.release()

    try:
        while True:
            await gate.acquire()
            if any(t.done() and not t.cancelled() and t.exception() for t in tasks):
                gate.release()
                break  # gather below raises the failure; reading further chunks would be wasted
            item = await asyncio.to_thread(next, pieces, None)
            if item is None:
                gate.release()
                break
            tasks.append(asyncio.create_task(run(*item)))
        return plan, list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        raise


async def transcribe_request(ingress: ChatBackend, request: Request) -> Response:
    config = ingress.config
    form = await _form(request)
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError(400, "Missing 'file': upload the audio as a multipart file field.", param="file")
    response_format = _field(form, "response_format", "json")
    if response_format not in FORMATS:
        raise RequestError(
            400, f"response_format {response_format!r} is not supported; use one of {', '.join(FORMATS)}.",
            param="response_format",
        )
    try:
        temperature = float(_field(form, "temperature", "0") or 0)
        max_tokens = int(_field(form, "max_tokens", str(config.limits.transcription_max_tokens)))
    except ValueError:
        raise RequestError(400, "temperature must be a number and max_tokens an integer.") from None
    if not 0.0 <= temperature <= 2.0 or not 1 <= max_tokens <= config.engine.max_model_len:
        raise RequestError(400, "temperature must be in [0, 2] and max_tokens in [1, max_model_len].")
    model_id = await ingress.model_id_for(_field(form, "model"))
    task = (_field(form, "prompt") or "").strip() or "transcribe"
    language = _field(form, "language")

    if await asyncio.to_thread(upload.file.seek, 0, io.SEEK_END) == 0:
        raise RequestError(400, "file: the uploaded file is empty (0 bytes).", param="file")
    limits = MediaLimits(max_audio_seconds=config.audio.max_audio_seconds)
    started = time.monotonic()

    async def infer(chunk: audio_chunks.Chunk, samples) -> Any:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        messages = await asyncio.to_thread(prompts.messages_for_item, task, "audio", audio=samples)
        body = ChatCompletionRequest(
            model=model_id, messages=messages, temperature=temperature, max_tokens=max_tokens, stream=False
        )
        return await ingress.chat_once(body)

    try:
        plan, results = await transcribe_stream(
            upload.file, limits, config.audio.to_segmentation(), _checkpoint_audio(config.engine.model),
            config.limits.max_transcription_concurrency, infer,
        )
    except MediaError as e:
        raise RequestError(400, f"file: {e}", param="file") from None
    except SegmentationError as e:  # e.g. chunk_s over the model's window
        raise RequestError(400, f"cannot segment the audio: {e}") from None
    chunks = plan.chunks
    texts = [r.choices[0].message.content or "" for r in results]
    text, stitched = audio_chunks.stitch(chunks, texts)
    usage = {
        "type": "tokens",
        "input_tokens": sum(r.usage.prompt_tokens for r in results),
        "output_tokens": sum(r.usage.completion_tokens for r in results),
    }
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]

    if response_format == "text":
        return PlainTextResponse(text)
    if response_format in MEDIA_TYPES:
        return Response(subtitles.render(stitched, response_format), media_type=MEDIA_TYPES[response_format])
    if response_format == "json":
        return JSONResponse({"text": text, "usage": usage})
    duration = plan.duration_s
    segments = [
        {
            "id": piece.index,
            "seek": round(piece.start_s * 100),  # Whisper's unit: 10 ms frames
            "start": round(piece.start_s, 3),
            "end": round(piece.end_s, 3),
            "text": piece.text,
            "raw_text": raw.strip(),  # the chunk's own transcript (differs only for overlapping fixed windows)
            "tokens": [],
            "temperature": temperature,
            "avg_logprob": 0.0,
            "compression_ratio": 0.0,
            "no_speech_prob": 0.0,
        }
        for piece, chunk, raw in zip(stitched, chunks, texts)
    ]
    return JSONResponse(
        {
            "task": "transcribe",
            "language": language or "",
            "duration": duration,
            "text": text,
            "segments": segments,
            "speech_s": round(plan.speech_samples / audio_chunks.SAMPLE_RATE, 3),
            "sent_s": round(plan.sent_s, 3),
            "usage": usage,
            "processing_s": round(time.monotonic() - started, 3),
        }
    )
