"""Run the transformers reference implementation and the vLLM engine on the same input, and compare.

A case is a plain-text prompt with `<image_soft_token>` / `<audio_soft_token>` placeholders plus the
images and 16 kHz waveforms they stand for. Both sides must produce the same prompt ids, the same
greedy ids, and top-5 logprobs within `LOGPROB_TOL` (float32 on both sides).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

LOGPROB_TOL = 1e-3
TOP_K = 5


@dataclasses.dataclass
class Case:
    prompt: str
    images: list = dataclasses.field(default_factory=list)
    audios: list[np.ndarray] = dataclasses.field(default_factory=list)
    max_soft_tokens: int | None = None


@dataclasses.dataclass
class Result:
    prompt_ids: list[int]
    output_ids: list[int]
    # per generated position: {token_id: logprob} for the top-K of that side
    top_logprobs: list[dict[int, float]]


def chat_prompt(content: str) -> str:
    return f"<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"


class Reference:
    """transformers' Gemma4UnifiedForConditionalGeneration + processor, greedy, float32."""

    def __init__(self, checkpoint):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def inputs(self, case: Case) -> dict:
        kwargs: dict = {}
        if case.images:
            kwargs["images"] = [list(case.images)]
        if case.audios:
            kwargs["audio"] = list(case.audios)
            kwargs["sampling_rate"] = 16_000
        if case.max_soft_tokens:
            kwargs["max_soft_tokens"] = case.max_soft_tokens
        return self.processor(text=[case.prompt], return_tensors="pt", **kwargs)

    def run(self, case: Case, max_new_tokens: int) -> Result:
        inputs = self.inputs(case)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        prompt_ids = inputs["input_ids"][0].tolist()
        output_ids = out.sequences[0, len(prompt_ids) :].tolist()
        tops = []
        for scores in out.scores:  # processed scores: suppressed special ids are -inf, as in vLLM
            logprobs = torch.log_softmax(scores[0].float(), dim=-1)
            values, ids = logprobs.topk(TOP_K)
            tops.append(dict(zip(ids.tolist(), values.tolist())))
        return Result(prompt_ids, output_ids, tops)


def vllm_prompt(case: Case) -> dict:
    prompt: dict = {"prompt": case.prompt}
    mm: dict = {}
    if case.images:
        mm["image"] = list(case.images)
    if case.audios:
        mm["audio"] = [(a, 16_000) for a in case.audios]
    if mm:
        prompt["multi_modal_data"] = mm
    if case.max_soft_tokens:
        prompt["mm_processor_kwargs"] = {"max_soft_tokens": case.max_soft_tokens}
    return prompt


def from_vllm(output) -> Result:
    completion = output.outputs[0]
    tops = [
        {tid: lp.logprob for tid, lp in position.items()} for position in (completion.logprobs or [])
    ]
    return Result(list(output.prompt_token_ids), list(completion.token_ids), tops)


def assert_same(ref: Result, got: Result, label: str) -> None:
    assert got.prompt_ids == ref.prompt_ids, (
        f"{label}: prompt ids differ (reference {len(ref.prompt_ids)} tokens, vLLM {len(got.prompt_ids)})"
    )
    assert got.output_ids == ref.output_ids, f"{label}: greedy ids differ: {ref.output_ids} vs {got.output_ids}"
    assert len(got.top_logprobs) == len(ref.top_logprobs)
    worst = 0.0
    for step, (r, g) in enumerate(zip(ref.top_logprobs, got.top_logprobs, strict=True)):
        for token_id, ref_lp in r.items():
            assert token_id in g, f"{label}: step {step}: reference top-{TOP_K} token {token_id} missing in vLLM's"
            worst = max(worst, abs(g[token_id] - ref_lp))
    assert worst <= LOGPROB_TOL, f"{label}: top-{TOP_K} logprobs differ by {worst:.2e} > {LOGPROB_TOL}"


def random_image(rng: np.random.Generator, height: int, width: int):
    """Smooth random image (noise + gradients) so resizing and patch order both matter."""
    from PIL import Image

    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            127 + 100 * np.sin(xx / max(width, 1) * rng.uniform(1, 9) + rng.uniform(0, 6)),
            127 + 100 * np.cos(yy / max(height, 1) * rng.uniform(1, 9) + rng.uniform(0, 6)),
            127 + 100 * np.sin((xx + yy) / max(height + width, 1) * rng.uniform(1, 9)),
        ],
        axis=-1,
    )
    noise = rng.normal(0, 25, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def random_audio(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    t = np.arange(num_samples) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 900) * t)
    return (tone + rng.normal(0, 0.05, num_samples)).astype(np.float32)
