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


@pytest.fixture(scope="module")
def demo_llm():
    from vllm import LLM

    from model.engine import EngineSettings

    settings = EngineSettings(
        model=str(demo.path(train_if_missing=False)),
        device="cpu",
        max_model_len=1024,
        max_images_per_prompt=1,
        max_audios_per_prompt=1,
    )
    settings.apply_env()
    engine = LLM(**settings.vllm_kwargs())
    yield engine
    engine.llm_engine.engine_core.shutdown()


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
