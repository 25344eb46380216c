"""Which media a chat request may carry, where it may come from, and how big it may be.

Every image/audio content part is resolved to bytes by the ingress under an explicit policy, decoded
with `model.inputs.media` (the batch pipeline's decoder), checked against the limits, and re-encoded losslessly
(PNG / float32 WAV, 16 kHz mono) into a data URL. vLLM then never fetches anything itself and sees
exactly the pixels and samples the batch pipeline would give it for the same file, so online and batch
answers match token for token.

Sources:
* `data:` URLs (and `input_audio` base64): always;
* `s3://bucket/key`: through `connectors.storage.read_bytes`, the batch pipeline's reader (usual AWS
  settings: AWS_ENDPOINT_URL for on-prem stores, credential chain; AWS SDK standard retries), when
  `allow_s3_media`;
* `http(s)://host/...`: only when `host` is in `allowed_media_domains` (exact host match; empty list,
  the default, means no web fetches), redirects not followed (a redirect could leave the allowlist);
* anything else (file://, bare local paths, ftp, ...): refused.

Refused too: content part types that would bypass decoding (`image_embeds`, `audio_embeds`, video).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse

from model.inputs.media import MediaError, MediaLimits, audio_to_wav_bytes, decode_audio, decode_images, image_to_png_bytes
from serving.config import ServingConfig
from serving.errors import RequestError

TEXT_PARTS = {"text", "input_text"}
IMAGE_PARTS = {"image_url"}
AUDIO_PARTS = {"input_audio", "audio_url"}


class MediaPolicy:
    def __init__(self, config: ServingConfig):
        self.config = config
        self.image_limits = MediaLimits(max_image_pixels=config.max_image_pixels, max_pages=1)
        self.audio_limits = MediaLimits(max_audio_seconds=config.max_transcription_seconds)

    # -- public ----------------------------------------------------------------------------------
    async def vet_messages(self, messages: list) -> list:
        """Check limits and rewrite every media part to a lossless data URL (400 on any problem)."""
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list.", param="messages")
        parts = []
        for m_index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                for p_index, part in enumerate(content):
                    if not isinstance(part, dict):
                        raise RequestError(400, f"messages[{m_index}].content[{p_index}] must be an object.")
                    kind = part.get("type")
                    where = f"messages[{m_index}].content[{p_index}]"
                    if kind in TEXT_PARTS:
                        continue
                    if kind not in IMAGE_PARTS | AUDIO_PARTS:
                        raise RequestError(
                            400,
                            f"{where}: content part type {kind!r} is not supported; use text, image_url, "
                            "input_audio or audio_url.",
                            param=where,
                        )
                    parts.append((where, part))
        images = [p for p in parts if p[1]["type"] in IMAGE_PARTS]
        audios = [p for p in parts if p[1]["type"] in AUDIO_PARTS]
        if len(images) > self.config.images_per_request:
            raise RequestError(
                400, f"{len(images)} images in one request; the limit is {self.config.images_per_request}."
            )
        if len(audios) > self.config.audios_per_request:
            raise RequestError(
                400, f"{len(audios)} audio clips in one request; the limit is {self.config.audios_per_request}."
            )
        # Fetch and decode concurrently; decoding runs in threads to keep the event loop free.
        await asyncio.gather(*(self._vet_part(where, part) for where, part in parts))
        return messages

    # -- per part --------------------------------------------------------------------------------
    async def _vet_part(self, where: str, part: dict) -> None:
        kind = part["type"]
        if kind == "input_audio":
            spec = part.get("input_audio")
            if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
                raise RequestError(400, f"{where}: input_audio needs a base64 'data' string.", param=where)
            data = _b64(spec["data"], where)
        else:
            field = "image_url" if kind == "image_url" else "audio_url"
            spec = part.get(field)
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise RequestError(400, f"{where}: {field} needs a 'url' string.", param=where)
            data = await self.fetch(url, where)

        if kind == "image_url":
            png = await asyncio.to_thread(self._image_png, data, where)
            part["image_url"] = {"url": "data:image/png;base64," + base64.b64encode(png).decode()}
        else:
            wav = await asyncio.to_thread(self._audio_wav, data, where)
            part.clear()
            part.update({"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}})

    def _image_png(self, data: bytes, where: str) -> bytes:
        try:
            pages = decode_images(data, self.image_limits)
        except MediaError as e:
            raise RequestError(400, f"{where}: {e}", param=where) from None
        return image_to_png_bytes(pages[0])

    def _audio_wav(self, data: bytes, where: str) -> bytes:
        # Refuse an over-long clip from its header, before decoding minutes of audio for nothing.
        seconds = _header_seconds(data)
        if seconds is not None and seconds > self.config.max_chat_audio_seconds:
            self._too_long(seconds, where)
        try:
            audio = decode_audio(data, self.audio_limits)
        except MediaError as e:
            raise RequestError(400, f"{where}: {e}", param=where) from None
        seconds = len(audio) / 16000
        if seconds > self.config.max_chat_audio_seconds:
            self._too_long(seconds, where)
        return audio_to_wav_bytes(audio)

    def _too_long(self, seconds: float, where: str):
        raise RequestError(
            400,
            f"{where}: audio clip is {seconds:.1f} s; chat accepts at most "
            f"{self.config.max_chat_audio_seconds:g} s per clip (the model's audio window). "
            "Use /v1/audio/transcriptions for longer recordings.",
            param=where,
        )

    # -- sources ---------------------------------------------------------------------------------
    async def fetch(self, url: str, where: str) -> bytes:
        if url.startswith("data:"):
            header, sep, payload = url.partition(",")
            if not sep or not header.endswith(";base64"):
                raise RequestError(400, f"{where}: data URLs must be base64 encoded (data:<type>;base64,...).")
            return _b64(payload, where)
        parsed = urllib.parse.urlsplit(url)
        scheme = parsed.scheme.lower()
        if scheme == "s3":
            if not self.config.allow_s3_media:
                raise RequestError(400, f"{where}: s3:// media is disabled on this endpoint.")
            if not parsed.netloc or not parsed.path.strip("/"):
                raise RequestError(400, f"{where}: s3 URLs must be s3://bucket/key.")
            return await asyncio.to_thread(self._fetch_s3, url, where)
        if scheme in ("http", "https"):
            host = (parsed.hostname or "").lower()
            if not host or host not in self.config.allowed_media_domains:
                raise RequestError(
                    400,
                    f"{where}: fetching media from {host or 'this URL'!r} is not allowed; send the file as a "
                    "data URL / base64, or ask the operator to allowlist the domain.",
                    param=where,
                )
            return await self._fetch_http(url, where)
        if scheme == "file" or not scheme or len(scheme) == 1:  # len 1: Windows drive letters
            raise RequestError(400, f"{where}: local file paths and file:// URLs are not accepted.", param=where)
        raise RequestError(400, f"{where}: URL scheme {scheme!r} is not supported (use data:, s3:// or https://).")

    def _fetch_s3(self, url: str, where: str) -> bytes:
        # The batch pipeline's reader (pyarrow S3 filesystem, AWS SDK standard retries, endpoint and
        # credentials from the usual AWS settings), so both read the same store the same way.
        from connectors.storage import StorageConfig, StorageError, read_bytes

        try:
            return read_bytes(url, StorageConfig(), max_bytes=self.config.max_body_bytes)
        except StorageError as e:
            if "over the input size limit" in str(e):
                raise RequestError(413, f"{where}: {e}") from None
            # Not found / denied are the caller's to fix (400); an unreachable store is ours (503).
            raise RequestError(400 if e.permanent else 503, f"{where}: {e}") from None

    async def _fetch_http(self, url: str, where: str) -> bytes:
        import httpx

        limit = self.config.max_body_bytes
        try:
            async with httpx.AsyncClient(follow_redirects=False, timeout=self.config.media_fetch_timeout_s) as client:
                async with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise RequestError(400, f"{where}: fetching the media URL returned HTTP {response.status_code}.")
                    chunks, size = [], 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise RequestError(413, f"{where}: the media URL's content exceeds {limit} bytes.")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except httpx.HTTPError as e:
            raise RequestError(400, f"{where}: fetching the media URL failed ({type(e).__name__}).") from None


def _header_seconds(data: bytes) -> float | None:
    """Duration from the container header (no decoding); None when the header says nothing useful."""
    import io

    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - decode_audio reports unreadable audio with a clear message
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None


def _b64(payload: str, where: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: invalid base64 data.", param=where) from None
