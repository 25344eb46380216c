"""model.inputs.prompts: task resolution and OpenAI content parts that round-trip losslessly."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from jobs import samples
from model.inputs.prompts import (
    DEFAULT_TASKS_FILE,
    DOCUMENT_PROMPT,
    MARKDOWN_PROMPT,
    TEXT_PROMPT,
    TRANSCRIBE_PROMPT,
    default_tasks,
    messages_for_item,
    resolve_prompt,
)


def test_resolve_prompt():
    assert resolve_prompt("auto", "document") == DOCUMENT_PROMPT == MARKDOWN_PROMPT
    assert resolve_prompt("markdown", "document") == resolve_prompt("document", "document") == MARKDOWN_PROMPT
    assert resolve_prompt("text", "document") == TEXT_PROMPT
    assert resolve_prompt(None, "audio") == TRANSCRIBE_PROMPT
    assert resolve_prompt("transcribe", "document") == TRANSCRIBE_PROMPT
    assert resolve_prompt("List the totals.", "document") == "List the totals."
    with pytest.raises(ValueError):
        resolve_prompt("   ", "audio")


def test_markdown_prompt_asks_for_what_document_parsers_return():
    for asked in ("markdown", "table", "LaTeX", "reading order", "no commentary"):
        assert asked in MARKDOWN_PROMPT


def test_checkpoint_declares_what_auto_means(tmp_path):
    assert default_tasks(tmp_path) == {"document": "markdown", "audio": "transcribe"}  # nothing declared
    (tmp_path / DEFAULT_TASKS_FILE).write_text('{"document": "text"}')
    defaults = default_tasks(tmp_path)
    assert defaults == {"document": "text", "audio": "transcribe"}
    assert resolve_prompt("auto", "document", defaults) == TEXT_PROMPT
    assert resolve_prompt("markdown", "document", defaults) == MARKDOWN_PROMPT  # explicit tasks stay
    (tmp_path / DEFAULT_TASKS_FILE).write_text('{"document": "poetry"}')
    with pytest.raises(ValueError, match="unknown task"):
        default_tasks(tmp_path)


def test_json_schema_and_anchor_text_shape_the_instruction():
    page = samples.text_page("hello")
    schema = {"type": "object", "properties": {"total": {"type": "integer"}}}
    text = messages_for_item("auto", "document", image=page, json_schema=schema)[0]["content"][-1]["text"]
    assert text.startswith("Extract") and text.endswith('Schema: {"type":"object","properties":{"total":{"type":"integer"}}}')
    custom = messages_for_item("Find the total.", "document", image=page, json_schema=schema)[0]["content"][-1]["text"]
    assert custom.startswith("Find the total.\nSchema: {")
    anchored = messages_for_item("auto", "document", image=page, anchor_text="Invoice 4521\n" * 1000)
    text = anchored[0]["content"][-1]["text"]
    assert "TEXT_LAYER_START\nInvoice 4521\n" in text and text.endswith(MARKDOWN_PROMPT)
    assert len(text) < 4000 + len(MARKDOWN_PROMPT) + 300  # the layer is capped


def test_image_message_is_lossless_png_data_url():
    page = samples.text_page("hello")
    messages = messages_for_item("auto", "document", image=page)
    assert messages[0]["role"] == "user"
    image_part, text_part = messages[0]["content"]
    assert text_part == {"type": "text", "text": DOCUMENT_PROMPT}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(page))


def test_audio_message_is_lossless_float_wav():
    wave = samples.tone(1.3)
    messages = messages_for_item("transcribe", "audio", audio=wave, system="be brief")
    assert messages[0] == {"role": "system", "content": "be brief"}
    part = messages[1]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    back, sr = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])), dtype="float32")
    assert sr == 16000 and np.array_equal(back, wave)
    assert [p["type"] for p in messages[1]["content"]] == ["input_audio", "text"]  # one clip, no image


def test_exactly_one_media_item():
    with pytest.raises(ValueError):
        messages_for_item("auto", "document")
