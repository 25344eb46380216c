"""/v1/audio/transcriptions through the real endpoint: a 70 s recording is chunked and stitched by the
shared model.inputs.audio_chunks code, with segment timestamps; formats json, text and verbose_json."""

from __future__ import annotations

import base64

import openai
import pytest
import requests

from model.inputs import audio_chunks
from tests.serving.conftest import KEY_A, wav_bytes

MAX_TOKENS = 24  # short answers keep the test fast; the default is the batch pipeline's 512


@pytest.fixture(scope="module")
def long_clip() -> bytes:
    return wav_bytes(70.0, sr=16000, seed=11)


@pytest.fixture(scope="module")
def verbose(endpoint, long_clip):
    return endpoint.client().audio.transcriptions.create(
        model=endpoint.model_id,
        file=("meeting.wav", long_clip),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        extra_body={"max_tokens": MAX_TOKENS},
    )


def test_70s_clip_is_chunked_with_timestamps(verbose):
    plan = audio_chunks.plan_chunks(70 * 16000)
    assert len(plan) == 3  # 0-30 s, 28-58 s, 56-70 s
    assert verbose.duration == pytest.approx(70.0)
    segments = verbose.segments
    assert [(s.start, s.end) for s in segments] == [(pytest.approx(c.start_s), pytest.approx(c.end_s)) for c in plan]
    assert verbose.text.strip()


def test_stitching_is_the_shared_one(verbose):
    plan = audio_chunks.plan_chunks(70 * 16000)
    raw = [s.model_extra["raw_text"] for s in verbose.segments]
    text, pieces = audio_chunks.stitch(plan, raw)
    assert verbose.text == text
    assert [s.text for s in verbose.segments] == [p.text for p in pieces]


def test_each_segment_equals_a_chat_call_on_that_chunk(endpoint, long_clip, verbose):
    """Per chunk, the transcription is exactly what chat answers for the batch pipeline's messages
    (model.inputs.prompts) on the same samples (model.inputs.media decode + model.inputs.audio_chunks split)."""
    from model.inputs import media, prompts

    audio = media.decode_audio(long_clip)
    client = endpoint.client()
    for (chunk, samples), segment in zip(audio_chunks.split_audio(audio), verbose.segments):
        messages = prompts.messages_for_item("transcribe", "audio", audio=samples)
        answer = client.chat.completions.create(
            model=endpoint.model_id, messages=messages, max_tokens=MAX_TOKENS, temperature=0
        )
        assert answer.choices[0].message.content.strip() == segment.model_extra["raw_text"]


def test_json_and_text_formats(endpoint, verbose):
    clip = wav_bytes(70.0, sr=16000, seed=11)
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
    from jobs.samples import tone, wav_bytes as encode

    flac = encode(tone(3.0, 44100, seed=2), 44100, fmt="FLAC")
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
        ({"file": ("x.wav", wav_bytes(1.0))}, {"model": "gemma-tiny", "response_format": "srt"}, "response_format"),
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
