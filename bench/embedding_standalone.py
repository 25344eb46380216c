"""Self-contained (PyTorch only) copy of the two image-embedding computations, for machines without vLLM.

    python bench/embedding_standalone.py [--device cuda] [--dtype bfloat16]

Same arithmetic as vLLM's `Gemma4UnifiedVisionEmbedder` + `Gemma4MultimodalEmbedder`
(LN -> Dense -> LN + factorized 2D position embedding -> LN -> weightless RMSNorm -> Linear):
`upstream` runs it per image over the padded patches and strips the padding afterwards, as
`Gemma4UnifiedForConditionalGeneration._process_image_input` does; `ours` runs it once over the
valid patches of the whole batch, as the project's `_embed_patches` does. Used to measure the ratio
on a GPU (the GPU machine has torch but no vLLM); bench/model_embedding.py measures the real
modules on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


class Embedder(nn.Module):
    def __init__(self, patch_dim: int = 6912, mm_dim: int = 3840, hidden: int = 3840, posemb: int = 1120):
        super().__init__()
        self.ln1, self.dense, self.ln2 = nn.LayerNorm(patch_dim), nn.Linear(patch_dim, mm_dim), nn.LayerNorm(mm_dim)
        self.pos_embedding = nn.Parameter(torch.randn(posemb, 2, mm_dim) * 0.02)
        self.pos_norm = nn.LayerNorm(mm_dim)
        self.proj = nn.Linear(mm_dim, hidden, bias=False)

    def forward(self, values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.ln2(self.dense(self.ln1(values)))
        clamped, valid = positions.clamp(min=0), positions != -1
        for axis in range(2):
            h = h + self.pos_embedding[:, axis, :][clamped[..., axis]] * valid[..., axis, None].to(h.dtype)
        h = self.pos_norm(h)
        h = h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(h.dtype)
        return self.proj(h)


def upstream(model: Embedder, values: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for v, p in zip(values, positions, strict=True):
        projected = model(v[None], p[None])[0]
        out.append(projected[~(p == -1).all(dim=-1)])
    return out


def ours(model: Embedder, values: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
    valid = (positions != -1).all(dim=-1)
    projected = model(values[valid][None], positions[valid][None])[0]
    return list(torch.split(projected, valid.sum(dim=-1).tolist()))


def batch(num: int, budget: int, device, dtype, gen: torch.Generator):
    fractions = [1.0, 1.0, 0.9, 0.75, 0.5, 0.2]
    values = torch.zeros(num, budget, 6912)
    positions = torch.full((num, budget, 2), -1, dtype=torch.long)
    for i in range(num):
        n = int(budget * fractions[i % len(fractions)])
        cols = max(1, int(n**0.5))
        values[i, :n] = torch.rand(n, 6912, generator=gen)
        positions[i, :n, 0] = torch.arange(n) % cols
        positions[i, :n, 1] = torch.arange(n) // cols
    return values.to(device, dtype), positions.to(device)


def timed(fn, device, repeats: int):
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}")
    print(f"{'dtype':9s} {'images x budget':16s} {'upstream ms':>11s} {'ours ms':>8s} {'ratio':>6s} {'max|diff|':>10s}")
    gen = torch.Generator().manual_seed(0)
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(0)
        model = Embedder().to(device, dtype).eval()
        for num, budget in [(8, 280), (8, 1120), (32, 280), (64, 70)]:
            values, positions = batch(num, budget, device, dtype, gen)
            with torch.no_grad():
                t_up, a = timed(lambda: upstream(model, values, positions), device, args.repeats)
                t_ours, b = timed(lambda: ours(model, values, positions), device, args.repeats)
            diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))
            print(f"{dtype_name:9s} {f'{num} x {budget}':16s} {1e3 * t_up:11.2f} {1e3 * t_ours:8.2f} "
                  f"{t_up / t_ours:6.2f} {diff:10.2e}")


if __name__ == "__main__":
    main()
