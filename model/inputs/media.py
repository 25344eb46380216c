"""Open and decode raw bytes (documents, scans, photos, recordings) into what the model takes, with
clear errors.

Shared by the batch pipeline (jobs/) and the endpoint (serving/): one implementation of

* `sniff_kind(data, name)`      -> ("image" | "pdf" | "audio", format), by content (Pillow's and
                                   libsndfile's own identification for the less common formats)
* `ImageFile(data, limits)`     -> an image file opened to its header; `frame(i)` checks one frame at
                                   its upright size, `Frame.upright()` decodes it, EXIF/TIFF
                                   orientation applied (every frame of a multi-page TIFF or a GIF)
* `open_pdf(data, limits)`      -> a pdfium document and its page count, checked
* `decode_images(data, limits)` -> upright RGB PIL images at full resolution (the endpoint without a
                                   processor config; benches)
* `decode_audio(data, limits)`  -> float32 mono 16 kHz waveform (soundfile + soxr resampler)
* `iter_audio(source, limits)`  -> the same waveform as bounded-size blocks (streamed; long recordings)

Page preparation at the model's size is `model.inputs.pages`, built on `ImageFile` and `open_pdf`.
Every failure is a `MediaError` (a ValueError) whose message says what is wrong with the input and
what a person can do about it; callers turn it into an error row / a 400, never a crash.
Nothing here imports torch or vLLM: it runs in cheap CPU workers.
"""

from __future__ import annotations

import dataclasses
import functools
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


# -- kind sniffing --------------------------------------------------------------------------------

_IMAGE_EXT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".bmp": "bmp",
              ".tif": "tiff", ".tiff": "tiff", ".gif": "gif", ".heic": "heif", ".heif": "heif",
              ".avif": "avif", ".pbm": "ppm", ".pgm": "ppm", ".ppm": "ppm", ".pnm": "ppm", ".pam": "ppm",
              ".jp2": "jpeg2000", ".j2k": "jpeg2000", ".tga": "tga", ".pcx": "pcx", ".ico": "ico",
              ".qoi": "qoi", ".sgi": "sgi", ".psd": "psd", ".dds": "dds"}
_AUDIO_EXT = {".wav": "wav", ".flac": "flac", ".ogg": "ogg", ".oga": "ogg", ".opus": "ogg",
              ".mp3": "mp3", ".aif": "aiff", ".aiff": "aiff", ".aifc": "aiff", ".au": "au", ".snd": "au",
              ".caf": "caf", ".w64": "w64", ".voc": "voc"}
# Formats Pillow identifies but cannot decode by itself (a stub plugin, or an external program such as
# Ghostscript for EPS): refused by name instead of failing in decoding.
_PILLOW_IDENTIFY_ONLY = {"EPS", "WMF", "BUFR", "GRIB", "HDF5", "MPEG"}
# ISO base media (HEIF family) brands of still images: HEIC/HEIF (phones), AVIF.
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
SUPPORTED_FORMATS = ("PNG, JPEG, WebP, BMP, TIFF, GIF, HEIC/HEIF, AVIF, PNM (PBM/PGM/PPM), JPEG 2000 and the other "
                     "raster formats Pillow reads; PDF; WAV, FLAC, OGG/Opus, MP3, AIFF/AIFC, AU and the other "
                     "containers libsndfile reads")


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
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "gif"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "image", "avif" if head[8:12] in (b"avif", b"avis") else "heif"
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
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio", "aiff"
    if head.startswith(b".snd"):
        return "audio", "au"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return "audio", "mp3"
    return None


