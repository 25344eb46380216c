"""The shipped demo checkpoint really reads and listens, through the project's vLLM registration
(real vLLM CPU engine, one start for the module) and the pipeline's own prompts and media decoding.

The known inputs: text lines rendered with Pillow's built-in font (no system font needed) and
digit strings spoken by espeak-ng, shipped as FLAC in model/checkpoints/demo_assets/ (no espeak-ng needed).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from model.checkpoints import demo, demo_data
from model.inputs.media import decode_audio
from model.inputs.prompts import TEXT_PROMPT, default_tasks, messages_for_item, resolve_prompt
from model.registration import ARCHITECTURE
from tests.engines import running_engine


@pytest.fixture(scope="module")
def demo_llm():
    from model.engine import EngineConfig

    settings = EngineConfig(
        model=str(demo.path(train_if_missing=False)),
        device="cpu",
        max_model_len=1024,
        max_images_per_prompt=1,
        max_audios_per_prompt=1,
    )
    with running_engine(settings) as engine:
        yield engine


def read(llm, messages: list[list[dict]]) -> list[str]:
    from vllm import SamplingParams

    outs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=48), chat_template_content_format="openai")
    return [o.outputs[0].text.strip() for o in outs]


def test_path_prints_the_shipped_checkpoint():
    out = subprocess.run([sys.executable, "-m", "model.checkpoints.demo", "--path"], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert path == str(demo.SHIPPED)
    config = json.loads((demo.SHIPPED / "config.json").read_text())
    # Runs the project's class through the plugin, and is faithful on the CPU attention backend.
    assert config["architectures"] == [ARCHITECTURE]
    assert config["text_config"].get("use_bidirectional_attention") is None


def test_checkpoint_declares_the_plain_text_task_it_was_trained_on():
    """`auto` asks the demo checkpoint the plain-text instruction (not the markdown default)."""
    defaults = default_tasks(demo.SHIPPED)
    assert defaults == demo_data.DEFAULT_TASKS == {"document": "text", "audio": "transcribe"}
    assert resolve_prompt("auto", "document", defaults) == TEXT_PROMPT == demo_data.DOCUMENT_PROMPT


def test_reads_rendered_lines_and_transcribes_spoken_digits(demo_llm):
    lines = [demo.SAMPLE_LINES[0], demo.SAMPLE_LINES[2]]
    speech = [demo.speech_clip(stem) for stem, _, _ in demo.SAMPLE_SPEECH]
    defaults = default_tasks(demo.SHIPPED)
    messages = [
        messages_for_item("auto", "document", image=demo.line_image(text, font_index=demo_data.BUILTIN_FONT),
                          defaults=defaults)
        for text in lines
    ]
    messages += [messages_for_item("auto", "audio", audio=decode_audio(flac), defaults=defaults) for _, flac in speech]
    got = read(demo_llm, messages)
    # Different inputs, different exact readings: the model reads them, it does not recite.
    assert got == lines + [text for text, _ in speech]


def _pipeline_requests(path, spec) -> list[tuple[list[dict], dict]]:
    """(chat messages, image processor kwargs) of each request the batch job builds for one input file,
    in order: its decode+prompt stage, then the request its `ray.data.llm` preprocess makes of a row."""
    from connectors.sources import file_source
    from connectors.storage import StorageConfig
    from jobs import stages
    from model.inputs.prompts import default_tasks as checkpoint_tasks

    ctx = stages.StageContext(
        run_id="demo-test", attempt="a", task=spec.output.task, storage=StorageConfig(), limits=spec.media_limits(),
        parquet=spec.parquet, segmentation=spec.audio.to_segmentation(), audio=spec.engine.checkpoint_audio(),
        max_new_tokens=spec.output.max_new_tokens,
        default_tasks=checkpoint_tasks(spec.engine.model), geometry=spec.engine.page_geometry())
    rows = list(stages.decode_source(file_source(str(path)), ctx))
    assert all(r["error"] is None for r in rows), rows
    requests = [stages.to_llm_request(r, spec.output.max_new_tokens) for r in sorted(rows, key=lambda r: r["segment_index"])]
    return [(r["messages"], r.get("mm_processor_kwargs") or {}) for r in requests]


def chat_each(llm, requests: list[tuple[list[dict], dict]]) -> list[str]:
    """Greedy readings of requests that may need different image processor kwargs (grouped by them)."""
    from vllm import SamplingParams

    got: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, (_, kwargs) in enumerate(requests):
        groups.setdefault(json.dumps(kwargs, sort_keys=True), []).append(i)
    for key, indexes in groups.items():
        outs = llm.chat([requests[i][0] for i in indexes], SamplingParams(temperature=0.0, max_tokens=48),
                        chat_template_content_format="openai", mm_processor_kwargs=json.loads(key) or None,
                        use_tqdm=False)
        for i, out in zip(indexes, outs):
            got[i] = out.outputs[0].text.strip()
    return got


def test_reads_the_main_jobs_demo_inputs(demo_llm, tmp_path):
    """What `make demo` feeds the job (jobs.samples.write_demo_inputs), through the job's own decode and
    prompt stage with the demo's settings: every page of the JPEG, the PDF and the TIFF and the WAV clip
    read exactly as the text they hold; so is each spoken string of the 74 s recording, in the chunks the
    job's own segmentation cuts at its pauses."""
    from jobs.samples import DEMO_PDF_DPI, write_demo_inputs
    from jobs.spec import JobSpec

    files = write_demo_inputs(tmp_path)
    spec = JobSpec(inputs=[str(tmp_path)], output={"uri": str(tmp_path / "out")}, engine={"model": str(demo.SHIPPED)},
                   pages={"pdf_dpi": DEMO_PDF_DPI})
    requests, wanted = [], []
    for name in ("receipt.jpg", "report.pdf", "delivery.tiff", "memo.wav"):
        texts = files[name][1].split("\n\n")
        made = _pipeline_requests(tmp_path / name, spec)
        assert len(made) == len(texts), name
        requests += made
        wanted += [(name, text) for text in texts]
    index, _ = demo.recording()
    assert index["seconds"] >= 70 and " ".join(u["text"] for u in index["utterances"]) == files["recording.flac"][1]
    made = _pipeline_requests(tmp_path / "recording.flac", spec)  # the job's own cuts at the pauses
    assert len(made) == len(index["utterances"]), "one chunk per spoken string"
    requests += made
    wanted += [("recording.flac", u["text"]) for u in index["utterances"]]
    got = chat_each(demo_llm, requests)
    misread = [(name, want, text) for (name, want), text in zip(wanted, got) if text != want]
    assert not misread, misread



