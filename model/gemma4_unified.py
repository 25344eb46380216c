"""The project's vLLM class for Gemma 4 Unified: upstream's decoder, reference-exact multimodal input.

Registered by `model.registration` under `ARCHITECTURE`. It reuses vLLM's
`Gemma4UnifiedForConditionalGeneration` (decoder, weight loading, sampling) and changes what upstream
(vLLM 0.29) gets wrong against the transformers reference:

* Audio placeholders: upstream counts soft tokens with Gemma 4's mel-spectrogram arithmetic; the
  unified model has one soft token per *started* 640-sample frame (ceil). Upstream silently drops
  the last partial frame when `samples % 640` is 1..160, and silently truncates clips longer than
  `audio_seq_length`. Here the count is exact and an over-long clip is refused with an error.
* Image placeholders: counted with the image processor's own `get_aspect_ratio_preserving_size`
  instead of a re-derived formula, so the count can never drift from the patches it emits. With
  the per-request `do_resize=False` (pages `model.inputs.pages` already brought to their model
  size) images are counted as they are, and one that is not at a model size is refused.
* Bidirectional image attention (`use_bidirectional_attention="vision"`): vLLM's GPU backends
  implement its mm-prefix mask; on the CPU backend the sliding layers are switched to an
  image-block-aware subclass (model/cpu_bidirectional.py). Any other backend without the mask
  fails loudly at load instead of silently attending causally.
* Batched multimodal embedding: all images (and video frames) of a step go through the patch
  embedder in one pass instead of a Python loop per item.
* Pages at their model size as uint8 pixels (`model.inputs.page_pixels`): a `numpy.uint8`
  (h, w, 3) image with `do_resize=False` skips the reference image processor in the front end
  (placeholders counted from the patch grid, the array passed through as the `page_pixels` field);
  the model rescales and normalises it on the device with the checkpoint's image processor's own
  `rescale_and_normalize` and cuts the patches there, so the embedder sees the numbers the
  reference processor computes. Every other image (PIL, data URLs, float arrays, tensors, pages
  that need a resize) still goes through the reference processor as before.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers.models.gemma4_unified.image_processing_gemma4_unified import (
    get_aspect_ratio_preserving_size,
)
from vllm.config import VllmConfig
from vllm.model_executor.models.gemma4_mm import (
    Gemma4DummyInputsBuilder,
    Gemma4ImageInputs,
    Gemma4MultiModalProcessor,
    Gemma4VideoInputs,
)
from vllm.model_executor.models.gemma4_unified import (
    Gemma4UnifiedForConditionalGeneration,
    Gemma4UnifiedProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

AUDIO_SAMPLE_RATE = 16_000

# The multimodal field carrying pages as uint8 (h, w, 3) pixels (front end -> model).
PAGE_FIELD = "page_pixels"
# Image processor arguments that change the numbers a page becomes; a request or engine config that
# sets any of them sends its pages through the reference processor (which applies them) instead.
NORMALIZATION_KWARGS = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")


class AudioTooLongError(ValueError):
    """A clip longer than the model's audio window; callers must chunk it first."""


def audio_soft_tokens(num_samples: int, samples_per_token: int = 640) -> int:
    """Soft tokens for a clip, as the reference processor computes them: one per started frame."""
    return math.ceil(num_samples / samples_per_token)


def check_audio_window(num_samples: int, max_tokens: int, samples_per_token: int = 640) -> int:
    """Return the soft-token count of a clip, or raise if it does not fit the model's window."""
    if num_samples <= 0:
        raise ValueError("audio clip has no samples")
    tokens = audio_soft_tokens(num_samples, samples_per_token)
    if tokens > max_tokens:
        limit_s = max_tokens * samples_per_token / AUDIO_SAMPLE_RATE
        raise AudioTooLongError(
            f"audio clip of {num_samples / AUDIO_SAMPLE_RATE:.2f} s ({tokens} frames of "
            f"{1000 * samples_per_token // AUDIO_SAMPLE_RATE} ms) exceeds the model's audio window of "
            f"{limit_s:g} s ({max_tokens} frames); split it into chunks of at most {limit_s:g} s"
        )
    return tokens


