"""model.inputs.audio_chunks: chunk plans fit the model's window; stitching removes only repeated words."""

from __future__ import annotations

import numpy as np
import pytest

from model.inputs.audio_chunks import (
    MAX_FRAMES,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    overlap_words,
    plan_chunks,
    split_audio,
    stitch,
)


def test_constants_match_the_model_class_window():
    # The vLLM class is the authority on the window; chunks must pass its check.
    from model.gemma4_unified import AudioTooLongError, check_audio_window

    assert check_audio_window(MAX_FRAMES * SAMPLES_PER_FRAME, MAX_FRAMES) == MAX_FRAMES
    with pytest.raises(AudioTooLongError):
        check_audio_window(MAX_FRAMES * SAMPLES_PER_FRAME + 1, MAX_FRAMES)
    for chunk in plan_chunks(70 * SAMPLE_RATE):
        check_audio_window(chunk.num_samples, MAX_FRAMES)


def test_short_clip_is_one_chunk():
    assert [(c.start_s, c.end_s) for c in plan_chunks(16000 * 30)] == [(0.0, 30.0)]
    assert len(plan_chunks(1)) == 1


def test_70s_clip_overlapping_frame_aligned_chunks():
    chunks = plan_chunks(70 * SAMPLE_RATE, overlap_s=2.0)
    assert [(c.start_s, c.end_s) for c in chunks] == [(0.0, 30.0), (28.0, 58.0), (56.0, 70.0)]
    for a, b in zip(chunks, chunks[1:]):
        assert a.end_sample - b.start_sample == 2 * SAMPLE_RATE  # the overlap
    assert all(c.start_sample % SAMPLES_PER_FRAME == 0 for c in chunks)
    assert all(c.num_samples <= MAX_FRAMES * SAMPLES_PER_FRAME for c in chunks)


def test_cover_every_sample_exactly_to_the_end():
    for n in (480_001, 16000 * 58, 16000 * 58 + 7, 16000 * 3600):
        chunks = plan_chunks(n, chunk_s=20, overlap_s=1.5)
        assert chunks[0].start_sample == 0 and chunks[-1].end_sample == n
        assert all(b.start_sample < a.end_sample for a, b in zip(chunks, chunks[1:]))  # no gaps


def test_split_audio_returns_views():
    audio = np.arange(16000 * 40, dtype=np.float32)
    parts = split_audio(audio)
    assert len(parts) == 2 and parts[1][1][0] == parts[1][0].start_sample


@pytest.mark.parametrize("bad", [dict(chunk_s=31), dict(chunk_s=10, overlap_s=5), dict(overlap_s=-1)])
def test_invalid_plans_refused(bad):
    with pytest.raises(ValueError):
        plan_chunks(16000 * 100, **bad)


def test_stitch_removes_repeated_boundary_words_only():
    chunks = plan_chunks(70 * SAMPLE_RATE)
    texts = ["the meeting started at nine and we", "And we reviewed the budget, then", "budget then closed."]
    text, pieces = stitch(chunks, texts)
    assert text == "the meeting started at nine and we reviewed the budget, then closed."
    assert [p.start_s for p in pieces] == [0.0, 28.0, 56.0]
    assert pieces[1].text == "reviewed the budget, then"
    assert pieces[2].text == "closed."
    # Single-word coincidences are kept: a lone repeated word may be real speech.
    assert overlap_words("a b c", "c d") == 0
    assert overlap_words("one two three", "four five") == 0
    assert overlap_words("x two three", "two three four") == 2


def test_stitch_handles_empty_chunks():
    chunks = plan_chunks(70 * SAMPLE_RATE)
    text, pieces = stitch(chunks, ["hello there", "", "hello there friend"])
    assert text == "hello there friend"
