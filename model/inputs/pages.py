"""Page preparation: file bytes -> pages at exactly the size the model's image processor uses.

Shared by the batch job (jobs/stages.py) and the endpoint. One call per file:

    geometry = PageGeometry.from_checkpoint(model_dir, max_soft_tokens=1120)
    pages = open_pages(data, "scan.jpg", geometry, limits)      # MediaError for a bad file
    pages.count                                                  # known before any page is decoded
    for page in pages:                                           # one page in memory at a time
        page.error        # None, or "page 7 cannot be rendered (...)": that page only failed
        page.image        # an EncodedImage (a PIL image that stays encoded until it is read)
        page.processor_kwargs   # {"do_resize": False} for pages already at the model's size
        page.content_part()     # vLLM's `image_pil` chat part carrying page.image

Each page leaves here in one of three forms (`page.form`):

* `original`  a JPEG/PNG/WebP/BMP file in a plain mode (RGB or L, one frame), stored upright (EXIF
              orientation 1 or none), whose target size is not smaller than the file: its bytes
              pass through untouched, never decoded here. The
              engine's image processor then does exactly what the reference does with the file.
* `resized`   larger than the target: decoded once, then resized *with the checkpoint's image
              processor's own functions* (`get_aspect_ratio_preserving_size` and its torchvision
              bicubic, antialiased resize of the uint8 tensor it builds itself) and kept lossless.
              The engine must not resize again (`do_resize=False`, see `processor_kwargs`): the size
              function is not idempotent (about 28 % of shapes map to a different size a second
              time, e.g. 200x405 -> 240x528 -> 240x576 at 70 tokens), so "already at the target
              size" cannot be inferred from the pixels. The patches the engine builds are then
              bit-identical to the reference processor's on the original page.
* `converted` at or under the target but not plain (16-bit, palette, alpha, CMYK, TIFF/GIF frames,
              other formats, a stored orientation other than 1): decoded and converted to RGB by
              `media.to_rgb`, kept lossless at its own size; the engine's processor resizes it as
              the reference would.

Every page is made upright before it is sized (`media.Frame.upright`: the EXIF orientation of
JPEG/PNG/WebP, the TIFF tag per frame, HEIF's rotation; a PDF page's /Rotate is rendered by pdfium),
and `PreparedPage.orientation` records the orientation code that was applied.

PDF pages are rendered by pdfium directly at the target size (no full-resolution bitmap exists);
`MediaLimits.pdf_dpi` is a cap: a page whose target needs more than the cap is rendered at the cap
and resized by the engine's processor, as the reference would do with that rendering.

Lossless pixels travel as zstd-compressed raw RGB (pyarrow's codec): at a 1344x1872 page about the
size of a PNG, encoded about 6x and decoded about 5x faster (figures in docs/batch.md).

Cost per page: one decode of the file (none for `original`), one resize, one zstd pass; memory is
one page's bitmap whatever the page count (pages are produced lazily, one at a time).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import pathlib
import time
from collections.abc import Iterator
from typing import Literal

from PIL import Image

from model.inputs import media

Form = Literal["original", "resized", "converted"]

SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)
PLAIN_MODES = ("RGB", "L")
# Formats whose bytes the engine may decode itself (Pillow, the same library as here).
PASSTHROUGH_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
ZSTD_LEVEL = 1  # level 1: the speed end; higher levels save a few % at 2-3x the CPU


# -- the model's page size --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PageGeometry:
    """The image processor settings that fix the size a page is given to the model."""

    max_soft_tokens: int = 280
    patch_size: int = 16
    pooling_kernel_size: int = 3
    resample: int = 3  # PIL code, as in processor_config.json (3 = bicubic)

    def __post_init__(self) -> None:
        if self.max_soft_tokens not in SUPPORTED_SOFT_TOKENS:
            raise ValueError(f"max_soft_tokens must be one of {SUPPORTED_SOFT_TOKENS}, not {self.max_soft_tokens}")

    @classmethod
    def from_checkpoint(cls, model: str | pathlib.Path, max_soft_tokens: int | None = None) -> PageGeometry:
        """Read the checkpoint's processor_config.json (defaults of the processor class when absent)."""
        settings: dict = {}
        path = pathlib.Path(model) / "processor_config.json"
        if path.is_file():
            settings = json.loads(path.read_text()).get("image_processor") or {}
        else:
            legacy = pathlib.Path(model) / "preprocessor_config.json"
            if legacy.is_file():
                settings = json.loads(legacy.read_text())
        defaults = cls()
        return cls(
            max_soft_tokens=int(max_soft_tokens or settings.get("max_soft_tokens") or defaults.max_soft_tokens),
            patch_size=int(settings.get("patch_size", defaults.patch_size)),
            pooling_kernel_size=int(settings.get("pooling_kernel_size", defaults.pooling_kernel_size)),
            resample=int(settings.get("resample", defaults.resample)),
        )

    @property
    def max_patches(self) -> int:
        return self.max_soft_tokens * self.pooling_kernel_size**2

    @property
    def target_pixels(self) -> int:
        return self.max_patches * self.patch_size**2

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image processor resizes a width x height image to."""
        from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
            get_aspect_ratio_preserving_size,
        )

        try:
            th, tw = get_aspect_ratio_preserving_size(
                height=height, width=width, patch_size=self.patch_size,
                max_patches=self.max_patches, pooling_kernel_size=self.pooling_kernel_size,
            )
        except ValueError as exc:  # an extreme aspect ratio the processor cannot cut into patches
            raise media.MediaError(f"a {width}x{height} page cannot be cut into model patches ({exc})") from None
        return tw, th

    def soft_tokens(self, width: int, height: int, *, resized: bool) -> int:
        """Soft tokens the model sees for a page of this size (`resized`: already at its target)."""
        if not resized:
            width, height = self.target_size(width, height)
        return (width // self.patch_size) * (height // self.patch_size) // self.pooling_kernel_size**2


@functools.lru_cache(maxsize=8)
def _image_processor(geometry: PageGeometry):
    """The reference image processor with these settings (its own resize and tensor conversion)."""
    from transformers.models.gemma4_unified.image_processing_gemma4_unified import Gemma4UnifiedImageProcessor

    return Gemma4UnifiedImageProcessor(
        max_soft_tokens=geometry.max_soft_tokens, patch_size=geometry.patch_size,
        pooling_kernel_size=geometry.pooling_kernel_size, resample=geometry.resample,
    )


def resize_to_target(image, geometry: PageGeometry):
    """RGB PIL image -> its target-size pixels as the processor computes them (HxWx3 uint8 array).

    The processor's own steps: `process_image` (RGB conversion, uint8 CHW tensor) and
    `aspect_ratio_preserving_resize` (bicubic, antialiased, on the uint8 tensor)."""
    import torch

    processor = _image_processor(geometry)
    with torch.inference_mode():
        tensor = processor.process_image(image, do_convert_rgb=True)
        resized = processor.aspect_ratio_preserving_resize(
            tensor, patch_size=geometry.patch_size, max_patches=geometry.max_patches,
            pooling_kernel_size=geometry.pooling_kernel_size, resample=geometry.resample,
        )
        return resized.permute(1, 2, 0).contiguous().numpy()


# -- a PIL image that stays encoded -----------------------------------------------------------------


def _zstd():
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=ZSTD_LEVEL)


class EncodedImage(Image.Image):
    """A PIL image that holds its encoded bytes and decodes them on first pixel access.

    Pickles as the encoded bytes (never the bitmap), so it crosses Ray Data stage boundaries and
    `ray.data.llm`'s stages at its encoded size and is decoded once, in the engine process, when
    the image processor reads it. Size and mode come from the header, without decoding.

    codec "file": `encoded` is an image file Pillow opens (JPEG, PNG, ...);
    codec "zstd": `encoded` is zstd-compressed raw pixels of `mode` and `size`.
    """

    format_description = "page kept encoded until read"

    def __init__(self, data: bytes, codec: str, mode: str, size: tuple[int, int], fmt: str | None = None):
        super().__init__()
        if codec not in ("file", "zstd"):
            raise ValueError(f"unknown page codec {codec!r}")
        self.encoded = bytes(data)
        self.codec = codec
        self._mode = mode
        self._size = (int(size[0]), int(size[1]))
        self.format = fmt or ("ZSTD-RAW" if codec == "zstd" else None)

    @classmethod
    def from_file(cls, data: bytes) -> EncodedImage:
        """An image file, read up to its header only."""
        with Image.open(io.BytesIO(data)) as header:
            image = cls(data, "file", header.mode, header.size, header.format)
            image.info = dict(header.info)
        return image

    @classmethod
    def from_pixels(cls, array) -> EncodedImage:
        """HxWx3 (RGB) or HxW (L) uint8 array -> lossless encoded image."""
        import numpy as np

        array = np.ascontiguousarray(array, dtype=np.uint8)
        mode = "RGB" if array.ndim == 3 else "L"
        return cls(_zstd().compress(array, asbytes=True), "zstd", mode, (array.shape[1], array.shape[0]))

    # Pillow reaches the pixels through `im` or `load()`; both decode on first use.
    @property
    def im(self):
        if self._im is None:
            self._decode()
        return Image.Image.im.fget(self)

    @im.setter
    def im(self, value) -> None:
        self._im = value

    def load(self):
        if self._im is None:
            self._decode()
        return super().load()

    def _decode(self) -> None:
        if self.codec == "file":
            with Image.open(io.BytesIO(self.encoded)) as source:
                source.load()
                if source.mode != self._mode or source.size != self._size:
                    raise ValueError(f"encoded page changed while decoding ({source.mode} {source.size})")
                self._im = source.im
        else:
            size = self._size[0] * self._size[1] * len(self._mode)
            raw = _zstd().decompress(self.encoded, decompressed_size=size, asbytes=True)
            self._im = Image.frombytes(self._mode, self._size, raw).im

    def __reduce__(self):
        return (EncodedImage, (self.encoded, self.codec, self._mode, self._size, self.format))

    @property
    def nbytes(self) -> int:
        return len(self.encoded)

    def mime(self) -> str:
        return PASSTHROUGH_FORMATS.get(self.format or "", "image/png") if self.codec == "file" else "image/png"

    def file_bytes(self) -> bytes:
        """A standard image file: the original bytes, or a lossless PNG of the pixels (data URLs)."""
        if self.codec == "file":
            return self.encoded
        return media.image_to_png_bytes(self)


def encoded_page(data: bytes, codec: str, mode: str, size: tuple[int, int]) -> EncodedImage:
    """Rebuild an EncodedImage from its parts (what an Arrow row carries); no decoding."""
    fmt = None
    if codec == "file":
        with Image.open(io.BytesIO(data)) as header:
            fmt = header.format
    return EncodedImage(data, codec, mode, size, fmt)


def is_encoded_image(value) -> bool:
    return isinstance(value, EncodedImage)


# -- pages ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PreparedPage:
    """One page as it leaves decoding. `image` is None when `error` is set (that page failed)."""

    index: int  # 0-based position in the file
    image: object | None  # EncodedImage
    form: Form | None
    width: int = 0  # what the engine receives
    height: int = 0
    source_width: int = 0  # the page before preparation (the rendering at the DPI cap for PDFs)
    source_height: int = 0
    prepare_s: float = 0.0
    error: str | None = None
    # The EXIF orientation code (1-8) applied to make the page upright: the image's EXIF/TIFF tag, or
    # a PDF page's /Rotate (90 -> 6, 180 -> 3, 270 -> 8); 1 when it was stored upright.
    orientation: int | None = None

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def resized(self) -> bool:
        return self.form == "resized"

    @property
    def processor_kwargs(self) -> dict:
        """Per-request image processor arguments the engine needs for this page."""
        return {"do_resize": False} if self.resized else {}

    @property
    def nbytes(self) -> int:
        return self.image.nbytes if self.image is not None else 0

    def content_part(self) -> dict:
        """vLLM's chat content part for an in-process PIL image (kept encoded until the engine)."""
        if self.image is None:
            raise ValueError(f"page {self.number} has no image: {self.error}")
        return {"type": "image_pil", "image_pil": self.image}

    def data_url(self) -> str:
        """An OpenAI `image_url` data URL (the original bytes, or a lossless PNG of the pixels)."""
        import base64

        payload = self.image.file_bytes()
        return f"data:{self.image.mime()};base64,{base64.b64encode(payload).decode('ascii')}"