def _validate_audio(waveform: object, index: int) -> None:
    array = np.asarray(waveform)
    if array.dtype.kind != "f":
        raise ValueError(
            f"audio item {index}: expected floating-point samples in [-1, 1], got dtype {array.dtype}"
        )
    if array.ndim != 1:
        raise ValueError(f"audio item {index}: expected a mono 1-D waveform, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"audio item {index}: audio clip has no samples")
    if not np.isfinite(array).all():
        raise ValueError(f"audio item {index}: waveform contains NaN or infinite samples")


def _image_size(image: object) -> tuple[int, int]:
    """(height, width) of a PIL image, array or tensor (channels-first tensors as HF treats them)."""
    if hasattr(image, "size") and isinstance(image.size, tuple):  # PIL
        width, height = image.size
        return height, width
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 3 and isinstance(image, torch.Tensor):
        return shape[1], shape[2]
    if len(shape) >= 2:
        return shape[0], shape[1]
    raise ValueError(f"unsupported image object of type {type(image).__name__}")


class Gemma4UnifiedExactProcessingInfo(Gemma4UnifiedProcessingInfo):
    def _compute_num_soft_tokens(
        self, image_width: int, image_height: int, max_soft_tokens: int | None = None
    ) -> int:
        vision = self.get_hf_config().vision_config
        if max_soft_tokens is None:
            max_soft_tokens = vision.num_soft_tokens
        if image_width <= 0 or image_height <= 0:
            raise ValueError(f"image of {image_width}x{image_height} pixels has no content")
        k = vision.pooling_kernel_size
        # The image processor's own rounding, so the count always equals the patches it emits.
        height, width = get_aspect_ratio_preserving_size(
            height=image_height,
            width=image_width,
            patch_size=vision.patch_size,
            max_patches=max_soft_tokens * k**2,
            pooling_kernel_size=k,
        )
        return (height // vision.patch_size) * (width // vision.patch_size) // k**2

    def get_audio_repl(self, *, audio_len: int, processor=None) -> PromptUpdateDetails:
        if processor is None:
            processor = self.get_hf_processor()
        samples_per_token = processor.feature_extractor.audio_samples_per_token
        num_tokens = check_audio_window(audio_len, processor.audio_seq_length, samples_per_token)
        config = self.get_hf_config()
        token_ids = (
            [config.boa_token_id]
            + [processor.audio_token_id] * num_tokens
            + [getattr(config, "eoa_token_id", config.eoa_token_index)]
        )
        return PromptUpdateDetails.select_token_id(token_ids, processor.audio_token_id)


def _image_kwarg(merged_kwargs: Mapping[str, object], name: str) -> object:
    """An image processor argument as the HF processor resolves it (top level or images_kwargs)."""
    value = merged_kwargs.get(name)
    images_kwargs = merged_kwargs.get("images_kwargs")
    if value is None and isinstance(images_kwargs, Mapping):
        value = images_kwargs.get(name)
    return value


def _resizes(merged_kwargs: Mapping[str, object]) -> bool:
    """Whether the image processor resizes (False: `do_resize=False`, top level or images_kwargs)."""
    value = _image_kwarg(merged_kwargs, "do_resize")
    return value is None or bool(value)


def _check_page_array(item: np.ndarray, index: int) -> None:
    """An array sent with do_resize=False is a page's pixels; refuse anything else clearly."""
    if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
        raise ValueError(
            f"image item {index}: an array sent with do_resize=False must be a page's uint8 RGB pixels of "
            f"shape (height, width, 3) at its model size (model.inputs.page_pixels.page_pixels makes one), "
            f"got dtype {item.dtype} shape {item.shape}"
        )


def page_patches(pixels: torch.Tensor, image_processor, unit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (h, w, 3) page pixels -> (patches (n, unit*unit*3), positions (n, 2) as (x, y)), on the
    tensor's device: the rows the reference image processor emits for the page, without its padding.

    The arithmetic is the processor's own `rescale_and_normalize` on the (3, h, w) image, with the
    checkpoint's settings (float32 out when it rescales or normalises, as the reference). Cutting the
    48 px patches afterwards only moves values: patch i is the block at row i // (w/unit), column
    i % (w/unit), flattened (row, column, channel), as the processor's `patches_merge` orders them."""
    height, width, channels = pixels.shape
    ip = image_processor
    values = ip.rescale_and_normalize(
        pixels.permute(2, 0, 1),
        ip.do_rescale,
        ip.rescale_factor,
        ip.do_normalize,
        tuple(ip.image_mean) if isinstance(ip.image_mean, list) else ip.image_mean,
        tuple(ip.image_std) if isinstance(ip.image_std, list) else ip.image_std,
    )
    rows, cols = height // unit, width // unit
    patches = (
        values.permute(1, 2, 0)
        .reshape(rows, unit, cols, unit, channels)
        .transpose(1, 2)
        .reshape(rows * cols, unit * unit * channels)
    )
    ys, xs = torch.meshgrid(
        torch.arange(rows, device=pixels.device), torch.arange(cols, device=pixels.device), indexing="ij"
    )
    return patches, torch.stack((xs, ys), dim=-1).reshape(rows * cols, 2)


class Gemma4UnifiedExactMultiModalProcessor(Gemma4MultiModalProcessor):
    """Validates items before the HF processor sees them, so bad input fails with a clear message."""

    def _budget(self, merged_kwargs: Mapping[str, object]) -> int:
        value = merged_kwargs.get("max_soft_tokens")
        images_kwargs = merged_kwargs.get("images_kwargs")
        if value is None and isinstance(images_kwargs, Mapping):
            value = images_kwargs.get("max_soft_tokens")
        return int(value or self.info.get_hf_config().vision_config.num_soft_tokens)

    def _unresized_soft_tokens(self, width: int, height: int, max_soft_tokens: int) -> int:
        """Soft tokens of an image the processor takes as it is (do_resize=False)."""
        vision = self.info.get_hf_config().vision_config
        unit = vision.patch_size * vision.pooling_kernel_size
        tokens = (width // unit) * (height // unit)
        if width % unit or height % unit or tokens == 0 or tokens > max_soft_tokens:
            raise ValueError(
                f"image of {width}x{height} pixels is not at a model size for {max_soft_tokens} soft tokens "
                f"(sides multiples of {unit}, at most {max_soft_tokens} patches of {unit} px); do_resize=False "
                "is only for pages prepared by model.inputs.pages"
            )
        return tokens

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        merged = self.info.ctx.get_merged_mm_kwargs(hf_processor_mm_kwargs)
        if "image" not in mm_items or _resizes(merged):
            return updates
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        config = self.info.get_hf_config()
        budget = self._budget(merged)

        def replacement(item_idx: int) -> PromptUpdateDetails:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
            count = self._unresized_soft_tokens(size.width, size.height, budget)
            token_ids = [config.boi_token_id] + [processor.image_token_id] * count + [config.eoi_token_id]
            return PromptUpdateDetails.select_token_id(token_ids, processor.image_token_id)

        return [
            PromptReplacement(modality="image", target=[processor.image_token_id], replacement=replacement)
            if getattr(u, "modality", None) == "image" else u
            for u in updates
        ]

    def _apply_hf_processor_main(self, mm_items, hf_processor_mm_kwargs):
        processor = self.info.get_hf_processor()
        merged = self.info.ctx.get_merged_mm_kwargs(hf_processor_mm_kwargs)
        resizes = _resizes(merged)
        for modality, items in mm_items.items():
            for i in range(items.get_count()):
                item = items.get(i)
                if modality == "audio":
                    _validate_audio(item, i)
                    check_audio_window(
                        len(item),
                        processor.audio_seq_length,
                        processor.feature_extractor.audio_samples_per_token,
                    )
                elif modality == "image":
                    if not resizes and isinstance(item, np.ndarray):
                        _check_page_array(item, i)
                    height, width = _image_size(item)
                    if height <= 0 or width <= 0:
                        raise ValueError(f"image item {i}: image of {width}x{height} pixels has no content")
                    if not resizes:
                        self._unresized_soft_tokens(width, height, self._budget(merged))
        pages = self._page_arrays(mm_items, merged)
        if pages is None:
            return super()._apply_hf_processor_main(mm_items, hf_processor_mm_kwargs)
        # Pages skip the reference processor; any other modality of the prompt still goes through it.
        others = mm_items.select({m for m in mm_items if m != "image"})
        processed = super()._apply_hf_processor_main(others, hf_processor_mm_kwargs)
        processed[PAGE_FIELD] = [_as_tensor(page) for page in pages]
        return processed

    def _page_arrays(self, mm_items, merged: Mapping[str, object]) -> list[np.ndarray] | None:
        """The prompt's images when every one is page pixels the model can take as they are (uint8
        (h, w, 3) arrays, validated above, with do_resize=False and the checkpoint's normalisation);
        None sends the images through the reference processor."""
        if "image" not in mm_items or _resizes(merged):
            return None
        if any(_image_kwarg(merged, name) is not None for name in NORMALIZATION_KWARGS):
            return None
        images = mm_items["image"]
        items = [images.get(i) for i in range(images.get_count())]
        if not items or not all(isinstance(item, np.ndarray) for item in items):
            return None
        return items

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[PAGE_FIELD] = MultiModalFieldConfig.batched("image")
        return fields


def _as_tensor(page: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor over a page array (arrays from Ray's object store are read-only; the
    tensor is only read, then serialised to the engine core)."""
    page = np.ascontiguousarray(page)
    if page.flags.writeable:
        return torch.from_numpy(page)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(page)


def _pad_patches(
    values: Sequence[torch.Tensor], positions: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-item patch tensors [n_i, d] into [B, max n, d]; padding positions are -1."""
    if isinstance(values, torch.Tensor) and isinstance(positions, torch.Tensor):
        return values, positions
    longest = max(v.shape[0] for v in values)
    out_v = values[0].new_zeros((len(values), longest, values[0].shape[-1]))
    out_p = positions[0].new_full((len(values), longest, 2), -1)
    for i, (v, p) in enumerate(zip(values, positions, strict=True)):
        out_v[i, : v.shape[0]] = v
        out_p[i, : p.shape[0]] = p
    return out_v, out_p


@MULTIMODAL_REGISTRY.register_processor(
    Gemma4UnifiedExactMultiModalProcessor,
    info=Gemma4UnifiedExactProcessingInfo,
    dummy_inputs=Gemma4DummyInputsBuilder,
)
class Gemma4UnifiedExactForConditionalGeneration(Gemma4UnifiedForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        _refuse_unfaithful_bidirectional_attention(self, vllm_config)
        from vllm.transformers_utils.processor import cached_image_processor_from_config

        # The checkpoint's reference image processor: its rescale/normalise settings and arithmetic
        # turn `page_pixels` into the numbers it would have computed in the front end.
        self.page_image_processor = cached_image_processor_from_config(vllm_config.model_config)
        vision = self.config.vision_config
        self.page_unit = vision.patch_size * vision.pooling_kernel_size

    def _embed_valid(self, values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[N, 6912] real patches (no padding) and their (x, y) positions -> [N, hidden] embeddings."""
        target_dtype = self.embed_vision.embedding_projection.weight.dtype
        embedded = self.vision_embedder(values.unsqueeze(0), positions.unsqueeze(0))
        return self.embed_vision(embedded.to(target_dtype)).squeeze(0)

    def _embed_patches(
        self, pixel_values: torch.Tensor | Sequence[torch.Tensor], positions: torch.Tensor | Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over every item: [B, n, 6912] patches -> ([valid patches, hidden], valid counts)."""
        values, pos = _pad_patches(pixel_values, positions)
        valid = (pos != -1).all(dim=-1)  # [B, n]
        # Only real patches go through the embedder; the padding rows would be discarded anyway.
        return self._embed_valid(values[valid], pos[valid]), valid.sum(dim=-1)

    def _process_page_pixels(self, pages: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 (h, w, 3) pages -> one embedding [soft tokens, hidden] per page, one embedder pass."""
        cut = [page_patches(page, self.page_image_processor, self.page_unit) for page in pages]
        projected = self._embed_valid(torch.cat([v for v, _ in cut]), torch.cat([p for _, p in cut]))
        return list(torch.split(projected, [v.shape[0] for v, _ in cut]))

    def embed_multimodal(self, **kwargs: object):
        # vLLM batches only items with the same fields, so a batch is either all pages or none.
        pages = kwargs.pop(PAGE_FIELD, None)
        if pages is None:
            return super().embed_multimodal(**kwargs)
        if kwargs:
            raise ValueError(f"{PAGE_FIELD} batched with other fields: {sorted(kwargs)}")
        return self._process_page_pixels(pages)

    def _process_image_input(self, image_input: Gemma4ImageInputs) -> list[torch.Tensor]:
        projected, counts = self._embed_patches(
            image_input["pixel_values"], image_input["pixel_position_ids"]
        )
        return list(torch.split(projected, counts.tolist()))

    def _process_video_input(self, video_input: Gemma4VideoInputs) -> list[torch.Tensor]:
        projected, counts = self._embed_patches(
            video_input["pixel_values_videos"], video_input["pixel_position_ids_videos"]
        )
        frame_counts = video_input["video_frame_counts"]
        frames = frame_counts.tolist() if isinstance(frame_counts, torch.Tensor) else list(frame_counts)
        tokens_per_video = [int(c.sum()) for c in torch.split(counts, frames)]
        return list(torch.split(projected, tokens_per_video))


def _refuse_unfaithful_bidirectional_attention(model: torch.nn.Module, vllm_config: VllmConfig) -> None:
    """Fail loudly when image tokens must attend bidirectionally but the backend cannot do it."""
    text_config = model.config.text_config
    if getattr(text_config, "use_bidirectional_attention", None) != "vision":
        return
    limits = vllm_config.model_config.multimodal_config.limit_per_prompt or {}
    visual_enabled = any(_limit_count(limits.get(m, 1)) > 0 for m in ("image", "video"))
    if not visual_enabled:
        return  # no image tokens can ever reach the decoder
    from vllm.model_executor.layers.attention import Attention

    from model.cpu_bidirectional import enable_on_cpu_backend

    # CPU_ATTN sliding layers get an image-block-aware subclass (see model/cpu_bidirectional.py).
    enable_on_cpu_backend(model, vllm_config)
    unsupported = sorted(
        {
            module.attn_backend.get_name()
            for module in model.modules()
            if isinstance(module, Attention)
            and module.sliding_window is not None
            and not module.attn_backend.supports_mm_prefix()
        }
    )
    if unsupported:
        raise RuntimeError(
            "This checkpoint sets use_bidirectional_attention='vision' (image tokens attend to each "
            f"other in both directions), but the attention backend {', '.join(unsupported)} does not "
            "implement that mask: image prompts would silently diverge from the reference model. "
            "Run on a GPU attention backend that supports it (FLASH_ATTN, TRITON_ATTN, FLEX_ATTENTION), "
            "or serve text and audio only with limit_mm_per_prompt={'image': 0, 'video': 0}."
        )


def _limit_count(limit: object) -> int:
    if isinstance(limit, int):
        return limit
    return int(getattr(limit, "count", 1) or 0)
