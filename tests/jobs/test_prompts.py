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
    DOCUMENT_PROMPT,
    TRANSCRIBE_PROMPT,
    count_media,
    messages_for_item,
    resolve_prompt,
)


def test_resolve_prompt():
    assert resolve_prompt("auto", "document") == DOCUMENT_PROMPT
    assert resolve_prompt(None, "audio") == TRANSCRIBE_PROMPT
    assert resolve_prompt("transcribe", "document") == TRANSCRIBE_PROMPT
    assert resolve_prompt("List the totals.", "document") == "List the totals."
    with pytest.raises(ValueError):
        resolve_prompt("   ", "audio")


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
    assert count_media(messages) == (1, 0)


def test_audio_message_is_lossless_float_wav():
    wave = samples.tone(1.3)
    messages = messages_for_item("transcribe", "audio", audio=wave, system="be brief")
    assert messages[0] == {"role": "system", "content": "be brief"}
    part = messages[1]["content"][0]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    back, sr = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])), dtype="float32")
    assert sr == 16000 and np.array_equal(back, wave)
    assert count_media(messages) == (0, 1)


def test_exactly_one_media_item():
    with pytest.raises(ValueError):
        messages_for_item("auto", "document")