def test_reads_phone_photos_and_heic_as_well_as_the_upright_jpegs(demo_llm, tmp_path):
    """Its own line layout as a phone saves it: JPEGs stored turned with EXIF orientation 3, 6 and 8, and
    HEIC (upright, and turned in the container). Through the job's decode and prompt stage and through the
    endpoint's media policy, each variant's character error rate equals the upright JPEGs'."""
    import asyncio
    import base64

    from jobs.spec import JobSpec
    from model.inputs.prompts import TEXT_PROMPT
    from serving.config import ServingConfig
    from serving.media_policy import MediaPolicy
    from tests import realfiles

    lines = demo.SAMPLE_LINES
    variants = {
        "upright.jpg": lambda image: realfiles.photo(image, 1),
        "o3.jpg": lambda image: realfiles.photo(image, 3),
        "o6.jpg": lambda image: realfiles.photo(image, 6),
        "o8.jpg": lambda image: realfiles.photo(image, 8),
        "upright.heic": lambda image: realfiles.heic(image, 1),
        "o6.heic": lambda image: realfiles.heic(image, 6),
    }
    spec = JobSpec(inputs=[str(tmp_path)], output={"uri": str(tmp_path / "out")}, engine={"model": str(demo.SHIPPED)})
    policy = MediaPolicy(ServingConfig(engine={"model": str(demo.SHIPPED), "device": "cpu"}))
    requests, keys = [], []
    for name, make in variants.items():
        for i, text in enumerate(lines):
            data = make(demo.line_image(text, font_index=demo_data.BUILTIN_FONT))
            path = tmp_path / f"{i}_{name}"
            path.write_bytes(data)
            (job_request,) = _pipeline_requests(path, spec)  # the batch job's own request
            url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": TEXT_PROMPT}]}]
            messages, kwargs = asyncio.run(policy.vet_request(messages, None))  # the endpoint's rewrite
            requests += [job_request, (messages, kwargs or {})]
            keys += [("job", name), ("endpoint", name)]
    got = chat_each(demo_llm, requests)
    readings: dict = {}
    for key, text in zip(keys, got):
        readings.setdefault(key, []).append(text)
    cers = {key: demo_data.cer(lines, hyps) for key, hyps in readings.items()}
    print("CER per path and variant:", cers)
    for path in ("job", "endpoint"):
        reference = cers[(path, "upright.jpg")]
        assert reference < 0.1, cers
        assert all(cers[(path, name)] == reference for name in variants), cers