class Pages:
    """The pages of one file; `count` is known before any page is decoded. Iterate once."""

    def __init__(self, kind: str, fmt: str, count: int, produce):
        self.kind, self.format, self.count = kind, fmt, count
        self._produce = produce

    def __iter__(self) -> Iterator[PreparedPage]:
        return self._produce(frozenset())

    def iter(self, skip=frozenset()) -> Iterator[PreparedPage]:
        """Pages in order, except the 0-based indexes in `skip` (never decoded or rendered)."""
        return self._produce(frozenset(skip))


def open_pages(data: bytes, name: str | None, geometry: PageGeometry,
               limits: media.MediaLimits = media.MediaLimits()) -> Pages:
    """A document file (image, multi-page TIFF, PDF) -> its pages. Raises `media.MediaError` when
    the file as a whole cannot be read (corrupt header, encrypted, too many pages)."""
    if not data:
        raise media.MediaError("the file is empty (0 bytes); re-upload or re-export it")
    kind, fmt = media.sniff_kind(data, name)
    if kind == "pdf":
        return _open_pdf_pages(data, geometry, limits)
    if kind != "image":
        raise media.MediaError(f"expected a document (image or PDF), got {kind} ({fmt})")
    return _open_image_pages(data, fmt, geometry, limits)


def prepare_image(data: bytes, geometry: PageGeometry, limits: media.MediaLimits = media.MediaLimits(),
                  name: str | None = None) -> PreparedPage:
    """A single image (the endpoint's case) -> its prepared page. MediaError if it cannot be used."""
    pages = open_pages(data, name, geometry, limits)
    if pages.kind != "image":
        raise media.MediaError("expected an image, got a PDF")
    if pages.count != 1:
        raise media.MediaError(f"expected one image, the file has {pages.count} frames/pages")
    page = next(iter(pages))
    if page.error:
        raise media.MediaError(page.error)
    return page


