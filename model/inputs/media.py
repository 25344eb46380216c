"""Decode raw bytes (documents, scans, recordings) into what the model takes, with clear errors.

Shared by the batch pipeline (jobs/) and the endpoint (serving/): one implementation of

* `sniff_kind(data, name)`      -> "image" | "pdf" | "audio" (magic bytes first, extension fallback)
* `decode_images(data, limits)` -> RGB PIL images (every page of a multi-page TIFF)
* `decode_pdf(data, limits)`    -> RGB PIL images, one per page, rendered by pdfium at `limits.pdf_dpi`
* `decode_audio(data, limits)`  -> float32 mono 16 kHz waveform (soundfile + soxr resampler)
* `iter_audio(source, limits)`  -> the same waveform as bounded-size blocks (streamed; long recordings)
* `decode(data, name, limits)`  -> `Decoded` (kind + pages or waveform)

Every failure is a `MediaError` (a ValueError) whose message says what is wrong with the input and
what a person can do about it; callers turn it into an error row / a 400, never a crash.
Nothing here imports torch or vLLM: it runs in cheap CPU workers.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pathlib
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np

Kind = Literal["image", "pdf", "audio"]

TARGET_SAMPLE_RATE = 16_000


class MediaError(ValueError):
    """An input that cannot be turned into model input; the message is meant for a person."""


@dataclasses.dataclass(frozen=True)
class MediaLimits:
    """Bounds that keep one bad or huge input from exhausting a worker."""

    # Decoded pixels per image/page. A 600 dpi A4 scan is ~35 MP; the model never sees more than
    # 1120 soft tokens * 48 px * 48 px ~ 2.6 MP anyway, so anything far beyond is a bomb or a mistake.
    max_image_pixels: int = 100_000_000
    # Extreme aspect ratios (e.g. 100000x10) cannot be cut into 48 px model patches meaningfully.
    max_aspect_ratio: float = 200.0
    min_image_side: int = 1
    pdf_dpi: float = 144.0
    max_pages: int = 10_000  # PDF pages and TIFF frames per file (pages stream: memory does not grow with it)
    max_audio_seconds: float = 4 * 3600.0
    max_input_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        if self.pdf_dpi <= 0 or self.pdf_dpi > 1200:
            raise ValueError("pdf_dpi must be in (0, 1200]")
        if self.max_pages < 1:
            raise ValueError("max_pages must be >= 1")


@dataclasses.dataclass
class Decoded:
    kind: Kind
    format: str  # "png", "jpeg", "webp", "bmp", "tiff", "pdf", "wav", "flac", "ogg", "mp3"
    pages: list = dataclasses.field(default_factory=list)  # PIL.Image.Image, RGB
    audio: np.ndarray | None = None  # float32 mono at TARGET_SAMPLE_RATE

    @property
    def modality(self) -> Literal["document", "audio"]:
        return "audio" if self.kind == "audio" else "document"

    @property
    def duration_s(self) -> float | None:
        return None if self.audio is None else len(self.audio) / TARGET_SAMPLE_RATE


# -- kind sniffing --------------------------------------------------------------------------------

_IMAGE_EXT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".bmp": "bmp",
              ".tif": "tiff", ".tiff": "tiff"}
_AUDIO_EXT = {".wav": "wav", ".flac": "flac", ".ogg": "ogg", ".oga": "ogg", ".opus": "ogg",
              ".mp3": "mp3"}


def _sniff_magic(data: bytes) -> tuple[Kind, str] | None:
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "webp"
    if head.startswith(b"BM"):
        return "image", "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image", "tiff"
    if b"%PDF-" in data[:1024]:  # the header may follow a few junk bytes
        return "pdf", "pdf"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio", "wav"
    if head[:4] in (b"RF64", b"BW64"):
        return "audio", "wav"
    if head.startswith(b"fLaC"):
        return "audio", "flac"
    if head.startswith(b"OggS"):
        return "audio", "ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return "audio", "mp3"
    return None


def sniff_kind(data: bytes, name: str | None = None) -> tuple[Kind, str]:
    """(kind, format) from magic bytes; the file extension only when the bytes say nothing."""
    if not data:
        raise MediaError("the file is empty (0 bytes); re-upload or re-export it")
    found = _sniff_magic(data)
    if found is not None:
        return found
    ext = pathlib.PurePosixPath(name or "").suffix.lower()
    if ext in _IMAGE_EXT or ext in _AUDIO_EXT or ext == ".pdf":
        # The extension promises a format the bytes do not have: renamed or corrupt file.
        raise MediaError(
            f"the content is not a valid {ext[1:].upper()} file (its first bytes "
            f"{data[:8]!r} match no supported format); the file is corrupt or has the wrong extension"
        )
    raise MediaError(
        f"unsupported file type{f' {ext!r}' if ext else ''} (first bytes {data[:8]!r}); supported: "
        "PNG, JPEG, WebP, BMP, TIFF, PDF, WAV, FLAC, OGG, MP3"
    )


# -- images ---------------------------------------------------------------------------------------


def _check_geometry(width: int, height: int, limits: MediaLimits, what: str) -> None:
    if width < limits.min_image_side or height < limits.min_image_side:
        raise MediaError(f"{what} has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise MediaError(
            f"{what} is {width}x{height} = {width * height / 1e6:.0f} MP, over the limit of "
            f"{limits.max_image_pixels / 1e6:.0f} MP (decompression-bomb guard); downscale it or raise "
            "the pixel limit"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise MediaError(
            f"{what} is {width}x{height}, aspect ratio {ratio:.0f}:1 exceeds {limits.max_aspect_ratio:g}:1; "
            "crop or split it into pages"
        )


def to_rgb(image):
    """Any PIL mode -> 8-bit RGB. Alpha is composited on white (scans have white paper)."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit / 32-bit greyscale: Pillow's convert() clips instead of scaling.
        array = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        if mode == "F":
            lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            array = (array - lo) / ((hi - lo) or 1.0) * 255.0
        else:
            array = array / hi * 255.0
        grey = Image.fromarray(np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(data: bytes, limits: MediaLimits, limit_hint: str = ""):
    """(PIL image with only its header read, frame count), behind the decompression-bomb guard;
    MediaError for a bomb, a corrupt or unknown format, or more frames than `limits.max_pages`
    (`limit_hint` names how to raise that limit, e.g. " (--max-pages)")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            frames = getattr(image, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"image rejected by the decompression-bomb guard: {exc}") from None
    except UnidentifiedImageError:
        raise MediaError("the image data is corrupt or not a supported image format") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise MediaError(f"cannot read the image header: {exc}") from None
    if frames > limits.max_pages:
        raise MediaError(
            f"the image has {frames} frames/pages, more than the page limit of {limits.max_pages}; "
            f"split the file or raise the page limit{limit_hint}"
        )
    return image, frames


def iter_images(data: bytes, limits: MediaLimits = MediaLimits()) -> Iterator:
    """Yield RGB PIL images, one per frame (multi-page TIFF yields every page), lazily."""
    from PIL import Image

    image, frames = open_image(data, limits)
    for index in range(frames):
        what = f"page {index + 1}" if frames > 1 else "the image"
        try:
            image.seek(index)
            # Check the size *before* decoding pixels: a bomb never gets allocated.
            _check_geometry(image.width, image.height, limits, what)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            yield to_rgb(image.copy() if frames > 1 else image)
        except MediaError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise MediaError(
                f"{what} is truncated or corrupt and cannot be decoded ({exc}); re-export the file"
            ) from None


def decode_images(data: bytes, limits: MediaLimits = MediaLimits()) -> list:
    return list(iter_images(data, limits))


# -- PDF ------------------------------------------------------------------------------------------


def pdf_page_count(data: bytes) -> int:
    doc = _open_pdf(data)
    try:
        return len(doc)
    finally:
        doc.close()


def _open_pdf(data: bytes):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        text = str(exc).lower()
        # pdfium's last-error code is per thread and not every failed open sets it: a file rejected
        # for another reason (a page tree with /Count 0) after an encrypted one in the same worker
        # reports the stale "password" error. An encrypted PDF has an /Encrypt entry in its trailer.
        if "password" in text or "security" in text:
            if b"/Encrypt" in data:
                raise MediaError("the PDF is encrypted (password protected); provide an unlocked copy") from None
            raise MediaError("the PDF is corrupt and cannot be opened (pdfium could not load its structure, "
                             "e.g. a page tree with no pages); re-export it") from None
        raise MediaError(f"the PDF is corrupt and cannot be opened ({exc}); re-export it") from None


def iter_pdf_pages(data: bytes, limits: MediaLimits = MediaLimits()) -> Iterator:
    """Yield one RGB PIL image per page, rendered at `limits.pdf_dpi` (lower for giant pages)."""
    doc = _open_pdf(data)
    try:
        count = len(doc)
        if count == 0:
            raise MediaError("the PDF has no pages")
        if count > limits.max_pages:
            raise MediaError(
                f"the PDF has {count} pages, more than the page limit of {limits.max_pages}; split it or "
                "raise the page limit (--max-pages)"
            )
        for index in range(count):
            page = doc[index]
            try:
                width_pt, height_pt = page.get_size()
                scale = limits.pdf_dpi / 72.0
                pixels = width_pt * scale * height_pt * scale
                if pixels > limits.max_image_pixels:
                    # A poster-sized page: render it at the largest DPI that fits instead of failing.
                    scale *= math.sqrt(limits.max_image_pixels / pixels)
                width, height = round(width_pt * scale), round(height_pt * scale)
                _check_geometry(width, height, limits, f"PDF page {index + 1}")
                bitmap = page.render(scale=scale, draw_annots=True)
                yield to_rgb(bitmap.to_pil())
            except MediaError:
                raise
            except Exception as exc:  # noqa: BLE001 - pdfium errors are untyped
                raise MediaError(f"PDF page {index + 1} cannot be rendered ({exc})") from None
            finally:
                page.close()
    finally:
        doc.close()


def decode_pdf(data: bytes, limits: MediaLimits = MediaLimits()) -> list:
    return list(iter_pdf_pages(data, limits))


# -- audio ----------------------------------------------------------------------------------------


def _audio_info(source, limits: MediaLimits):
    """soundfile's header info of bytes or a seekable binary file, checked against the limits."""
    import soundfile as sf

    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        handle.seek(0)
        info = sf.info(handle)
        handle.seek(0)
    except Exception as exc:  # noqa: BLE001 - libsndfile errors are RuntimeError/LibsndfileError
        raise MediaError(f"the audio file is corrupt or in an unsupported encoding ({exc})") from None
    if info.frames == 0 or info.samplerate <= 0:
        raise MediaError("the audio file contains no samples")
    duration = info.frames / info.samplerate
    if duration > limits.max_audio_seconds:
        raise MediaError(
            f"the recording is {duration / 60:.1f} min long, over the limit of "
            f"{limits.max_audio_seconds / 60:.0f} min; split it or raise the limit"
        )
    return info, handle


def iter_audio(source, limits: MediaLimits = MediaLimits(), *, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """Stream a clip (bytes or a seekable binary file) as float32 mono 16 kHz blocks of about
    `block_s` seconds, resampled with soxr (VHQ). Memory stays bounded by the block size whatever the
    recording's length: a two-hour file read from disk never exists as one waveform."""
    import soundfile as sf
    import soxr

    info, handle = _audio_info(source, limits)
    try:
        resampler = None if info.samplerate == TARGET_SAMPLE_RATE else soxr.ResampleStream(
            info.samplerate, TARGET_SAMPLE_RATE, 1, dtype="float32", quality="VHQ"
        )
        block = max(int(info.samplerate * block_s), 1)
        with sf.SoundFile(handle) as stream:
            for chunk in stream.blocks(blocksize=block, dtype="float32", always_2d=True):
                mono = chunk.mean(axis=1, dtype=np.float32)
                if not np.isfinite(mono).all():
                    raise MediaError("the audio contains NaN or infinite samples; the file is corrupt")
                out = mono if resampler is None else resampler.resample_chunk(mono)
                if out.size:
                    yield out
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                yield tail
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MediaError(f"the audio stream is truncated or corrupt ({exc})") from None


def decode_audio(data: bytes, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """Any soundfile-readable clip -> float32 mono at 16 kHz, resampled with soxr (VHQ)."""
    info, _ = _audio_info(data, limits)
    # Blocks are copied into one preallocated array: peak memory is the input bytes plus the output
    # waveform plus one block (collecting blocks and concatenating them held the waveform twice).
    expected = math.ceil(info.frames * TARGET_SAMPLE_RATE / info.samplerate) + 64
    audio = np.empty(expected, np.float32)
    filled = 0
    for block in iter_audio(data, limits):
        if filled + block.size > audio.size:  # the header under-reported the length (rare)
            audio = np.resize(audio, max(2 * audio.size, filled + block.size))
        audio[filled:filled + block.size] = block
        filled += block.size
    if filled == 0:
        raise MediaError("the audio file contains no samples")
    return audio[:filled]


# -- dispatch -------------------------------------------------------------------------------------


def decode(data: bytes, name: str | None = None, limits: MediaLimits = MediaLimits()) -> Decoded:
    """Bytes -> `Decoded`. Raises `MediaError` with an actionable message for any bad input."""
    if data is None:
        raise MediaError("no data (null value)")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MediaError(f"expected file bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.max_input_bytes:
        raise MediaError(
            f"the file is {len(data) / 2**20:.0f} MiB, over the limit of {limits.max_input_bytes / 2**20:.0f} MiB"
        )
    kind, fmt = sniff_kind(data, name)
    if kind == "image":
        return Decoded(kind, fmt, pages=decode_images(data, limits))
    if kind == "pdf":
        return Decoded(kind, fmt, pages=decode_pdf(data, limits))
    return Decoded(kind, fmt, audio=decode_audio(data, limits))


# -- encoders for OpenAI-style content parts ------------------------------------------------------


def image_to_png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; level 1: speed over size
    return buffer.getvalue()


def audio_to_wav_bytes(audio: np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> bytes:
    """float32 WAV: lossless for the float32 waveform the model sees."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()
