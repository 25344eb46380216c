"""Bidirectional image attention (`use_bidirectional_attention="vision"`) on vLLM's CPU backend.

Gemma 4's vision mask (transformers `create_masks_for_vision_model`, which vLLM's GPU kernels
implement too) masks sliding-window layers with

    allowed(q, k) = (k > q - sliding_window) AND (k <= q OR same_image_block(q, k))

where an image block is a maximal run of image soft tokens (`mm_token_type_ids` 1/2; the
`<start_of_image>`/`<end_of_image>` tokens are text). Full-attention layers stay causal.
(transformers 5.19's `Gemma4UnifiedModel.forward` builds a different mask; docs/bidirectional.md.)

vLLM 0.29 implements this only in its GPU kernels (`supports_mm_prefix()`); on CPU the platform
always selects CPU_ATTN, which ignores the ranges and attends causally. The model runner still
computes the ranges (`CommonAttentionMetadata.mm_req_doc_ranges`, the soft-token runs of every
image, for every `is_mm_prefix_lm` model, since the CPU runner inherits the GPU runner) and hands
them to each attention group's metadata builder. This module subclasses the CPU backend for the
sliding layers only (the layer's `attn_backend` is per layer, so the runner builds a separate
attention group with our builder):

* the builder keeps the ranges next to the CPU metadata;
* the impl runs the CPU kernel as before, then recomputes, in float32 PyTorch, the outputs of the
  image queries that the kernel got wrong (every soft token but the last of its image), over
  the keys [q - window + 1, image end] read back from the paged KV cache.

Every key of an image must be in the cache when its queries run, i.e. an image must never be split
across two prefill steps: the engine must run with `disable_chunked_mm_input=True` (vLLM forces
the same on CUDA for these models) and the project's scheduler (model/mm_scheduler.py), which
closes the cases that flag misses; `model.engine.EngineConfig` sets both on CPU and loading
refuses without them. If a split happens anyway, the step fails loudly instead of attending
causally.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)


class SplitImageError(RuntimeError):
    """An image's soft tokens were scheduled over two steps; its attention cannot be exact."""


@dataclasses.dataclass
class CPUBidirectionalMetadata(CPUAttentionMetadata):
    # request index -> inclusive (start, end) positions of each image's soft tokens
    mm_ranges: dict[int, list[tuple[int, int]]] | None = None
    isa: str = "vec"  # the CPU kernel's ISA for this group (decides the KV cache layout)


class CPUBidirectionalMetadataBuilder(CPUAttentionMetadataBuilder):
    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> CPUAttentionMetadata:
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        ranges = common_attn_metadata.mm_req_doc_ranges
        if not ranges or not any(ranges.values()):
            return metadata
        fields = {f.name: getattr(metadata, f.name) for f in dataclasses.fields(metadata)}
        return CPUBidirectionalMetadata(**fields, mm_ranges=ranges, isa=self.isa)