# -- images -----------------------------------------------------------------------------------------


def _complete_file(data: bytes, fmt: str) -> bool:
    """Cheap integrity check for bytes that pass through undecoded: the format's end marker is there.
    (A truncated upload then fails in decoding here, with a clear message, not in the engine.)"""
    tail = data[-64:]
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail
    return True


def _open_image_pages(data: bytes, fmt: str, geometry: PageGeometry, limits: media.MediaLimits) -> Pages:
    image = media.ImageFile(data, limits, limit_hint=" (--max-pages)")

    def produce(skip: frozenset) -> Iterator[PreparedPage]:
        try:
            for index in range(image.count):
                if index in skip:
                    continue
                started = time.perf_counter()
                try:
                    page = _prepare_frame(data, image.frame(index), geometry)
                except media.MediaError as exc:
                    page = PreparedPage(index, None, None, error=str(exc))
                page.index = index
                page.prepare_s = time.perf_counter() - started
                yield page
        finally:
            image.close()

    return Pages("image", fmt, image.count, produce)


def _prepare_frame(data: bytes, frame: media.Frame, geometry: PageGeometry) -> PreparedPage:
    width, height = frame.size
    try:
        tw, th = geometry.target_size(width, height)
    except media.MediaError as exc:
        raise media.MediaError(f"{frame.what}: {exc}" if frame.file.count > 1 else str(exc)) from None
    shrink = tw * th < width * height
    header = frame.header
    if (frame.file.count == 1 and not shrink and frame.stored_upright and header.mode in PLAIN_MODES
            and header.format in PASSTHROUGH_FORMATS and _complete_file(data, header.format)):
        image = EncodedImage.from_file(data)
        return PreparedPage(0, image, "original", width, height, width, height, orientation=frame.orientation)
    page = _from_bitmap(frame.upright(), geometry, (tw, th))
    page.orientation = frame.orientation
    return page


