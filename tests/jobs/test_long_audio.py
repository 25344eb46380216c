"""A 4 h recording goes through the batch decode stage (VAD plan + chunk requests), and through the
endpoint's transcription stream, with bounded memory.

The recording (the shipped speech clips every 5-60 s, 16 kHz FLAC) is written block by block; the
decode stage runs in a fresh process (`tests.reliability.memprobe`: peak RSS from the kernel's
high-water mark), so nothing else in the session inflates or hides the figure. Its waveform alone
would be 921 MB of float32.
"""

from __future__ import annotations

import pytest
import soundfile as sf

from jobs import samples
from tests.reliability import memprobe

HOURS = 4.0
# Peak RSS growth over the process's baseline (numpy imported), imports of the decode stage included
# (pyarrow, boto3, onnxruntime: about 135 MiB). Measured: 139 MiB for 10 min, 172 MiB for 4 h.
BOUND_MIB = 200
PER_RECORDING_LENGTH_MIB = 48  # 4 h minus 10 min: the FLAC bytes (21 MB) + 32 ms VAD / 10 ms energy values


def decode_rows(path: str) -> dict:
    """What a decode task does with the file: every chunk request built, none kept."""
    from connectors.sources import ParquetColumns, file_source
    from connectors.storage import StorageConfig
    from jobs import stages
    from model.inputs.audio_chunks import Segmentation
    from model.inputs.media import MediaLimits

    ctx = stages.StageContext(run_id="r", attempt="a", task="auto", storage=StorageConfig(), limits=MediaLimits(),
                              parquet=ParquetColumns(), segmentation=Segmentation(), max_new_tokens=4)
    rows, largest, last = 0, 0, None
    for row in stages.decode_source(file_source(path), ctx):
        assert row["error"] is None, row["error"]
        rows += 1
        largest = max(largest, len(row["messages_json"]))
        assert last is None or row["start_s"] >= last  # in order, inside the recording
        last = row["end_s"]
    return {"rows": rows, "num_segments": row["num_segments"], "duration_s": row["duration_s"],
            "largest_request_mib": round(largest / 2**20, 2), "last_end_s": last}


def transcribe_rows(path: str) -> dict:
    """What the endpoint does with an upload (`serving.transcribe.transcribe_stream`, the real decode,
    VAD plan and chunk reads), the upload as an open file the way starlette spools it to disk. The
    engine call is a stand-in that returns the chunk's index: the memory under test is the replica's,
    and a real engine reading 4 h of speech would take far longer than a test may."""
    import asyncio

    from model.inputs.audio_chunks import CheckpointAudio, Segmentation
    from model.inputs.media import MediaLimits
    from serving import transcribe

    held = {"now": 0, "max": 0, "max_chunks": 0, "chunks": 0}

    async def infer(chunk, samples):
        held["now"] += samples.nbytes
        held["chunks"] += 1
        held["max"], held["max_chunks"] = max(held["max"], held["now"]), max(held["max_chunks"], held["chunks"])
        await asyncio.sleep(0.002)
        held["now"] -= samples.nbytes
        held["chunks"] -= 1
        return chunk.index

    with open(path, "rb") as upload:
        plan, results = asyncio.run(transcribe.transcribe_stream(
            upload, MediaLimits(), Segmentation(), CheckpointAudio(), 8, infer))
    assert results == list(range(len(plan.chunks)))  # every chunk once, in order
    starts = [c.start_s for c in plan.chunks]
    assert starts == sorted(starts) and plan.chunks[-1].end_s <= plan.duration_s
    return {"rows": len(results), "duration_s": plan.duration_s, "max_chunks_in_flight": held["max_chunks"],
            "max_samples_held_mib": round(held["max"] / 2**20, 2)}


def _write(path, block, blocks: int):
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16", format="FLAC") as out:
        for _ in range(blocks):
            out.write(block)
    return str(path)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """The same 10 min of speech, once and repeated to 4 h (16 kHz FLAC)."""
    folder = tmp_path_factory.mktemp("long_audio")
    block, placed = samples.speech_recording(600.0, seed=7, noise=0.0, pauses=(5.0, 60.0))
    return _write(folder / "ten.flac", block, 1), _write(folder / "four_hours.flac", block, int(HOURS * 6)), placed


def _measure(target: str, recordings) -> dict:
    """`target` on the 10 min and the 4 h recording, each in a fresh process: the 4 h result, with
    the peak growth bounded and hardly above the 10 min one's (memory does not follow the length)."""
    ten, four_hours, placed = recordings
    short = memprobe.measure(target, ten)
    out = memprobe.measure(target, four_hours, timeout=600)
    result = out["result"]
    assert result["duration_s"] == HOURS * 3600
    # Strings 5-60 s apart, packed into 30 s of speech per chunk: about ten per chunk, all emitted.
    strings = len(placed) * int(HOURS * 6)
    assert strings / 15 < result["rows"] < strings / 5
    assert out["growth_mib"] < BOUND_MIB, out
    assert out["growth_mib"] - short["growth_mib"] < PER_RECORDING_LENGTH_MIB, (short, out)
    print(f"{target} on 4 h: {result}, peak growth {out['growth_mib']} MiB (10 min: {short['growth_mib']} MiB)")
    return result


def test_four_hour_recording_streams_with_bounded_memory(recordings):
    result = _measure("tests.jobs.test_long_audio:decode_rows", recordings)
    # Each request at most a 30 s float32 WAV (2.44 MiB as base64), in order, inside the recording.
    assert result["rows"] == result["num_segments"]
    assert result["largest_request_mib"] < 2.5
    assert result["last_end_s"] <= HOURS * 3600


def test_four_hour_upload_streams_through_the_endpoint_with_bounded_memory(recordings):
    result = _measure("tests.jobs.test_long_audio:transcribe_rows", recordings)
    # At most max_transcription_concurrency (8) chunks of at most 30 s of float32 (1.83 MiB) held at once.
    assert result["max_chunks_in_flight"] <= 8 and result["max_samples_held_mib"] <= 8 * 1.84