def _sniff_by_libraries(data: bytes) -> tuple[Kind, str] | None:
    """The less common formats, identified by the libraries that decode them (Pillow reads the
    header, libsndfile the container): a format either can read is one the project reads."""
    from PIL import Image, UnidentifiedImageError

    register_image_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format
    except (UnidentifiedImageError, Image.DecompressionBombError):
        fmt = None
    except Exception:  # noqa: BLE001 - a plugin that accepted the prefix and failed on the header
        fmt = None
    if fmt in _PILLOW_IDENTIFY_ONLY:
        raise MediaError(f"{fmt} images cannot be read here (Pillow needs an external program for them); "
                         f"convert the file to PNG or PDF")
    if fmt is not None:
        return "image", fmt.lower()
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - libsndfile: "Format not recognised" and the like
        return None
    return "audio", str(info.format).lower()


def sniff_kind(data: bytes, name: str | None = None) -> tuple[Kind, str]:
    """(kind, format) from the content; the file extension only words the error when nothing
    recognises the bytes."""
    if not data:
        raise MediaError("the file is empty (0 bytes); re-upload or re-export it")
    found = _sniff_magic(data) or _sniff_by_libraries(data)
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
        f"{SUPPORTED_FORMATS}"
    )


# -- images: one opener -----------------------------------------------------------------------------

ORIENTATION_TAG = 0x0112  # EXIF / TIFF Orientation
# Orientations whose upright image has width and height swapped (the 90/270 degree ones).
_SWAPS_SIDES = {5, 6, 7, 8}


@functools.cache
def register_image_plugins() -> None:
    """Pillow plugins beyond its own formats: HEIC/HEIF through pillow-heif (which ships libheif)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def check_geometry(width: int, height: int, limits: MediaLimits, what: str) -> None:
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


def _corrupt(what: str, exc: BaseException) -> MediaError:
    return MediaError(f"{what} is truncated or corrupt and cannot be decoded ({exc}); re-export the file")


# Pillow's decoding errors for a damaged file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class ImageFile:
    """An image file opened to its header behind the decompression-bomb guard, its frames (pages of
    a TIFF, frames of a GIF) known and checked one at a time. Frames are visited in order: a `Frame`
    is valid until the next `frame()` call (they share Pillow's file object).

    MediaError for a bomb, a corrupt or unknown format, or more frames than `limits.max_pages`
    (`limit_hint` names how to raise that limit, e.g. " (--max-pages)")."""

    def __init__(self, data: bytes, limits: MediaLimits, limit_hint: str = ""):
        from PIL import Image, UnidentifiedImageError

        register_image_plugins()
        self.data, self.limits = data, limits
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self._image = Image.open(io.BytesIO(data))  # reads the header only
                self.count = getattr(self._image, "n_frames", 1)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError(f"image rejected by the decompression-bomb guard: {exc}") from None
        except UnidentifiedImageError:
            raise MediaError("the image data is corrupt or not a supported image format") from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad headers
            raise MediaError(f"cannot read the image header: {exc}") from None
        self.format = self._image.format
        if self.count > limits.max_pages:
            self.close()
            raise MediaError(
                f"the image has {self.count} frames/pages, more than the page limit of {limits.max_pages}; "
                f"split the file or raise the page limit{limit_hint}"
            )

    def what(self, index: int) -> str:
        return f"page {index + 1}" if self.count > 1 else "the image"

    def frame(self, index: int) -> Frame:
        """Frame `index` with its header read, checked at its upright size; no pixels decoded."""
        what = self.what(index)
        try:
            self._image.seek(index)
            orientation, by_decoder = _orientation(self._image)
        except _DECODE_ERRORS as exc:
            raise _corrupt(what, exc) from None
        frame = Frame(self, index, orientation, by_decoder)
        check_geometry(*frame.size, self.limits, what)
        return frame

    def frames(self) -> Iterator[Frame]:
        for index in range(self.count):
            yield self.frame(index)

    def close(self) -> None:
        self._image.close()

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _orientation(image) -> tuple[int, bool]:
    """(orientation code 1-8 that makes this frame upright, whether the decoder applies it itself).

    The EXIF Orientation (JPEG, PNG eXIf, WebP, and the TIFF tag of the current frame: Pillow reads
    them all through `getexif`); HEIF decoders apply the container's rotation themselves and
    pillow-heif keeps the code it replaced as `original_orientation`; Pillow (13 here) turns TIFF
    frames on load."""
    applied = image.info.get("original_orientation")
    if isinstance(applied, int) and 1 <= applied <= 8:
        return applied, True
    code = image.getexif().get(ORIENTATION_TAG, 1)
    code = code if isinstance(code, int) and 1 <= code <= 8 else 1
    if image.format == "TIFF" and code in _SWAPS_SIDES:
        # Newer Pillow turns TIFF frames itself on load and reports the turned size in the header
        # (its width and height then differ from the ImageWidth/ImageLength tags); turning again after
        # its load is a no-op either way, as it drops the tag when it applies it.
        stored = (image.tag_v2.get(256), image.tag_v2.get(257))
        return code, image.size != stored
    return code, False


@dataclasses.dataclass
class Frame:
    """One frame of an `ImageFile`: header read and checked, pixels decoded by `upright()`."""

    file: ImageFile
    index: int
    orientation: int  # EXIF orientation code that makes it upright (1: stored upright)
    decoder_applies: bool = False  # the decoder already turns it (HEIF)

    @property
    def what(self) -> str:
        return self.file.what(self.index)

    @property
    def header(self):
        """Pillow's image object at this frame (header only until decoded)."""
        return self.file._image

    @property
    def stored_size(self) -> tuple[int, int]:
        return self.header.size

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) once upright."""
        width, height = self.stored_size
        turned = self.orientation in _SWAPS_SIDES and not self.decoder_applies
        return (height, width) if turned else (width, height)

    @property
    def stored_upright(self) -> bool:
        """The stored pixels are the upright page: the file's bytes may stand for it."""
        return self.orientation == 1 or self.decoder_applies

    def upright(self):
        """The frame's pixels, upright, as an RGB PIL image at full resolution."""
        from PIL import Image, ImageOps

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.header.load()
            if self.stored_upright:
                image = self.header.copy() if self.file.count > 1 else self.header
            else:  # Pillow's own turn, read from this frame's tag (a copy would not carry a TIFF's)
                image = ImageOps.exif_transpose(self.header)
            return to_rgb(image)
        except MediaError:
            raise
        except _DECODE_ERRORS as exc:
            raise _corrupt(self.what, exc) from None