def _from_bitmap(rgb, geometry: PageGeometry, target: tuple[int, int] | None = None) -> PreparedPage:
    """A decoded RGB page -> resized (when larger than its target) or converted, kept lossless."""
    import numpy as np

    width, height = rgb.size
    tw, th = target or geometry.target_size(width, height)
    if tw * th < width * height:
        pixels = resize_to_target(rgb, geometry)
        return PreparedPage(0, EncodedImage.from_pixels(pixels), "resized", tw, th, width, height)
    return PreparedPage(0, EncodedImage.from_pixels(np.asarray(rgb)), "converted",
                        width, height, width, height)


# -- PDF --------------------------------------------------------------------------------------------


def pdf_render_size(width_pt: float, height_pt: float, geometry: PageGeometry,
                    limits: media.MediaLimits) -> tuple[tuple[int, int], tuple[int, int], bool]:
    """((width, height) at the DPI cap, (width, height) to render, rendered at the target?).

    The cap size is what rendering at `limits.pdf_dpi` gives (smaller for poster-sized pages, scaled
    to the pixel limit). When the target is smaller, the page is rendered at the target directly."""
    scale = limits.pdf_dpi / 72.0
    pixels = width_pt * scale * height_pt * scale
    if pixels > limits.max_image_pixels:
        scale *= math.sqrt(limits.max_image_pixels / pixels)
    cap = (max(1, round(width_pt * scale)), max(1, round(height_pt * scale)))
    target = geometry.target_size(*cap)
    if target[0] * target[1] < cap[0] * cap[1]:
        return cap, target, True
    return cap, cap, False


