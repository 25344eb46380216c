"""The project's vLLM class computes Gemma 4 Unified exactly like the transformers reference (CPU, float32).

One vLLM engine for the whole module. Image sizes and audio content are drawn from a seed chosen per
run (printed; set PARITY_SEED to replay), so parity is checked on inputs nobody picked in advance;
the audio lengths hit the frame-boundary cases on purpose.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import soundfile as sf

from model.engine import EngineConfig
from tests.engines import running_engine
from tests.model.reference import (
    Case,
    Reference,
    assert_same,
    chat_prompt,
    from_vllm,
    random_audio,
    random_image,
    vllm_prompt,
)

MAX_NEW_TOKENS = 12
SEED = int(os.environ.get("PARITY_SEED", np.random.SeedSequence().entropy % 2**31))
WINDOW_SAMPLES = 750 * 640  # the tiny checkpoint keeps the real 30 s audio window


def settings(checkpoint) -> EngineConfig:
    return EngineConfig(
        model=str(checkpoint), device="cpu", max_model_len=4096, max_images_per_prompt=4, max_audios_per_prompt=4
    )


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    # Test-only: lets `apply_model` ship a function to the engine worker (pickle over the engine's IPC).
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    with running_engine(settings(tiny_checkpoint)) as engine:
        yield engine


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return Reference(tiny_checkpoint)


@pytest.fixture(scope="module")
def rng():
    print(f"PARITY_SEED={SEED}")
    return np.random.default_rng(SEED)


def sampling():
    from vllm import SamplingParams

    return SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0, logprobs=5)


def check(llm, reference, cases: dict[str, Case]) -> None:
    """Run all cases in one vLLM batch (as production does) and compare each with the reference."""
    outputs = llm.generate([vllm_prompt(c) for c in cases.values()], sampling())
    for (label, case), output in zip(cases.items(), outputs, strict=True):
        assert_same(reference.run(case, MAX_NEW_TOKENS), from_vllm(output), f"{label} (PARITY_SEED={SEED})")


def test_text(llm, reference):
    check(
        llm,
        reference,
        {
            "short": Case(chat_prompt("Transcribe the audio.")),
            "long": Case(chat_prompt(" ".join(["The quick brown fox jumps over the lazy dog."] * 30))),
        },
    )


def test_one_image_at_many_shapes(llm, reference, rng):
    def h_w(lo, hi):
        return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))

    shapes = {
        "tiny": h_w(1, 40),
        "very_wide": (int(rng.integers(4, 12)), int(rng.integers(2500, 4000))),  # height rounds to 0
        "very_tall": (int(rng.integers(2500, 4000)), int(rng.integers(4, 12))),
        "wide": (int(rng.integers(40, 120)), int(rng.integers(600, 1500))),
        "over_budget": h_w(900, 1600),
        "random": h_w(30, 700),
    }
    cases = {
        f"{name} {h}x{w}": Case(chat_prompt("<image_soft_token>Read the page."), images=[random_image(rng, h, w)])
        for name, (h, w) in shapes.items()
    }
    # Documents use the large budgets; the budget is a per-request processor argument.
    doc = random_image(rng, *h_w(800, 1400))
    cases["budget 1120"] = Case(chat_prompt("<image_soft_token>Read."), images=[doc], max_soft_tokens=1120)
    cases["budget 70"] = Case(chat_prompt("<image_soft_token>Read."), images=[doc], max_soft_tokens=70)
    check(llm, reference, cases)


@pytest.mark.parametrize("remainder", [0, 1, 160, 161, 639])
def test_audio_frame_boundaries(llm, reference, rng, remainder):
    frames = int(rng.integers(5, 60))
    samples = frames * 640 + remainder
    check(
        llm,
        reference,
        {f"{samples} samples (% 640 = {remainder})": Case(chat_prompt("<audio_soft_token>Transcribe."), audios=[random_audio(rng, samples)])},
    )


def test_audio_exactly_the_window(llm, reference, rng):
    check(
        llm,
        reference,
        {"30 s": Case(chat_prompt("<audio_soft_token>Transcribe."), audios=[random_audio(rng, WINDOW_SAMPLES)])},
    )


def test_image_and_audio(llm, reference, rng):
    case = Case(
        chat_prompt("<image_soft_token><audio_soft_token>Does the audio match the page?"),
        images=[random_image(rng, int(rng.integers(50, 400)), int(rng.integers(50, 400)))],
        audios=[random_audio(rng, int(rng.integers(3000, 40000)))],
    )
    check(llm, reference, {"image+audio": case})


def test_several_images_and_clips_longer_than_sliding_window(llm, reference, rng):
    images = [random_image(rng, int(rng.integers(60, 500)), int(rng.integers(60, 500))) for _ in range(3)]
    audios = [random_audio(rng, int(rng.integers(20_000, 90_000))) for _ in range(2)]
    case = Case(
        chat_prompt(
            "First page <image_soft_token> then a clip <audio_soft_token> second page <image_soft_token>"
            " another clip <audio_soft_token> last page <image_soft_token> Summarise everything."
        ),
        images=images,
        audios=audios,
    )
    got = llm.generate([vllm_prompt(case)], sampling())[0]
    assert len(got.prompt_token_ids) > 4 * 128  # several sliding windows (128 in the tiny model)
    assert_same(reference.run(case, MAX_NEW_TOKENS), from_vllm(got), f"multi (PARITY_SEED={SEED})")


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav_b64(waveform: np.ndarray) -> str:
    buf = io.BytesIO()
    sf.write(buf, waveform, 16_000, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode()


def test_chat_path_with_data_urls_and_input_audio(llm, reference, rng):
    image = random_image(rng, int(rng.integers(40, 300)), int(rng.integers(40, 300)))
    audio = random_audio(rng, int(rng.integers(10_000, 60_000)))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": _data_url(image)}},
                {"type": "input_audio", "input_audio": {"data": _wav_b64(audio), "format": "wav"}},
                {"type": "text", "text": "What do you see and hear?"},
            ],
        }
    ]
    got = llm.chat(messages, sampling(), chat_template_content_format="openai")[0]

    hf_messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What do you see and hear?"}]}
    ]
    prompt = reference.processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=False)
    assert_same(
        reference.run(Case(prompt, images=[image], audios=[audio]), MAX_NEW_TOKENS),
        from_vllm(got),
        f"chat (PARITY_SEED={SEED})",
    )


# -- the project's multimodal embedding is batched, with the same numbers as upstream's loop ------


def _compare_batched_embedding(model):
    """Runs inside the engine's worker: ours (one pass) vs upstream's per-image loop."""
    import torch
    from vllm.model_executor.models.gemma4_unified import Gemma4UnifiedForConditionalGeneration as Upstream

    gen = torch.Generator().manual_seed(1234)
    counts = [280, 17, 1, 96, 280]  # valid patches per image; each padded to 280 like the processor does
    values, positions = [], []
    for n in counts:
        v = torch.zeros(280, 6912)
        v[:n] = torch.rand(n, 6912, generator=gen)
        p = torch.full((280, 2), -1, dtype=torch.long)
        p[:n, 0] = torch.arange(n) % 23
        p[:n, 1] = torch.arange(n) // 23
        values.append(v)
        positions.append(p)
    inputs = {"pixel_values": torch.stack(values), "pixel_position_ids": torch.stack(positions)}
    with torch.no_grad():
        ours = model._process_image_input(inputs)
        theirs = Upstream._process_image_input(model, inputs)
    return (
        [list(t.shape) for t in ours],
        [list(t.shape) for t in theirs],
        max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)),
        type(model).__name__,
    )


def test_batched_image_embedding_matches_upstream_loop(llm):
    [(ours, theirs, max_diff, cls)] = llm.apply_model(_compare_batched_embedding)
    assert cls == "Gemma4UnifiedExactForConditionalGeneration"
    assert ours == theirs == [[n, 64] for n in (280, 17, 1, 96, 280)]
    assert max_diff <= 1e-5, max_diff


# -- bad input to the model layer fails with a clear error --------------------------------------


def test_audio_over_the_window_is_refused(llm, rng):
    case = Case(chat_prompt("<audio_soft_token>Transcribe."), audios=[random_audio(rng, WINDOW_SAMPLES + 1)])
    with pytest.raises(Exception, match=r"exceeds the model's audio window of 30 s \(750 frames\)"):
        llm.generate([vllm_prompt(case)], sampling())


def test_image_of_zero_pixels_is_refused(llm):
    empty = np.zeros((0, 10, 3), dtype=np.uint8)
    case = Case(chat_prompt("<image_soft_token>Read."), images=[empty])
    with pytest.raises(Exception, match=r"has no content"):
        llm.generate([vllm_prompt(case)], sampling())


@pytest.mark.parametrize(
    "waveform, message",
    [
        (np.zeros(16000, dtype=np.int16), r"expected floating-point samples"),
        (np.full(16000, np.nan, dtype=np.float32), r"NaN or infinite"),
    ],
)
def test_bad_audio_is_refused(llm, waveform, message):
    case = Case(chat_prompt("<audio_soft_token>Transcribe."), audios=[waveform])
    with pytest.raises(Exception, match=message):
        llm.generate([vllm_prompt(case)], sampling())


def test_engine_still_serves_after_bad_input(llm, reference):
    check(llm, reference, {"after errors": Case(chat_prompt("Still alive?"))})


# -- pages prepared by model.inputs.pages (the batch job's and the endpoint's path) -----------------

PAGE_PROMPT = chat_prompt("<image_soft_token>Read.")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def documents(reference, rng):
    """label -> (file, budget, prepared page, reference answer on the original file): an A4 scan at
    300 dpi (2480x3508 JPEG) and odd shapes at 280 and 1120 tokens, and a shape the size function
    does not map to itself (200x1215 -> 960x144 at 70 tokens; 960x144 itself -> a larger size)."""
    from PIL import Image

    from jobs import samples
    from model.inputs import pages

    scan = samples.scan_page(300, seed=int(rng.integers(1000)))
    odd = _png(random_image(rng, int(rng.integers(900, 1400)), int(rng.integers(600, 1000))))
    wide = _png(random_image(rng, int(rng.integers(20, 45)), int(rng.integers(2000, 3000))))
    files = {
        "scan 300 dpi, 1120 tokens": (scan, 1120),
        "scan 300 dpi, 280 tokens": (scan, 280),
        "odd, 1120 tokens": (odd, 1120),  # under the target: enlarged
        "odd, 280 tokens": (odd, 280),
        "very wide, 280 tokens": (wide, 280),  # height rounds up to one patch row
        "200x1215, 70 tokens": (_png(random_image(rng, 200, 1215)), 70),
    }
    out = {}
    for label, (data, budget) in files.items():
        page = next(iter(pages.open_pages(data, "page", pages.PageGeometry(budget))))
        want = reference.run(Case(PAGE_PROMPT, images=[Image.open(io.BytesIO(data))], max_soft_tokens=budget),
                             MAX_NEW_TOKENS)
        out[label] = (data, budget, page, want)
    return out


def test_pages_prepared_for_the_model_match_the_reference_on_the_original(llm, documents):
    """Each page as the batch job ships it (an encoded PIL page, pickled; do_resize=False for pages
    already at their model size): prompt ids, greedy ids and logprobs equal the reference's on the
    original file."""
    import pickle

    from vllm import SamplingParams

    assert documents["scan 300 dpi, 1120 tokens"][2].form == "resized"
    assert documents["200x1215, 70 tokens"][2].form == "resized"
    prompts = [
        {"prompt": PAGE_PROMPT, "multi_modal_data": {"image": [pickle.loads(pickle.dumps(page.image))]},
         "mm_processor_kwargs": {"max_soft_tokens": budget, **page.processor_kwargs}}
        for _, budget, page, _ in documents.values()
    ]
    for (label, (_, _, _, want)), got in zip(documents.items(), llm.generate(prompts, sampling()), strict=True):
        assert_same(want, from_vllm(got), f"{label} (PARITY_SEED={SEED})")
    # The chat path the batch job and the endpoint use: vLLM's image_pil content part.
    for label in ("scan 300 dpi, 1120 tokens", "200x1215, 70 tokens"):
        _, budget, page, want = documents[label]
        messages = [{"role": "user", "content": [page.content_part(), {"type": "text", "text": "Read."}]}]
        chat = llm.chat(messages, SamplingParams(max_tokens=MAX_NEW_TOKENS, temperature=0.0),
                        chat_template_content_format="openai",
                        mm_processor_kwargs={"max_soft_tokens": budget, **page.processor_kwargs})[0]
        assert list(chat.outputs[0].token_ids) == want.output_ids, label


def test_page_pixels_match_the_reference_on_the_original(llm, reference, documents, rng):
    """The front end's cheap path (model.inputs.page_pixels: uint8 pixels at the model size, rescaled
    on the device): the same answers as the reference on the original file, in one batch with the
    same page twice (the second is served by the processor and prefix caches under its content id)
    and a page next to an audio clip (the clip still goes through the reference processor)."""
    from PIL import Image

    from model.inputs import pages
    from model.inputs.page_pixels import engine_prompt, page_pixels

    labels, prompts, wants = [], [], []
    for label, (_, budget, page, want) in documents.items():
        labels.append(label)
        prompts.append(engine_prompt(PAGE_PROMPT, page_pixels(page, pages.PageGeometry(budget))))
        wants.append(want)
    labels.append("scan 300 dpi, 1120 tokens, again")
    prompts.append(prompts[0])
    wants.append(wants[0])
    data, budget, page, _ = documents["odd, 280 tokens"]
    clip = random_audio(rng, int(rng.integers(3000, 40000)))
    with_audio = engine_prompt(chat_prompt("<image_soft_token><audio_soft_token>Match?"),
                               page_pixels(page, pages.PageGeometry(budget)))
    with_audio["multi_modal_data"]["audio"] = [(clip, 16_000)]
    labels.append("page + audio")
    prompts.append(with_audio)
    wants.append(reference.run(Case(with_audio["prompt"], images=[Image.open(io.BytesIO(data))], audios=[clip],
                                    max_soft_tokens=budget), MAX_NEW_TOKENS))
    for label, want, got in zip(labels, wants, llm.generate(prompts, sampling()), strict=True):
        assert_same(want, from_vllm(got), f"page pixels, {label} (PARITY_SEED={SEED})")


def test_the_front_end_passes_page_pixels_through_without_the_image_processor(llm, rng):
    """What the engine core receives: uint8 page pixels for a page array, the reference processor's
    float32 patches for a PIL page or when the request overrides the normalisation. A separate
    input processor on the engine's config, so nothing enters the engine's own processor cache
    without reaching the engine core."""
    import torch
    from PIL import Image
    from vllm import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    from model.inputs.page_pixels import PagePixels, engine_prompt

    front_end = InputProcessor(llm.llm_engine.vllm_config)
    array = rng.integers(0, 256, (288, 192, 3), dtype=np.uint8)  # 6x4 patches, never sent to the engine

    def fields(request: dict) -> dict:
        out = front_end.process_inputs("probe", request, SamplingParams(max_tokens=1), ("generate",))
        [feature] = out.mm_features
        return {key: (elem.data.dtype, tuple(elem.data.shape)) for key, elem in feature.data.items()}

    page = engine_prompt(PAGE_PROMPT, PagePixels.from_array(array, 280))
    assert fields(page) == {"page_pixels": (torch.uint8, (288, 192, 3))}
    pil = {**page, "multi_modal_data": {"image": Image.fromarray(array)}, "multi_modal_uuids": None}
    assert fields(pil) == {"pixel_values": (torch.float32, (280, 6912)),
                           "pixel_position_ids": (torch.int64, (280, 2))}
    override = {**page, "mm_processor_kwargs": {**page["mm_processor_kwargs"], "rescale_factor": 1 / 255}}
    assert set(fields(override)) == {"pixel_values", "pixel_position_ids"}


@pytest.mark.parametrize("array, budget, message", [
    (np.zeros((100, 130, 3), dtype=np.uint8), 280, r"image of 130x100 pixels is not at a model size for 280"),
    (np.zeros((1872, 1344, 3), dtype=np.uint8), 280, r"image of 1344x1872 pixels is not at a model size for 280"),
    (np.zeros((96, 144, 3), dtype=np.float32), 280, r"must be a page's uint8 RGB pixels .* got dtype float32"),
    (np.zeros((96, 144), dtype=np.uint8), 280, r"must be a page's uint8 RGB pixels .* shape \(96, 144\)"),
])
def test_a_malformed_page_array_is_refused(llm, array, budget, message):
    prompt = {"prompt": PAGE_PROMPT, "multi_modal_data": {"image": [array]},
              "mm_processor_kwargs": {"max_soft_tokens": budget, "do_resize": False}}
    with pytest.raises(Exception, match=message):
        llm.generate([prompt], sampling())


def test_do_resize_false_refuses_an_image_that_is_not_at_a_model_size(llm, rng):
    case = Case(chat_prompt("<image_soft_token>Read."), images=[random_image(rng, 100, 130)])
    prompt = vllm_prompt(case)
    prompt["mm_processor_kwargs"] = {"do_resize": False}
    with pytest.raises(Exception, match=r"not at a model size"):
        llm.generate([prompt], sampling())