class CPUBidirectionalAttentionImpl(CPUAttentionBackendImpl):
    """CPU_ATTN plus the image-block correction. Adds no state: installed by changing the class
    of the impl vLLM already built, so every constructor argument stays as vLLM chose it."""

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs):
        output = super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        if isinstance(attn_metadata, CPUBidirectionalMetadata) and attn_metadata.mm_ranges:
            self._attend_image_blocks(query, kv_cache, attn_metadata, output)
        return output

    def _attend_image_blocks(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: CPUBidirectionalMetadata,
        output: torch.Tensor,
    ) -> None:
        num_blocks, num_kv_heads, block_size, _ = kv_cache.shape
        key_cache, value_cache = _split_cache(kv_cache)
        key_index, value_index = _cache_layout(
            metadata.isa, kv_cache.dtype, block_size, self.head_size, num_kv_heads
        )
        query = query.view(query.shape[0], self.num_heads, self.head_size)
        output = output.view(output.shape[0], self.num_heads, self.head_size)
        window = self.sliding_window if self.sliding_window > 0 else None
        query_start = metadata.query_start_loc.tolist()
        seq_lens = metadata.seq_lens.tolist()
        for req, ranges in metadata.mm_ranges.items():
            seq_len = seq_lens[req]
            first_token = query_start[req]
            first_pos = seq_len - (query_start[req + 1] - first_token)  # position of first query
            for start, end in ranges:
                # Queries of this image in this step, except its last token, whose keys are causal.
                lo, hi = max(start, first_pos), min(end - 1, seq_len - 1)
                if lo > hi:
                    continue
                if end >= seq_len:
                    raise SplitImageError(
                        f"image tokens {start}..{end} of a request were split across prefill steps "
                        f"(this step ends at {seq_len - 1}); bidirectional image attention cannot be "
                        "computed exactly. Start the engine with the settings model.engine.EngineConfig "
                        "gives it (disable_chunked_mm_input=True and the project's scheduler_cls)."
                    )
                k_lo = 0 if window is None else max(0, lo - window + 1)
                key_pos = torch.arange(k_lo, end + 1)
                blocks = metadata.block_table[req, key_pos // block_size]
                offsets = key_pos % block_size
                keys = _gather(key_cache, key_index, blocks, offsets)  # [n_k, kv_heads, d]
                values = _gather(value_cache, value_index, blocks, offsets)
                rows = torch.arange(lo, hi + 1) - first_pos + first_token
                q = query[rows].float()  # [n_q, heads, d]
                group = self.num_heads // num_kv_heads
                k = keys.float().repeat_interleave(group, dim=1)
                v = values.float().repeat_interleave(group, dim=1)
                scores = torch.einsum("qhd,khd->hqk", q, k) * self.scale
                if self.logits_soft_cap:
                    scores = torch.tanh(scores / self.logits_soft_cap) * self.logits_soft_cap
                if window is not None:
                    q_pos = torch.arange(lo, hi + 1)
                    # (causal OR same image) is all of [k_lo, end]; only the window's past bound cuts.
                    allowed = key_pos[None, :] > (q_pos[:, None] - window)
                    scores = scores.masked_fill(~allowed, float("-inf"))
                probs = torch.softmax(scores, dim=-1)
                output[rows] = torch.einsum("hqk,khd->qhd", probs, v).to(output.dtype)


class CPUBidirectionalAttentionBackend(CPUAttentionBackend):
    @classmethod
    def supports_mm_prefix(cls) -> bool:
        return True

    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return CPUBidirectionalAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[CPUAttentionMetadataBuilder]:
        return CPUBidirectionalMetadataBuilder


def enable_on_cpu_backend(model: torch.nn.Module, vllm_config) -> int:
    """Switch the model's sliding-window CPU_ATTN layers to the image-block-aware backend.

    Returns the number of layers switched. Raises if the engine may split an image across
    prefill steps (the correction needs all of an image's keys in one step).
    """
    from vllm.model_executor.layers.attention import Attention

    layers = [
        module
        for module in model.modules()
        if isinstance(module, Attention)
        and module.sliding_window is not None
        and module.attn_backend is CPUAttentionBackend
    ]
    if not layers:
        return 0
    if vllm_config.cache_config.cache_dtype not in ("auto", None) and "fp8" in str(
        vllm_config.cache_config.cache_dtype
    ):
        raise RuntimeError(
            "bidirectional image attention on CPU reads the KV cache back and needs an unquantized "
            f"KV cache, not kv_cache_dtype={vllm_config.cache_config.cache_dtype!r}"
        )
    from model.mm_scheduler import SCHEDULER_CLS, WholeMultimodalItemScheduler

    scheduler = vllm_config.scheduler_config
    if not (
        scheduler.disable_chunked_mm_input
        and issubclass(scheduler.get_scheduler_cls(), WholeMultimodalItemScheduler)
    ):
        raise RuntimeError(
            "This checkpoint sets use_bidirectional_attention='vision': on the CPU backend every "
            "image must be prefilled in one step. Start the engine with "
            f"disable_chunked_mm_input=True and scheduler_cls={SCHEDULER_CLS!r} "
            "(model.engine.EngineConfig does this on CPU)."
        )
    for module in layers:
        if module.impl.sinks is not None or module.impl.alibi_slopes is not None:
            raise RuntimeError("bidirectional image attention on CPU: sinks/ALiBi are not supported")
        module.attn_backend = CPUBidirectionalAttentionBackend
        module.impl.__class__ = CPUBidirectionalAttentionImpl
    return len(layers)


# -- reading the paged CPU KV cache ------------------------------------------------------------


def _split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value halves as [blocks, kv_heads, block_size * head_size] views, as the CPU
    backend splits them (see `CPUAttentionBackendImpl.forward`)."""
    num_blocks, num_kv_heads, block_size, _ = kv_cache.shape
    halves = kv_cache.view(num_blocks, num_kv_heads, block_size * 2, -1).chunk(2, dim=2)
    return tuple(h.reshape(num_blocks, num_kv_heads, -1) for h in halves)  # views, no copy


def _gather(
    cache: torch.Tensor, index: torch.Tensor, blocks: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """[tokens, kv_heads, head_size] from a flattened block cache and a (offset, dim) -> flat map."""
    heads = torch.arange(cache.shape[1])
    return cache[blocks[:, None, None], heads[None, :, None], index[offsets][:, None, :]]


@functools.lru_cache(maxsize=None)
def _cache_layout(
    isa: str, dtype: torch.dtype, block_size: int, head_size: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the CPU kernel stores (token offset, dim) of a block, for keys and for values.

    The CPU backend packs keys per ISA (for "vec" float32, each block's keys are transposed to
    [head_size, block_size]); the packing is private to its C++ kernel. Rather than hard-code
    it, write a block whose entries encode their own coordinates through the kernel's own
    `cpu_attn_reshape_and_cache` and read back where each landed. Digits in base 64 keep the
    encoding exact in bfloat16/float16 as well.
    """
    n = block_size * head_size
    ids = torch.arange(n).view(block_size, 1, head_size).expand(block_size, num_kv_heads, head_size)
    cache = torch.zeros(1, num_kv_heads, block_size, 2 * head_size, dtype=dtype)
    key_cache, value_cache = cache.view(1, num_kv_heads, block_size * 2, head_size).chunk(2, dim=2)
    decoded_k = torch.zeros(num_kv_heads, n, dtype=torch.long)
    decoded_v = torch.zeros(num_kv_heads, n, dtype=torch.long)
    digit, base = 1, 64
    while digit < n:
        values = ((ids // digit) % base).to(dtype)
        cache.zero_()
        ops.cpu_attn_reshape_and_cache(
            values, values, key_cache, value_cache, torch.arange(block_size), isa,
            k_scale=1.0, v_scale=1.0, kv_cache_dtype="auto",
        )
        flat_k, flat_v = _split_cache(cache)
        decoded_k += flat_k[0].long() * digit
        decoded_v += flat_v[0].long() * digit
        digit *= base
    layouts = []
    for decoded in (decoded_k, decoded_v):
        if not all(torch.equal(decoded[h], decoded[0]) for h in range(num_kv_heads)) or not torch.equal(
            decoded[0].sort().values, torch.arange(n)
        ):
            raise RuntimeError(
                f"unrecognised CPU KV cache layout (isa={isa}, dtype={dtype}); bidirectional image "
                "attention cannot read it back"
            )
        index = torch.empty(n, dtype=torch.long)
        index[decoded[0]] = torch.arange(n)  # flat position of coordinate id
        layouts.append(index.view(block_size, head_size))
    return layouts[0], layouts[1]
