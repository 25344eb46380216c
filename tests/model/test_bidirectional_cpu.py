"""Bidirectional image attention (use_bidirectional_attention="vision") on the real vLLM CPU engine.

One engine for the module, on the bidirectional tiny checkpoint. The reference is transformers'
Gemma 4 vision mask, `create_masks_for_vision_model` (sliding layers: (causal OR same image) AND
window; full layers: causal), the mask vLLM's GPU kernels compute. transformers 5.19's
`Gemma4UnifiedModel.forward` builds a different mask on its own (see docs/bidirectional.md), so
the reference here passes that mask explicitly and decodes greedily without a cache.

The engine runs with a small token budget per step, so long prompts are prefilled over several
steps and image queries read their window's keys back from the paged KV cache; a prompt repeated
in one batch exercises prefix-cache hits that end inside an image.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from model.engine import EngineConfig
from tests.engines import running_engine
from tests.model.reference import (
    TOP_K,
    Case,
    Reference,
    Result,
    assert_same,
    chat_prompt,
    from_vllm,
    random_audio,
    random_image,
    vllm_prompt,
)

MAX_NEW_TOKENS = 10
# Below the multi-image prompts, so they are prefilled over several steps; at least the largest
# multimodal item (an audio clip of 750 frames), which must fit one step.
STEP_TOKEN_BUDGET = 768
SEED = int(os.environ.get("PARITY_SEED", np.random.SeedSequence().entropy % 2**31))


def vision_mask_reference(reference: Reference, case: Case, max_new_tokens: int) -> Result:
    """Greedy decoding with transformers' Gemma 4 vision masks passed explicitly (no KV cache)."""
    from transformers.models.gemma4_unified.modeling_gemma4_unified import (
        create_masks_for_vision_model,
        get_block_sequence_ids_for_mask,
    )

    model = reference.model
    inputs = reference.inputs(case)
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    suppress = list(model.generation_config.suppress_tokens or [])
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    prompt_ids, output_ids, tops = ids[0].tolist(), [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            length = ids.shape[1]
            masks = create_masks_for_vision_model(
                model.config.get_text_config(),
                torch.empty(1, length, 0),  # only shape, dtype and device are read
                None,
                None,
                torch.arange(length)[None],
                get_block_sequence_ids_for_mask(types, ids.device),
            )
            logits = model(input_ids=ids, attention_mask=masks, mm_token_type_ids=types, **extra).logits[0, -1]
            logits = logits.float()
            logits[suppress] = float("-inf")  # the generation config's suppress_tokens, as vLLM applies them
            logprobs = torch.log_softmax(logits, dim=-1)
            values, top_ids = logprobs.topk(TOP_K)
            tops.append(dict(zip(top_ids.tolist(), values.tolist())))
            token = int(top_ids[0])
            output_ids.append(token)
            if token in eos:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            types = torch.cat([types, torch.zeros(1, 1, dtype=types.dtype)], dim=1)
    return Result(prompt_ids, output_ids, tops)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint_bidi):
    settings = EngineConfig(
        model=str(tiny_checkpoint_bidi), device="cpu", max_model_len=4096, max_images_per_prompt=4, max_audios_per_prompt=4
    )
    with running_engine(settings, max_num_batched_tokens=STEP_TOKEN_BUDGET) as engine:
        yield engine


@pytest.fixture(scope="module")
def reference(tiny_checkpoint_bidi):
    return Reference(tiny_checkpoint_bidi)


@pytest.fixture(scope="module")
def rng():
    print(f"PARITY_SEED={SEED}")
    return np.random.default_rng(SEED)


def generate(llm, cases: dict[str, Case], prompts: dict[str, dict] | None = None) -> dict[str, Result]:
    """Each case as a vLLM prompt (`prompts` replaces the prompt of the cases it names)."""
    from vllm import SamplingParams

    prompts = prompts or {}
    params = SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, logprobs=TOP_K)
    outputs = llm.generate([prompts.get(label) or vllm_prompt(c) for label, c in cases.items()], params)
    return {label: from_vllm(out) for label, out in zip(cases, outputs, strict=True)}


def page_pixels_prompt(case: Case) -> dict:
    """The case's single image as the batch path sends a page: uint8 pixels at the model size
    (model.inputs.page_pixels), prepared from the original by model.inputs.pages."""
    import io

    from model.inputs import pages
    from model.inputs.page_pixels import engine_prompt, page_pixels

    [original] = case.images
    buf = io.BytesIO()
    original.save(buf, format="PNG")
    geometry = pages.PageGeometry(case.max_soft_tokens or 280)
    page = next(iter(pages.open_pages(buf.getvalue(), "page.png", geometry)))
    return engine_prompt(case.prompt, page_pixels(page, geometry))


