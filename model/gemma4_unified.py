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
"""

from __future__ import annotations

import math
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
from vllm.multimodal.parse import ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

AUDIO_SAMPLE_RATE = 16_000


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


def _resizes(merged_kwargs: Mapping[str, object]) -> bool:
    """Whether the image processor resizes (False: `do_resize=False`, top level or images_kwargs)."""
    value = merged_kwargs.get("do_resize")
    images_kwargs = merged_kwargs.get("images_kwargs")
    if value is None and isinstance(images_kwargs, Mapping):
        value = images_kwargs.get("do_resize")
    return value is None or bool(value)


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
                    height, width = _image_size(item)
                    if height <= 0 or width <= 0:
                        raise ValueError(f"image item {i}: image of {width}x{height} pixels has no content")
                    if not resizes:
                        self._unresized_soft_tokens(width, height, self._budget(merged))
        return super()._apply_hf_processor_main(mm_items, hf_processor_mm_kwargs)


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

    def _embed_patches(
        self, pixel_values: torch.Tensor | Sequence[torch.Tensor], positions: torch.Tensor | Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass over every item: [B, n, 6912] patches -> ([valid patches, hidden], valid counts)."""
        values, pos = _pad_patches(pixel_values, positions)
        target_dtype = self.embed_vision.embedding_projection.weight.dtype
        valid = (pos != -1).all(dim=-1)  # [B, n]
        # Only real patches go through the embedder; the padding rows would be discarded anyway.
        embedded = self.vision_embedder(values[valid].unsqueeze(0), pos[valid].unsqueeze(0))
        projected = self.embed_vision(embedded.to(target_dtype)).squeeze(0)
        return projected, valid.sum(dim=-1)

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
