"""Which media a chat request may carry, where it may come from, and how big it may be.

Every image/audio content part is resolved to bytes by the ingress under an explicit policy, checked
against the limits and handed to vLLM as a data URL: vLLM never fetches anything itself.

Images go through `model.inputs.pages.prepare_image`, the page-preparation step the batch pipeline
uses, so the engine sees the pixels batch gives it for the same file and answers match token for
token. Every image is made upright first (EXIF/TIFF orientation, HEIC's rotation: `model.inputs.media`).
A plain JPEG/PNG/WebP/BMP stored upright at or under the model's target size passes through as its
original bytes (header read, never decoded here; a data URL part is left exactly as sent); a larger image is
decoded once and resized with the checkpoint's image processor's own functions, and the request then
carries `mm_processor_kwargs.do_resize=False` so the engine does not resize again (the processor's
size function is not idempotent: see pages.py); other modes are converted losslessly at their own
size. A request mixing resized and not-resized images has all of them brought to their target size
here, so one `do_resize` value is right for every image. The target size follows the request's
`mm_processor_kwargs.max_soft_tokens` when it sets one. Without a readable processor config in the
checkpoint directory (a hub id, a path the ingress node does not mount) images are decoded and kept
lossless at their own size, and the engine's processor resizes them.

Audio is decoded with `model.inputs.media` (any soundfile format and rate) and re-encoded losslessly
as float32 WAV, 16 kHz mono: the samples the batch pipeline gives the engine.

Sources:
* `data:` URLs (and `input_audio` base64): always;
* `s3://bucket/key`: through `connectors.storage.read_bytes`, the batch pipeline's reader, with the
  config's `storage` settings (AWS SDK standard retries), when `allow_s3_media`;
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

import logging
import pathlib

from model.inputs import pages
from model.inputs.media import MediaError, MediaLimits, audio_to_wav_bytes, decode_audio, decode_images, image_to_png_bytes
from serving.config import ServingConfig
from serving.errors import RequestError

TEXT_PARTS = {"text", "input_text"}
IMAGE_PARTS = {"image_url"}
AUDIO_PARTS = {"input_audio", "audio_url"}


logger = logging.getLogger("serving.media_policy")


class MediaPolicy:
    def __init__(self, config: ServingConfig):
        self.config = config
        self.image_limits = MediaLimits(max_image_pixels=config.pages.max_image_pixels, max_pages=1)
        self.audio_limits = MediaLimits(max_audio_seconds=config.audio.max_audio_seconds)
        self.checkpoint = pathlib.Path(config.engine.model)
        self.geometry = self._geometry(config.engine.image_tokens)

    def _geometry(self, max_soft_tokens: int | None) -> pages.PageGeometry | None:
        if not (self.checkpoint / "processor_config.json").is_file() and not (
            self.checkpoint / "preprocessor_config.json"
        ).is_file():
            if max_soft_tokens is None:
                logger.warning("no processor config under %s: images go to the engine at their own size", self.checkpoint)
            return None
        return pages.PageGeometry.from_checkpoint(self.checkpoint, max_soft_tokens)

    def geometry_for(self, processor_kwargs: dict | None) -> pages.PageGeometry | None:
        """The page size for this request (its `mm_processor_kwargs.max_soft_tokens` if set)."""
        budget = (processor_kwargs or {}).get("max_soft_tokens")
        if budget is None or self.geometry is None:
            return self.geometry
        if budget not in pages.SUPPORTED_SOFT_TOKENS:
            raise RequestError(
                400, f"mm_processor_kwargs.max_soft_tokens must be one of {pages.SUPPORTED_SOFT_TOKENS}.",
                param="mm_processor_kwargs",
            )
        return self._geometry(int(budget))

    # -- public ----------------------------------------------------------------------------------
    async def vet_request(self, messages: list, processor_kwargs: dict | None) -> tuple[list, dict | None]:
        """`vet_messages`, then the request's `mm_processor_kwargs` for the prepared images."""
        geometry = self.geometry_for(processor_kwargs)
        prepared = await self.vet_messages(messages, geometry)
        if any(page.resized for page in prepared):
            processor_kwargs = {**(processor_kwargs or {}), "do_resize": False}
        return messages, processor_kwargs

    async def vet_messages(self, messages: list, geometry: pages.PageGeometry | None = None) -> list:
        """Check limits and rewrite every media part to a data URL the engine reads as the batch
        pipeline's pixels and samples (400 on any problem). Returns the prepared image pages."""
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
        results = await asyncio.gather(*(self._vet_part(where, part, geometry) for where, part in parts))
        prepared = [(part, page) for (_, part), page in zip(parts, results) if page is not None]
        if any(page.resized for _, page in prepared) and not all(page.resized for _, page in prepared):
            # One do_resize value per request: bring the others to their target size as well.
            results = await asyncio.gather(*(asyncio.to_thread(_to_target, page, geometry) for _, page in prepared))
            for (part, _), page in zip(prepared, results):
                part["image_url"] = {"url": page.data_url()}
            return results
        return [page for _, page in prepared]

    # -- per part --------------------------------------------------------------------------------
    async def _vet_part(self, where: str, part: dict, geometry: pages.PageGeometry | None):
        """Vet one part in place; the prepared page for an image, None for audio."""
        kind = part["type"]
        url_is_data = False
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
            url_is_data = url.startswith("data:")
            data = await self.fetch(url, where)

        if kind == "image_url":
            if geometry is None:
                png = await asyncio.to_thread(self._image_png, data, where)
                part["image_url"] = {"url": "data:image/png;base64," + base64.b64encode(png).decode()}
                return None
            page = await asyncio.to_thread(self._image_page, data, where, geometry)
            if not (page.form == "original" and url_is_data):  # a data URL of the original stays as sent
                part["image_url"] = {"url": page.data_url()}
            return page
        wav = await asyncio.to_thread(self._audio_wav, data, where)
        part.clear()
        part.update({"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}})
        return None

    def _image_page(self, data: bytes, where: str, geometry: pages.PageGeometry) -> pages.PreparedPage:
        try:
            return pages.prepare_image(data, geometry, self.image_limits)
        except MediaError as e:
            raise RequestError(400, f"{where}: {e}", param=where) from None

    def _image_png(self, data: bytes, where: str) -> bytes:
        try:
            decoded = decode_images(data, self.image_limits)
        except MediaError as e:
            raise RequestError(400, f"{where}: {e}", param=where) from None
        return image_to_png_bytes(decoded[0])

    def _audio_wav(self, data: bytes, where: str) -> bytes:
        # Refuse an over-long clip from its header, before decoding minutes of audio for nothing.
        seconds = _header_seconds(data)
        if seconds is not None and seconds > self.config.limits.max_chat_audio_seconds:
            self._too_long(seconds, where)
        try:
            audio = decode_audio(data, self.audio_limits)
        except MediaError as e:
            raise RequestError(400, f"{where}: {e}", param=where) from None
        seconds = len(audio) / 16000
        if seconds > self.config.limits.max_chat_audio_seconds:
            self._too_long(seconds, where)
        return audio_to_wav_bytes(audio)

    def _too_long(self, seconds: float, where: str):
        raise RequestError(
            400,
            f"{where}: audio clip is {seconds:.1f} s; chat accepts at most "
            f"{self.config.limits.max_chat_audio_seconds:g} s per clip (the model's audio window). "
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
            if not self.config.media.allow_s3_media:
                raise RequestError(400, f"{where}: s3:// media is disabled on this endpoint.")
            if not parsed.netloc or not parsed.path.strip("/"):
                raise RequestError(400, f"{where}: s3 URLs must be s3://bucket/key.")
            return await asyncio.to_thread(self._fetch_s3, url, where)
        if scheme in ("http", "https"):
            host = (parsed.hostname or "").lower()
            if not host or host not in self.config.media.allowed_media_domains:
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
        from connectors.storage import StorageError, read_bytes

        try:
            return read_bytes(url, self.config.storage, max_bytes=self.config.limits.max_body_bytes)
        except StorageError as e:
            if "over the input size limit" in str(e):
                raise RequestError(413, f"{where}: {e}") from None
            # Not found / denied are the caller's to fix (400); an unreachable store is ours (503).
            raise RequestError(400 if e.permanent else 503, f"{where}: {e}") from None

    async def _fetch_http(self, url: str, where: str) -> bytes:
        import httpx

        limit = self.config.limits.max_body_bytes
        try:
            async with httpx.AsyncClient(follow_redirects=False, timeout=self.config.media.media_fetch_timeout_s) as client:
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


def _to_target(page: pages.PreparedPage, geometry: pages.PageGeometry) -> pages.PreparedPage:
    """A page at or under its target size -> resized to it with the processor's own functions, as the
    engine's processor would (for a request whose other images are already resized)."""
    if page.resized:
        return page
    from model.inputs.media import to_rgb

    rgb = to_rgb(page.image)
    width, height = geometry.target_size(*rgb.size)
    pixels = pages.resize_to_target(rgb, geometry)
    return pages.PreparedPage(page.index, pages.EncodedImage.from_pixels(pixels), "resized", width, height,
                              page.source_width, page.source_height)


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