def render_pdf_page(page, width: int, height: int):
    """Render a pdfium page into exactly width x height RGB pixels (annotations drawn, white paper).

    pdfium maps the page onto the given rectangle itself: the same geometry as rendering at some DPI
    and resizing to the target, without the full-resolution bitmap in between."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    bitmap = pdfium.PdfBitmap.new_native(width, height, pdfium_c.FPDFBitmap_BGR, rev_byteorder=False)
    bitmap.fill_rect((255, 255, 255, 255), 0, 0, width, height)
    pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, width, height, 0, pdfium_c.FPDF_ANNOT)
    try:
        return media.to_rgb(bitmap.to_pil())
    finally:
        bitmap.close()


def _open_pdf_pages(data: bytes, geometry: PageGeometry, limits: media.MediaLimits) -> Pages:
    doc, count = media.open_pdf(data, limits)

    def produce(skip: frozenset) -> Iterator[PreparedPage]:
        try:
            for index in range(count):
                if index in skip:
                    continue
                started = time.perf_counter()
                page = None
                try:
                    page = doc[index]
                    cap, size, at_target = pdf_render_size(*page.get_size(), geometry, limits)
                    media.check_geometry(size[0], size[1], limits, f"PDF page {index + 1}")
                    orientation = media.pdf_page_orientation(page)
                    rgb = render_pdf_page(page, *size)
                    if at_target:
                        import numpy as np

                        prepared = PreparedPage(index, EncodedImage.from_pixels(np.asarray(rgb)),
                                                "resized", size[0], size[1], cap[0], cap[1])
                    else:
                        prepared = _from_bitmap(rgb, geometry, geometry.target_size(*size))
                        prepared.source_width, prepared.source_height = cap
                    prepared.orientation = orientation
                except media.MediaError as exc:
                    prepared = PreparedPage(index, None, None, error=f"PDF page {index + 1}: {exc}")
                except Exception as exc:  # noqa: BLE001 - pdfium errors are untyped
                    prepared = PreparedPage(index, None, None, error=f"PDF page {index + 1} cannot be rendered ({exc})")
                finally:
                    if page is not None:
                        page.close()
                prepared.index = index
                prepared.prepare_s = time.perf_counter() - started
                yield prepared
        finally:
            doc.close()

    return Pages("pdf", "pdf", count, produce)