def iter_images(data: bytes, limits: MediaLimits = MediaLimits()) -> Iterator:
    """Upright RGB PIL images at full resolution, one per frame, lazily."""
    with ImageFile(data, limits) as image:
        for frame in image.frames():
            upright = frame.upright()
            # Outlives the file: Pillow's own image object is unusable once the file is closed.
            yield upright.copy() if upright is frame.header else upright


def decode_images(data: bytes, limits: MediaLimits = MediaLimits()) -> list:
    return list(iter_images(data, limits))


# -- PDF: one opener --------------------------------------------------------------------------------

# A PDF page's /Rotate (degrees clockwise when displayed) as the EXIF orientation code of the same turn.
PDF_ROTATION_ORIENTATION = {0: 1, 90: 6, 180: 3, 270: 8}


def open_pdf(data: bytes, limits: MediaLimits, limit_hint: str = " (--max-pages)"):
    """(pdfium document, page count), MediaError for an encrypted, corrupt or empty PDF or one with
    more pages than `limits.max_pages`. The caller closes the document."""
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(data)
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
    try:
        count = len(doc)
        if count == 0:
            raise MediaError("the PDF has no pages")
        if count > limits.max_pages:
            raise MediaError(
                f"the PDF has {count} pages, more than the page limit of {limits.max_pages}; split it or "
                f"raise the page limit{limit_hint}"
            )
    except BaseException:
        doc.close()
        raise
    return doc, count


def pdf_page_orientation(page) -> int:
    """The orientation code of a pdfium page's /Rotate; pdfium renders the page turned by it, and
    reports its size turned (so the page is sized and rendered upright)."""
    return PDF_ROTATION_ORIENTATION.get(page.get_rotation() % 360, 1)


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