def image(rng, lo: int, hi: int):
    return random_image(rng, int(rng.integers(lo, hi)), int(rng.integers(lo, hi)))


def test_engine_settings_keep_each_image_in_one_step(tiny_checkpoint_bidi, tiny_checkpoint):
    from model.mm_scheduler import SCHEDULER_CLS

    kwargs = EngineConfig(model=str(tiny_checkpoint_bidi), device="cpu").vllm_kwargs()
    assert kwargs["disable_chunked_mm_input"] is True
    assert kwargs["scheduler_cls"] == SCHEDULER_CLS
    # Checkpoints without the bidirectional mask keep vLLM's default scheduling.
    plain = EngineConfig(model=str(tiny_checkpoint), device="cpu").vllm_kwargs()
    assert "disable_chunked_mm_input" not in plain and "scheduler_cls" not in plain


@pytest.mark.parametrize(
    ("computed", "new", "expected"),
    [
        (0, 50, 50),  # ends before the item at 100..199
        (0, 150, 100),  # would end inside it: stop before it
        (100, 50, 0),  # starts at the item (vLLM 0.29's flag lets this one through)
        (120, 50, 0),  # starts inside it (prefix-cache hit): wait for budget
        (120, 80, 80),  # covers the rest of it
        (120, 200, 180),  # covers the rest of it, stops before the second at 300..399
        (0, 250, 250),  # covers all of it
        (0, 350, 300),  # covers the first, would split the second
    ],
)
def test_scheduler_never_ends_a_step_inside_an_item(computed, new, expected):
    from model.mm_scheduler import steps_without_split

    assert steps_without_split([(300, 100), (100, 100)], computed, new) == expected


def test_image_prompts_match_the_vision_mask_reference(llm, reference, rng):
    several = Case(
        chat_prompt(
            "First page <image_soft_token> a clip <audio_soft_token> second page <image_soft_token>"
            " third page <image_soft_token> last page <image_soft_token> Summarise."
        ),
        images=[image(rng, 200, 900) for _ in range(4)],
        audios=[random_audio(rng, int(rng.integers(5_000, 30_000)))],
    )
    cases = {
        "one image": Case(chat_prompt("<image_soft_token>Read the page."), images=[image(rng, 20, 400)]),
        "image larger than the window": Case(chat_prompt("Read <image_soft_token>"), images=[image(rng, 700, 1200)]),
        "image + audio": Case(
            chat_prompt("<image_soft_token><audio_soft_token>Match?"),
            images=[image(rng, 50, 400)],
            audios=[random_audio(rng, int(rng.integers(3_000, 40_000)))],
        ),
        "several images": several,
        # Same prompt again in the batch: the prefix cache may serve part of an image.
        "several images again": several,
        "two images, budget 70": Case(
            chat_prompt("<image_soft_token> vs <image_soft_token>"), images=[image(rng, 100, 800) for _ in range(2)], max_soft_tokens=70
        ),
        # A page as uint8 pixels at its model size, larger than the sliding window.
        "page pixels": Case(chat_prompt("Read <image_soft_token>"), images=[image(rng, 700, 1200)], max_soft_tokens=280),
    }
    got = generate(llm, cases, {"page pixels": page_pixels_prompt(cases["page pixels"])})
    assert len(got["several images"].prompt_ids) > STEP_TOKEN_BUDGET > 4 * 128  # several windows, several steps
    for label, case in cases.items():
        assert_same(vision_mask_reference(reference, case, MAX_NEW_TOKENS), got[label], f"{label} (PARITY_SEED={SEED})")


def test_the_mask_matters_for_these_inputs(reference, rng):
    """Guards the test above against passing vacuously: a causal-only model answers differently."""
    case = Case(chat_prompt("<image_soft_token>Read the page."), images=[image(rng, 200, 600)])
    bidirectional = vision_mask_reference(reference, case, 1).top_logprobs[0]
    inputs = reference.inputs(case)
    inputs.pop("mm_token_type_ids")  # without it transformers builds plain causal masks
    with torch.no_grad():
        logits = reference.model(**inputs).logits[0, -1].float()
    causal = torch.log_softmax(logits, dim=-1)
    assert max(abs(causal[t].item() - lp) for t, lp in bidirectional.items()) > 1e-2


def test_text_and_audio_unchanged(llm, reference, rng):
    cases = {
        "text": Case(chat_prompt(" ".join(["The quick brown fox jumps over the lazy dog."] * 20))),
        "audio": Case(chat_prompt("<audio_soft_token>Transcribe."), audios=[random_audio(rng, int(rng.integers(20_000, 90_000)))]),
    }
    got = generate(llm, cases)
    for label, case in cases.items():
        # No image tokens: transformers' own generate() is the reference, and the masks agree.
        assert_same(reference.run(case, MAX_NEW_TOKENS), got[label], f"{label} (PARITY_SEED={SEED})")
