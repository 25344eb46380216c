"""A page as the engine's cheapest input: its uint8 RGB pixels at the model's size.

vLLM runs every request's multimodal processing in the engine's single front-end process. For a
page handed over as an image, that process runs the reference image processor (rescale to
float32, cut 48 px patches, pad to the budget: about 82 CPU-ms and 31 MB at 1120 soft tokens),
hashes the image for its caches and ships the float32 patches to the engine core; one front end
then feeds at most about 12 pages/s. Here the decode task does the page's share of that work
once, and the engine takes the page as it is:

* the decode task brings the page to exactly the pixels the reference processor would patchify
  (`page_pixels`: the processor's own resize when the page is not already at its model size) and
  content-hashes them (blake3 over shape and bytes, the id vLLM's caches key on);
* the engine's multimodal processor (model/gemma4_unified.py) recognises such an item (a
  `numpy.uint8` HxWx3 array with `do_resize=False`), counts its placeholders from the patch grid
  and passes the array through untouched: no float work, no hash, a quarter of the bytes;
* the model rescales and normalises the uint8 pixels on the device with the checkpoint's image
  processor's own `rescale_and_normalize`, then cuts the patches: the same float32 numbers the
  reference processor computes on the original page, so prompt ids and greedy ids are identical.

Interface (the batch path's decode task and inference actor):

    geometry = pages.PageGeometry.from_checkpoint(model_dir, max_soft_tokens=1120)
    for page in pages.open_pages(data, name, geometry):       # decode task
        if page.error is None:
            pixels = page_pixels(page, geometry)               # PagePixels: array, budget, uuid
    ...                                                        # carry PagePixels to the actor
    request = engine_prompt(prompt, pixels)                    # actor that owns vLLM's engine
    llm.generate([request], sampling)                          # or AsyncLLM.generate(request, ...)

`prompt` is the rendered chat prompt as text, or its token ids, with the image placeholder
(the token the chat template emits for an image part, `<image_soft_token>` in the project's
checkpoints) once where the page goes; vLLM expands it to the page's soft tokens. `engine_prompt`
returns vLLM's prompt dict: `prompt` or `prompt_token_ids`, `multi_modal_data` (the array),
`mm_processor_kwargs` (`max_soft_tokens`, `do_resize=False`) and `multi_modal_uuids` (the content
id). The array must not change after `page_pixels` hashed it (it is made read-only).

Cost per page, decode task: decode of the prepared page plus the resize the engine would otherwise
do (none for pages `pages` already brought to the model size), one blake3 pass (about 1.5 ms at
1120 tokens). Engine front end: a few validations and the transfer of H*W*3 bytes (7.5 MB at 1344x
1872), constant work per page besides the copy into the engine core's socket. What crosses from the
decode task to the actor is the raw array (the same bytes as the model-size bitmap); compressing it
for the trip would move the decompression into the front-end process (figures in
docs/benchmarks.md, "Engine front end").
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import numpy as np

from model.inputs import pages

UUID_PREFIX = "page-rgb8-blake3:"
# The model patch: patch_size (16) x pooling_kernel_size (3) in every Gemma 4 Unified checkpoint.
# `check_pixels` does not read the checkpoint; the engine re-checks against the checkpoint's own.
MODEL_PATCH = 48


@dataclasses.dataclass(frozen=True)
class PagePixels:
    """A page at its model size: `pixels` uint8 (height, width, 3), sides multiples of the model's
    48 px patch, at most `max_soft_tokens` patches; `uuid` identifies exactly these pixels."""

    pixels: np.ndarray
    max_soft_tokens: int
    uuid: str

    def __post_init__(self) -> None:
        check_pixels(self.pixels, self.max_soft_tokens)
        if not self.uuid.startswith(UUID_PREFIX):
            raise ValueError(f"not a page content id: {self.uuid!r} (make PagePixels with from_array)")

    @classmethod
    def from_array(cls, pixels: np.ndarray, max_soft_tokens: int) -> PagePixels:
        """Validate, freeze and content-hash an array already at its model size."""
        pixels = np.ascontiguousarray(pixels)
        check_pixels(pixels, max_soft_tokens)
        if pixels.flags.writeable:
            pixels.flags.writeable = False  # the uuid below must keep describing these bytes
        return cls(pixels, max_soft_tokens, content_id(pixels))

    @property
    def soft_tokens(self) -> int:
        height, width, _ = self.pixels.shape
        return (height // MODEL_PATCH) * (width // MODEL_PATCH)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


def check_pixels(pixels: object, max_soft_tokens: int) -> None:
    """Raise ValueError unless `pixels` is a uint8 (h, w, 3) array at a model size for the budget."""
    if max_soft_tokens not in pages.SUPPORTED_SOFT_TOKENS:
        raise ValueError(f"max_soft_tokens must be one of {pages.SUPPORTED_SOFT_TOKENS}, not {max_soft_tokens}")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        what = f"{type(pixels).__name__} {getattr(pixels, 'dtype', '')} {getattr(pixels, 'shape', '')}".strip()
        raise ValueError(f"page pixels must be a numpy uint8 array of shape (height, width, 3), got {what}")
    height, width, _ = pixels.shape
    tokens = (height // MODEL_PATCH) * (width // MODEL_PATCH)
    if height % MODEL_PATCH or width % MODEL_PATCH or tokens == 0 or tokens > max_soft_tokens:
        raise ValueError(
            f"page pixels of {width}x{height} are not at a model size for {max_soft_tokens} soft tokens "
            f"(sides multiples of {MODEL_PATCH}, at most {max_soft_tokens} patches)"
        )


def content_id(pixels: np.ndarray) -> str:
    """blake3 over the shape and the bytes: two arrays get the same id only with the same pixels."""
    from blake3 import blake3

    height, width, channels = pixels.shape
    hasher = blake3(f"uint8:{height}x{width}x{channels}:".encode())
    hasher.update(memoryview(np.ascontiguousarray(pixels)).cast("B"))
    return UUID_PREFIX + hasher.hexdigest()


def page_pixels(page: pages.PreparedPage, geometry: pages.PageGeometry) -> PagePixels:
    """A prepared page (model.inputs.pages) -> the exact pixels the engine's image processor would
    patchify for it. Runs in the decode task.

    What the engine does today with `page.content_part()` and `page.processor_kwargs`: vLLM's parser
    applies the EXIF orientation and converts to RGB (vllm.multimodal.parse / .image, checked against
    vLLM 0.29), then the reference processor resizes to the target size unless the page is `resized`
    (already at it, `do_resize=False`). The same steps here, with `pages.resize_to_target` (the
    processor's own resize)."""
    if page.image is None:
        raise ValueError(f"page {page.number} has no image: {page.error}")
    if geometry.patch_size * geometry.pooling_kernel_size != MODEL_PATCH:
        raise ValueError(f"page pixels assume {MODEL_PATCH} px model patches, the checkpoint has "
                         f"{geometry.patch_size}x{geometry.pooling_kernel_size}")
    image = page.image
    if page.resized:
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    else:
        from PIL import ImageOps

        with contextlib.suppress(Exception):  # vLLM's normalize_image ignores broken EXIF the same way
            image = ImageOps.exif_transpose(image)
        pixels = pages.resize_to_target(image, geometry)
    return PagePixels.from_array(pixels, geometry.max_soft_tokens)


def engine_prompt(prompt: str | Sequence[int], page: PagePixels | Sequence[PagePixels]) -> dict:
    """vLLM's prompt dict for a text prompt (or its token ids) with one image placeholder per page."""
    items = [page] if isinstance(page, PagePixels) else list(page)
    if not items:
        raise ValueError("engine_prompt needs at least one page")
    budgets = {p.max_soft_tokens for p in items}
    if len(budgets) > 1:
        raise ValueError(f"pages of one prompt must share one budget, got {sorted(budgets)}")
    request: dict = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": list(prompt)}
    single = len(items) == 1
    request["multi_modal_data"] = {"image": items[0].pixels if single else [p.pixels for p in items]}
    request["mm_processor_kwargs"] = {"max_soft_tokens": budgets.pop(), "do_resize": False}
    request["multi_modal_uuids"] = {"image": items[0].uuid if single else [p.uuid for p in items]}
    return request
