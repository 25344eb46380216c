"""/v1/audio/transcriptions through the real endpoint: a 70 s recording of the shipped speech clips is
cut at its pauses by the shared model.inputs.audio_chunks code, with true timestamps; formats json,
text, srt, vtt (read back with real parsers, through the openai client) and verbose_json."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests

from jobs import samples
from model.inputs import audio_chunks, media
from tests.serving.conftest import KEY_A, wav_bytes

MAX_TOKENS = 24  # short answers keep the test fast; the default is the batch pipeline's 512


@pytest.fixture(scope="module")
def recording():
    return samples.speech_recording(70.0, seed=11)


@pytest.fixture(scope="module")
def long_clip(recording) -> bytes:
    return samples.wav_bytes(recording[0], 16000)


@pytest.fixture(scope="module")
def plan(endpoint, long_clip):
    audio = media.decode_audio(long_clip)
    return audio, audio_chunks.plan_audio(audio, checkpoint=audio_chunks.checkpoint_audio(endpoint.checkpoint))


@pytest.fixture(scope="module")
def verbose(endpoint, long_clip):
    return endpoint.client().audio.transcriptions.create(
        model=endpoint.model_id,
        file=("meeting.wav", long_clip),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        extra_body={"max_tokens": MAX_TOKENS},
    )


def test_70s_clip_is_cut_at_pauses_with_true_timestamps(verbose, plan, recording):
    _, placed = recording
    _, plan = plan
    assert verbose.duration == pytest.approx(70.0)
    segments = verbose.segments
    assert len(segments) == len(plan.chunks) >= 2
    assert [(s.start, s.end) for s in segments] == [
        (pytest.approx(c.start_s, abs=1e-3), pytest.approx(c.end_s, abs=1e-3)) for c in plan.chunks]
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:])) and segments[-1].end <= 70.0
    for start, end, _ in placed:  # every spoken string lies inside one segment
        assert sum(s.start <= start / 16000 and end / 16000 <= s.end for s in segments) == 1
    speech = sum(end - start for start, end, _ in placed) / 16000
    assert speech <= verbose.model_extra["sent_s"] < 1.15 * speech < 65.0  # the pauses were not sent
    assert verbose.text.strip()


def test_stitching_is_the_shared_one(verbose, plan):
    raw = [s.model_extra["raw_text"] for s in verbose.segments]
    text, pieces = audio_chunks.stitch(plan[1].chunks, raw)
    assert verbose.text == text
    assert [s.text for s in verbose.segments] == [p.text for p in pieces]


def test_each_segment_equals_a_chat_call_on_that_chunk(endpoint, plan, verbose):
    """Per chunk, the transcription is exactly what chat answers for the batch pipeline's messages
    (model.inputs.prompts) on the same samples (model.inputs.media decode + audio_chunks plan)."""
    from model.inputs import prompts

    audio, plan = plan
    client = endpoint.client()
    for (chunk, samples_), segment in zip(audio_chunks.split_audio(audio, plan), verbose.segments):
        messages = prompts.messages_for_item("transcribe", "audio", audio=samples_)
        answer = client.chat.completions.create(
            model=endpoint.model_id, messages=messages, max_tokens=MAX_TOKENS, temperature=0
        )
        assert answer.choices[0].message.content.strip() == segment.model_extra["raw_text"]


def test_srt_and_vtt_through_the_openai_client(endpoint, long_clip, verbose):
    import srt
    import webvtt

    client = endpoint.client()
    kwargs = dict(model=endpoint.model_id, file=("a.wav", long_clip), extra_body={"max_tokens": MAX_TOKENS})
    as_srt = client.audio.transcriptions.create(response_format="srt", **kwargs)
    as_vtt = client.audio.transcriptions.create(response_format="vtt", **kwargs)
    assert isinstance(as_srt, str) and isinstance(as_vtt, str)
    expected = [(s.start, s.end, " ".join(s.text.split())) for s in verbose.segments if s.text.strip()]
    cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content.replace("\n", " "))
            for c in srt.parse(as_srt)]
    assert cues == [(pytest.approx(a, abs=1e-3), pytest.approx(b, abs=1e-3), t) for a, b, t in expected]
    captions = webvtt.from_buffer(io.StringIO(as_vtt)).captions
    assert [(c.start_time.in_milliseconds() / 1000, c.text.replace("\n", " ")) for c in captions] == [
        (pytest.approx(a, abs=1e-3), t) for a, _, t in expected]


def test_silence_is_an_empty_transcript(endpoint):
    quiet = samples.wav_bytes(np.zeros(10 * 16000, np.float32), 16000)
    client = endpoint.client()
    kwargs = dict(model=endpoint.model_id, file=("quiet.wav", quiet))
    assert client.audio.transcriptions.create(**kwargs).text == ""
    verbose = client.audio.transcriptions.create(response_format="verbose_json", **kwargs)
    assert verbose.segments == [] and verbose.duration == pytest.approx(10.0) and verbose.text == ""
    assert client.audio.transcriptions.create(response_format="srt", **kwargs) == ""
    assert client.audio.transcriptions.create(response_format="vtt", **kwargs).strip() == "WEBVTT"


def test_json_and_text_formats(endpoint, long_clip, verbose):
    clip = long_clip
    client = endpoint.client()
    as_json = client.audio.transcriptions.create(
        model=endpoint.model_id, file=("a.wav", clip), extra_body={"max_tokens": MAX_TOKENS}
    )
    assert as_json.text == verbose.text
    as_text = client.audio.transcriptions.create(
        model=endpoint.model_id, file=("a.wav", clip), response_format="text", extra_body={"max_tokens": MAX_TOKENS}
    )
    assert as_text == verbose.text


def test_short_flac_upload(endpoint):
    import soxr

    speech, _ = samples.speech_recording(3.0, seed=2, pauses=(0.3, 0.5))
    flac = samples.wav_bytes(soxr.resample(speech, 16000, 44100), 44100, fmt="FLAC")
    r = endpoint.client().audio.transcriptions.create(
        model=endpoint.model_id, file=("clip.flac", flac), response_format="verbose_json",
        extra_body={"max_tokens": 4},
    )
    assert len(r.segments) == 1 and r.duration == pytest.approx(3.0, abs=1e-3)


@pytest.mark.parametrize(
    "files, data, needle",
    [
        ({"file": ("x.wav", b"this is not audio")}, {"model": "gemma-tiny"}, "audio"),
        ({"file": ("x.wav", b"")}, {"model": "gemma-tiny"}, "empty"),
        (None, {"model": "gemma-tiny"}, "file"),
        ({"file": ("x.wav", wav_bytes(1.0))}, {"model": "gemma-tiny", "response_format": "tsv"}, "response_format"),
        ({"file": ("x.wav", wav_bytes(1.0))}, {"model": "gemma-tiny", "temperature": "warm"}, "temperature"),
    ],
)
def test_bad_transcription_requests_are_400(endpoint, files, data, needle):
    r = requests.post(
        endpoint.base_url + "/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {KEY_A}"},
        files=files,
        data=data,
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"].lower()


def test_json_body_instead_of_multipart_is_400(endpoint):
    r = requests.post(
        endpoint.base_url + "/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {KEY_A}"},
        json={"file": base64.b64encode(wav_bytes(1.0)).decode()},
        timeout=60,
    )
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]


def test_transcription_needs_a_key(endpoint):
    with pytest.raises(openai.AuthenticationError):
        endpoint.client("bad-key").audio.transcriptions.create(model=endpoint.model_id, file=("a.wav", wav_bytes(1.0)))
