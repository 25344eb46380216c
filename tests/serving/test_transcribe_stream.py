"""The endpoint's transcription stream (`serving.transcribe.transcribe_stream`) without an engine.

Real decode, VAD plan and chunk reads over a recording made of the demo's spoken strings; the chat
call per chunk is a coroutine the test controls, because what is under test is how many chunks are
read and in flight at once, which a real engine's timing would make nondeterministic. The same
stream against the real endpoint is tests/serving/test_transcription.py.
"""

from __future__ import annotations

import asyncio
import io

import pytest
import soundfile as sf

from jobs import samples
from model.inputs.audio_chunks import CheckpointAudio, Segmentation
from model.inputs.media import MediaError, MediaLimits
from serving import transcribe

DEMO_WINDOW = CheckpointAudio(175, "utterance")  # the demo checkpoint's: one spoken string per chunk


@pytest.fixture(scope="module")
def upload() -> tuple[bytes, int]:
    audio, placed = samples.speech_recording(60.0, seed=3, pauses=(0.6, 1.2))
    out = io.BytesIO()
    sf.write(out, audio, 16000, format="FLAC")
    return out.getvalue(), len(placed)


def _run(data: bytes, concurrency: int, infer):
    return asyncio.run(transcribe.transcribe_stream(
        io.BytesIO(data), MediaLimits(), Segmentation(), DEMO_WINDOW, concurrency, infer))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_chunks_run_concurrently_up_to_the_limit_and_come_back_in_order(upload, concurrency):
    data, strings = upload
    state = {"in_flight": 0, "most": 0, "started": []}

    async def infer(chunk, samples):
        state["in_flight"] += 1
        state["most"] = max(state["most"], state["in_flight"])
        state["started"].append(chunk.index)
        await asyncio.sleep(0.05 * (chunk.index % 3))  # later chunks may finish first
        state["in_flight"] -= 1
        assert samples.size == chunk.num_samples
        return f"text {chunk.index}"

    plan, results = _run(data, concurrency, infer)
    assert len(plan.chunks) == strings > concurrency
    assert results == [f"text {i}" for i in range(len(plan.chunks))]
    assert state["started"] == list(range(len(plan.chunks)))  # read and started in recording order
    assert state["most"] == concurrency


def test_a_failed_chunk_stops_reading_and_cancels_the_rest(upload):
    data, strings = upload
    started, cancelled = [], []

    async def infer(chunk, samples):
        started.append(chunk.index)
        if chunk.index == 2:
            raise RuntimeError("engine said no")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(chunk.index)
            raise

    with pytest.raises(RuntimeError, match="engine said no"):
        _run(data, 3, infer)
    assert started == [0, 1, 2] and sorted(cancelled) == [0, 1]  # nothing read past the failure


def test_a_corrupt_upload_is_a_media_error_before_any_chunk(upload):
    data, _ = upload
    calls = []

    async def infer(chunk, samples):
        calls.append(chunk.index)

    # The FLAC's second half overwritten: the header reads, the stream does not (the planning pass
    # reads the whole upload before any chunk is sent, so nothing is inferred).
    broken = data[: len(data) // 2] + b"\xff" * (len(data) - len(data) // 2)
    with pytest.raises(MediaError, match="corrupt"):
        _run(broken, 2, infer)
    assert calls == []
