"""The demo recipe's speech stream (model/checkpoints/train_demo.py): deterministic for a seed, short digit
strings first (the length curriculum), held-out texts never drawn.

The bank is made of the two real spoken digit strings shipped in model/checkpoints/demo_assets/ (no espeak-ng
needed); training itself is not run here (about an hour on 2 cores, see docs/demo-model.md).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from model.checkpoints import demo, demo_data, train_demo
from model.inputs.media import decode_audio


def write_bank(out: pathlib.Path) -> pathlib.Path:
    """A speech bank in demo_data's format (one FLAC + JSON index) from the shipped clips."""
    clips = []
    for stem, _, voice in demo.SAMPLE_SPEECH:
        text, flac = demo.speech_clip(stem)
        clips.append(dict(kind="digits", text=text, audio=decode_audio(flac), **voice))
    return demo_data.save_audio_bank(out, clips)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """(processor dir, bank dir, tokenizer) as the recipe's workers see them."""
    root = tmp_path_factory.mktemp("speech")
    processor = train_demo.build_demo_processor()
    processor.save_pretrained(root / "processor")
    return str(root / "processor"), str(write_bank(root / "bank")), processor.tokenizer


def draw(stream: train_demo.SampleStream, n: int) -> list[tuple[dict, np.ndarray]]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_speech_stream_is_deterministic_and_starts_with_short_strings(speech):
    processor_dir, bank, tokenizer = speech

    def stream(seed: int) -> train_demo.SampleStream:
        # batch 4, lengths grow over 8 batches: 3 digits at batch 0 up to 8 at batch 8
        return train_demo.SampleStream(processor_dir, "audio", seed, frozenset(), bank, 4, 8)

    a, b, other = draw(stream(3), 48), draw(stream(3), 48), draw(stream(4), 48)
    for (enc_a, ids_a), (enc_b, ids_b) in zip(a, b):
        assert np.array_equal(ids_a, ids_b)
        assert np.array_equal(enc_a["input_features"], enc_b["input_features"])
    assert any(
        enc_a["input_features"].shape != enc_o["input_features"].shape
        or not np.array_equal(enc_a["input_features"], enc_o["input_features"])
        for (enc_a, _), (enc_o, _) in zip(a, other)
    )

    texts = [tokenizer.decode(ids[:-1]).strip() for _, ids in a]
    assert set(texts) == {"4 7 1 9 2 0 6", "8 3 5 0 2"}
    # Batches 0-5 allow at most 6 digits: only the 5-digit string (the shortest the bank has).
    assert set(texts[:24]) == {"8 3 5 0 2"}
    assert "4 7 1 9 2 0 6" in texts[24:]
    # Every draw of a clip is augmented differently (shift, gain, speed, noise).
    first = [enc["input_features"] for (enc, _), t in zip(a, texts) if t == "8 3 5 0 2"][:2]
    assert first[0].shape != first[1].shape or not np.array_equal(first[0], first[1])


def test_speech_stream_never_draws_held_out_texts(speech):
    processor_dir, bank, tokenizer = speech
    held_out = frozenset({"8 3 5 0 2"})
    samples = draw(train_demo.SampleStream(processor_dir, "audio", 0, held_out, bank, 4, 0), 24)
    assert {tokenizer.decode(ids[:-1]).strip() for _, ids in samples} == {"4 7 1 9 2 0 6"}
