"""model.inputs.vad + model.inputs.audio_chunks: cuts land in the known pauses of a recording built from
the shipped speech clips, chunks fit the window, timestamps are true; fixed windows as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs import samples
from model.inputs import audio_chunks as ac
from model.inputs import vad
from model.inputs.audio_chunks import SAMPLE_RATE, SAMPLES_PER_FRAME, CheckpointAudio, Segmentation

DEMO = "model/checkpoints/demo_checkpoint"


@pytest.fixture(scope="module")
def recording():
    """90 s of the shipped digit strings with pauses of 0.35-3 s and faint noise."""
    return samples.speech_recording(90.0, seed=3, pauses=(0.35, 3.0))


def _inside(x: int, placed, tol: int = 160) -> bool:
    return any(s + tol < x < e - tol for s, e, _ in placed)


def test_detector_streams_exactly(recording):
    audio, _ = recording
    whole = vad.SpeechDetector()
    whole.feed(audio)
    blocks = vad.SpeechDetector()
    for i in range(0, len(audio), 7919):  # odd block sizes: frames straddle blocks
        blocks.feed(audio[i:i + 7919])
    assert len(whole.finish()) == -(-len(audio) // vad.FRAME)
    np.testing.assert_array_equal(whole.probabilities(), blocks.finish())


def test_regions_cover_each_string_and_nothing_else(recording):
    audio, placed = recording
    det = vad.SpeechDetector()
    det.feed(audio)
    regions = vad.speech_regions(det.finish(), len(audio))
    assert len(regions) == len(placed)
    for (rs, re_), (s, e, _) in zip(regions, placed):
        # Each region holds its string (within 30 ms at the edges) and at most 0.25 s more.
        assert rs <= s + 480 and re_ >= e - 480, ((rs, re_), (s, e))
        assert (re_ - rs) - (e - s) < 0.25 * SAMPLE_RATE


def test_region_rules_on_known_probabilities():
    frame_s = vad.FRAME / SAMPLE_RATE
    settings = vad.VadSettings(min_silence_s=0.2, min_speech_s=0.2, pad_start_s=0.0, pad_end_s=0.0)

    def probs(*runs):
        return np.concatenate([np.full(round(seconds / frame_s), p, np.float32) for p, seconds in runs])

    # A 0.1 s dip stays inside the region; a 0.5 s pause splits it; a 0.1 s blip is dropped.
    p = probs((0.0, 1.0), (0.9, 1.0), (0.0, 0.1), (0.9, 1.0), (0.0, 0.5), (0.9, 1.0), (0.0, 1.0), (0.9, 0.1), (0.0, 1.0))
    regions = vad.speech_regions(p, len(p) * vad.FRAME, settings)
    assert [(round(s / SAMPLE_RATE, 1), round(e / SAMPLE_RATE, 1)) for s, e in regions] == [(1.0, 3.1), (3.6, 4.6)]
    # Between the thresholds speech goes on (hysteresis); pads never leave the recording.
    p = probs((0.9, 0.5), (0.4, 1.0), (0.9, 0.5))
    assert vad.speech_regions(p, len(p) * vad.FRAME, vad.VadSettings()) == [(0, len(p) * vad.FRAME)]


@pytest.mark.parametrize("pack", ["window", "utterance"])
def test_cuts_land_in_known_gaps(recording, pack):
    audio, placed = recording
    plan = ac.plan_audio(audio, Segmentation(pack=pack))
    spans = [span for c in plan.chunks for span in c.spans]
    assert spans == sorted(spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlap
    for s, e in spans:
        assert not _inside(s, placed) and not _inside(e, placed), (s, e)
    for s, e, _ in placed:  # every string is sent whole, inside one chunk
        owners = [c.index for c in plan.chunks for a, b in c.spans if a <= s + 160 and b >= e - 160]
        assert len(owners) == 1, (s, e)
    if pack == "utterance":
        assert len(plan.chunks) == len(placed)
    else:
        assert len(plan.chunks) < len(placed) / 3
    # Timestamps: true positions, monotonic, inside the recording; chunks fit the window.
    starts = [c.start_s for c in plan.chunks]
    assert starts == sorted(starts) and plan.chunks[0].start_s >= 0 and plan.chunks[-1].end_s <= len(audio) / SAMPLE_RATE
    assert all(c.num_samples <= 750 * SAMPLES_PER_FRAME for c in plan.chunks)
    speech = sum(e - s for s, e, _ in placed) / SAMPLE_RATE
    assert speech <= plan.sent_s <= 1.15 * speech  # long silences are not sent


def test_chunk_audio_is_the_spans_back_to_back(recording):
    audio, _ = recording
    plan = ac.plan_audio(audio, Segmentation(pack="window"))
    chunk = next(c for c in plan.chunks if len(c.spans) > 1)
    samples_ = ac.chunk_samples(audio, chunk)
    assert samples_.size == chunk.num_samples
    s, e = chunk.spans[1]
    offset = chunk.spans[0][1] - chunk.spans[0][0]
    np.testing.assert_array_equal(samples_[offset:offset + e - s], audio[s:e])
    streamed = list(ac.iter_chunk_audio((audio[i:i + 12345] for i in range(0, len(audio), 12345)), plan.chunks))
    assert [c for c, _ in streamed] == plan.chunks
    for (c, got), (_, want) in zip(streamed, ac.split_audio(audio, plan)):
        np.testing.assert_array_equal(got, want)


def test_speech_without_pause_is_cut_at_its_quietest_points():
    """Strings 0.1 s apart (no pause the VAD splits at) for 70 s: one region, cut at the 0.1 s gaps."""
    audio, placed = samples.speech_recording(70.0, seed=5, noise=0.002, pauses=(0.1, 0.1))
    plan = ac.plan_audio(audio, Segmentation(pack="utterance"), checkpoint=CheckpointAudio(frames=750))
    assert len(plan.chunks) >= 3
    for a, b in zip(plan.chunks, plan.chunks[1:]):
        assert a.end_sample == b.start_sample  # contiguous: only the quiet point between them
        assert not _inside(a.end_sample, placed, tol=0), a.end_sample / SAMPLE_RATE
        assert 15.0 <= a.num_samples / SAMPLE_RATE <= 30.0


def test_the_demo_recording_is_cut_into_its_strings():
    """The shipped 74 s recording (8-bit FLAC, 21 strings, model.checkpoints.demo.recording) becomes one
    chunk per string, each whole, every cut in a pause. Silero's probability dips under its exit
    threshold for 0.3 s inside "4 6 4 3" there: the signal is not quiet, so the regions are joined."""
    from model.checkpoints import demo
    from model.inputs import media

    index, flac = demo.recording()
    audio = media.decode_audio(flac)
    plan = ac.plan_audio(audio, checkpoint=ac.checkpoint_audio(DEMO))
    assert all(c.end_sample <= d.start_sample for c, d in zip(plan.chunks, plan.chunks[1:]))
    placed = [(round(u["start_s"] * SAMPLE_RATE), round(u["end_s"] * SAMPLE_RATE), u["text"]) for u in index["utterances"]]
    assert len(plan.chunks) == len(placed)
    for chunk, (s, e, _) in zip(plan.chunks, placed):
        # Whole (within 30 ms of its edges, where the index's bounds keep the faintest tails).
        assert len(chunk.spans) == 1 and chunk.start_sample <= s + 480 and chunk.end_sample >= e - 480
    speech = sum(e - s for s, e, _ in placed) / SAMPLE_RATE
    assert plan.sent_s <= 1.1 * speech


def test_a_gap_that_is_not_quiet_joins_its_regions():
    hop = ac.ENERGY_HOP
    energy = np.full(600, 0.001, np.float32)  # 6 s at the floor
    energy[100:200] = energy[230:330] = energy[400:500] = 0.1  # three regions of speech
    energy[200:230] = 0.008  # a 0.3 s gap 22 dB under the speech: a dip, not a pause
    regions = [(100 * hop, 200 * hop), (230 * hop, 330 * hop), (400 * hop, 500 * hop)]
    assert ac.confirm_pauses(regions, energy, pad_s=0.0) == [(100 * hop, 330 * hop), (400 * hop, 500 * hop)]
    energy[200:230] = 0.0015  # near the floor: a pause
    assert ac.confirm_pauses(regions, energy, pad_s=0.0) == regions


def test_silence_and_noise_have_no_chunks():
    rng = np.random.default_rng(0)
    for audio in (np.zeros(20 * SAMPLE_RATE, np.float32), rng.normal(0, 0.01, 20 * SAMPLE_RATE).astype(np.float32)):
        plan = ac.plan_audio(audio)
        assert plan.chunks == [] and plan.sent_s == 0 and plan.duration_s == 20.0
        assert ac.stitch(plan.chunks, []) == ("", [])
    with pytest.raises(ValueError, match="no samples"):
        ac.plan_audio(np.zeros(0, np.float32))


def test_checkpoint_declares_window_and_packing(tmp_path, tiny_checkpoint):
    demo = ac.checkpoint_audio(DEMO)
    assert demo == CheckpointAudio(frames=175, pack="utterance") and demo.window_s == 7.0
    assert ac.checkpoint_audio(tiny_checkpoint) == CheckpointAudio(750, "window")
    assert ac.checkpoint_audio(tmp_path / "not-a-dir") == CheckpointAudio()
    # The demo model's processor (what vLLM loads) reads the same window and ignores the packing key.
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(DEMO).audio_seq_length == 175
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "processor_config.json").write_text(json.dumps({"audio_seq_length": 10, "audio_chunking": "all"}))
    with pytest.raises(ValueError, match="audio_chunking"):
        ac.checkpoint_audio(bad)


def test_window_limits():
    assert Segmentation().max_samples(175) == 175 * SAMPLES_PER_FRAME
    assert Segmentation(max_chunk_s=10.01).max_samples(750) == 250 * SAMPLES_PER_FRAME  # whole frames
    with pytest.raises(ValueError, match="exceeds the model's audio window"):
        Segmentation(max_chunk_s=8).max_samples(175)
    for bad in (dict(mode="whisper"), dict(pack="all"), dict(max_chunk_s=0.5)):
        with pytest.raises(ValueError):
            Segmentation(**bad)
    from model.gemma4_unified import AudioTooLongError, check_audio_window

    assert check_audio_window(750 * SAMPLES_PER_FRAME, 750) == 750  # the model class agrees on the limit
    with pytest.raises(AudioTooLongError):
        check_audio_window(750 * SAMPLES_PER_FRAME + 1, 750)


# -- fixed windows (mode="fixed") -----------------------------------------------------------------


def test_fixed_windows_overlap_and_cover_everything():
    plan = ac.plan_audio(np.zeros(70 * SAMPLE_RATE, np.float32), Segmentation(mode="fixed"))
    assert [(c.start_s, c.end_s) for c in plan.chunks] == [(0.0, 30.0), (28.0, 58.0), (56.0, 70.0)]
    assert plan.sent_s == 74.0
    for n in (480_001, 16000 * 58 + 7, 16000 * 3600):
        chunks = ac.fixed_chunks(n, max_samples=20 * SAMPLE_RATE, overlap_s=1.5)
        assert chunks[0].start_sample == 0 and chunks[-1].end_sample == n
        assert all(b.start_sample < a.end_sample for a, b in zip(chunks, chunks[1:]))
        assert all(c.start_sample % SAMPLES_PER_FRAME == 0 for c in chunks)
    with pytest.raises(ValueError):
        ac.fixed_chunks(16000 * 100, max_samples=10 * SAMPLE_RATE, overlap_s=5)


def test_stitch_dedupes_only_where_chunks_overlap():
    fixed = ac.fixed_chunks(70 * SAMPLE_RATE, max_samples=30 * SAMPLE_RATE)
    texts = ["the meeting started at nine and we", "And we reviewed the budget, then", "budget then closed."]
    text, segments = ac.stitch(fixed, texts)
    assert text == "the meeting started at nine and we reviewed the budget, then closed."
    assert [s.start_s for s in segments] == [0.0, 28.0, 56.0] and segments[2].text == "closed."
    assert ac.overlap_words("a b c", "c d") == 0 and ac.overlap_words("x two three", "two three four") == 2
    # VAD chunks do not overlap: a repeated number is said twice and kept twice.
    vad_chunks = [ac.Chunk(0, ((0, 32000),)), ac.Chunk(1, ((48000, 80000), (96000, 120000)))]
    text, segments = ac.stitch(vad_chunks, ["4 7 1 9", " 1 9 \n 2 "])
    assert text == "4 7 1 9 1 9 2" and [s.text for s in segments] == ["4 7 1 9", "1 9 2"]
    assert (segments[1].start_s, segments[1].end_s) == (3.0, 7.5)
