"""End to end: real S3 endpoint (moto server on loopback), local Ray, ray.data.llm with the vLLM CPU
engine and the tiny checkpoint. One job run per module (engine starts are the expensive part); the
tests below assert on its tables and summary. The tiny model emits random tokens, so the tests check
accounting, structure and determinism (token ids equal a direct vLLM call), not text. Audio is made of
the demo's shipped speech clips, so the VAD finds its strings (model.inputs.audio_chunks)."""

from __future__ import annotations

import io
import json

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.storage import StorageConfig
from jobs import samples
from jobs.pipeline import run_job
from jobs.spec import JobSpec
from model.inputs import media, prompts
from tests.engines import running_engine

RUN_DATE = "2026-11-22"
CUSTOM_PROMPT = "List every number on the page, one per line, with the words that label it."

GOOD_MIXED = {  # name -> expected number of segments
    "invoice.png": 1,
    "letter.jpg": 1,
    "report.tiff": 2,
    "report.pdf": 3,
    "memo.wav": 1,
    "meeting.flac": None,  # 70 s of strings and pauses -> VAD chunks (MEETING_PLAN)
}
BAD_MIXED = {  # name -> part of the error message
    "broken.pdf": "PDF is corrupt",
    "empty.png": "empty (0 bytes)",
    "not-audio.wav": "not a valid WAV",
    "truncated.png": "truncated or corrupt",
    "notes.txt": "unsupported file type",
}


def _meeting() -> bytes:
    return samples.wav_bytes(samples.speech_recording(70.0, seed=3)[0], 16000, fmt="FLAC")


def _meeting_plan():
    from model.inputs import audio_chunks

    return audio_chunks.plan_audio(media.decode_audio(_meeting()))


def _put_objects(endpoint: str) -> None:
    import soxr

    s3 = boto3.client("s3", endpoint_url=endpoint)
    for bucket in ("scans", "tables", "out"):
        s3.create_bucket(Bucket=bucket)
    png = samples.png_page(samples.SAMPLE_TEXTS[0])
    speech, _ = samples.speech_recording(5.0, seed=1, pauses=(0.5, 3.0))
    stereo44 = soxr.resample(speech, 16000, 44100).astype("float32")
    objects = {
        "mixed/invoice.png": png,
        "mixed/letter.jpg": samples.jpeg_page(samples.SAMPLE_TEXTS[2]),
        "mixed/report.tiff": samples.tiff_doc(samples.SAMPLE_TEXTS[:2]),
        "mixed/report.pdf": samples.pdf_doc(samples.SAMPLE_TEXTS[1:4]),
        "mixed/memo.wav": samples.wav_bytes(stereo44.reshape(-1, 1).repeat(2, axis=1), 44100),
        "mixed/meeting.flac": _meeting(),
        "mixed/silence.wav": samples.wav_bytes(np.zeros(12 * 16000, np.float32), 16000),
        "mixed/broken.pdf": b"%PDF-1.7\ncut off during upload",
        "mixed/empty.png": b"",
        "mixed/not-audio.wav": b"this is a text file renamed to .wav\n" * 4,
        "mixed/truncated.png": png[: len(png) // 2],
        "mixed/notes.txt": b"meeting notes, plain text\n",
        "other/receipt.png": samples.png_page(samples.SAMPLE_TEXTS[3]),
    }
    for key, body in objects.items():
        s3.put_object(Bucket="scans", Key=key, Body=body)
    bytes_table = pa.table({
        "id": ["p1", "p2", "p3", "p4"],
        "image": [png, png, None, samples.wav_bytes(samples.speech_recording(4.0, seed=5, pauses=(0.3, 1.0))[0])],
        "prompt": [None, CUSTOM_PROMPT, None, None],
    })
    uri_table = pa.table({"uri": ["s3://scans/other/receipt.png", "s3://scans/other/missing.png"]})
    for key, table in (("bytes.parquet", bytes_table), ("uris.parquet", uri_table)):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        s3.put_object(Bucket="tables", Key=key, Body=buf.getvalue())


def _read(fs, path: str) -> pa.Table:
    import pyarrow.dataset as pads

    return pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="module")
def job(s3_endpoint, tiny_checkpoint, ray_local):
    _put_objects(s3_endpoint)
    spec = JobSpec(
        inputs=["s3://scans/mixed/", "s3://tables/bytes.parquet", "s3://tables/uris.parquet"],
        output={"uri": "s3://out/nightly", "max_new_tokens": 4, "subtitles": "srt"},
        engine={"model": str(tiny_checkpoint), "max_model_len": 4096},
        pages={"pdf_dpi": 60},
        run={"batch_size": 4, "error_threshold": 0.5, "run_date": RUN_DATE},
        storage=StorageConfig(endpoint_url=s3_endpoint),
    ).resolve()
    summary = run_job(spec)
    fs = spec.storage.s3()
    sources = _read(fs, "out/nightly/sources")
    segments = _read(fs, "out/nightly/segments").to_pandas()
    return dict(spec=spec, summary=summary, sources=sources.to_pandas(), source_rows=sources.to_pylist(),
                segments=segments, fs=fs)


def test_every_input_is_exactly_one_source_row(job):
    sources = job["sources"]
    assert len(sources) == 12 + 4 + 2
    assert sources.source_id.is_unique
    records = job["source_rows"]  # Arrow rows: nulls stay None (pandas shows them as NaN)
    files = {r["source_uri"].rsplit("/", 1)[-1]: r for r in records
             if r["source_uri"].startswith("s3://scans/mixed/")}
    assert set(files) == set(GOOD_MIXED) | set(BAD_MIXED) | {"silence.wav"}
    for name, n in GOOD_MIXED.items():
        row = files[name]
        n = len(_meeting_plan().chunks) if n is None else n
        assert (row["status"], row["error"], row["num_segments"]) == ("ok", None, n), name
        assert row["text"] is not None and row["output_tokens"] > 0
    # A recording without speech: an ok row with an empty transcript, nothing sent to the model.
    silence = files["silence.wav"]
    assert (silence["status"], silence["text"], silence["num_segments"], silence["input_tokens"]) == ("ok", "", 0, 0)
    assert silence["duration_s"] == pytest.approx(12.0) and silence["modality"] == "audio"
    for name, message in BAD_MIXED.items():
        row = files[name]
        assert row["status"] == "error" and message in row["error"], (name, row["error"])
        assert row["text"] is None and row["num_segments"] == 0
    assert set(sources.run_date.astype(str)) == {RUN_DATE}
    assert set(sources.run_id) == {job["spec"].run.run_id}


def test_segments_match_pages_and_chunks(job):
    segments, sources = job["segments"], job["sources"]
    assert segments.groupby("source_id").size().to_dict() == {
        sid: n for sid, n in zip(sources.source_id, sources.num_segments) if n > 0}
    assert not segments.duplicated(["source_id", "segment_index"]).any()
    by_name = lambda name: segments[segments.source_uri == f"s3://scans/mixed/{name}"].sort_values("segment_index")
    assert by_name("report.pdf").page.tolist() == [1, 2, 3]
    assert by_name("report.tiff").page.tolist() == [1, 2]
    meeting, plan = by_name("meeting.flac"), _meeting_plan()
    assert list(zip(meeting.start_s, meeting.end_s)) == [(c.start_s, c.end_s) for c in plan.chunks]
    assert meeting.page.isna().all() and (meeting.status == "ok").all()
    src = sources[sources.source_uri == "s3://scans/mixed/meeting.flac"].iloc[0]
    assert src.modality == "audio" and src.duration_s == pytest.approx(70.0) and src.num_segments == len(plan.chunks)
    # VAD chunks do not overlap: the transcript is the chunk texts in order.
    assert src.text == " ".join(" ".join(t.split()) for t in meeting.text if t.strip())
    assert src.output_tokens == meeting.output_tokens.sum()


def test_parquet_inputs_bytes_and_uris(job):
    sources = job["sources"].set_index("source_id")
    assert sources.loc["p1", "status"] == "ok" and sources.loc["p1", "modality"] == "document"
    assert sources.loc["p4", "status"] == "ok" and sources.loc["p4", "modality"] == "audio"
    assert sources.loc["p3", "status"] == "error" and "null" in sources.loc["p3", "error"]
    assert sources.loc["p1", "source_uri"] == "s3://tables/bytes.parquet#id=p1"
    # The per-row prompt column is used: same image, shorter instruction than the markdown task's
    # -> fewer prompt tokens.
    assert len(CUSTOM_PROMPT) < len(prompts.MARKDOWN_PROMPT)
    assert sources.loc["p2", "input_tokens"] < sources.loc["p1", "input_tokens"]
    by_uri = job["sources"].set_index("source_uri")
    assert by_uri.loc["s3://scans/other/receipt.png", "status"] == "ok"
    assert by_uri.loc["s3://scans/other/receipt.png", "source_row"] == "s3://tables/uris.parquet#row=0"
    missing = by_uri.loc["s3://scans/other/missing.png"]
    assert missing.status == "error" and "object not found" in missing.error


def test_summary_counts_and_location(job):
    summary, sources = job["summary"], job["sources"]
    assert summary["sources"] == {
        "total": 18, "ok": 11, "error": 7,
        "by_modality": summary["sources"]["by_modality"],
    }
    assert summary["sources"]["by_modality"]["audio"]["ok"] == 4
    assert summary["error_rate"] == pytest.approx(7 / 18, abs=1e-5) and summary["passed"]
    segments = 12 + len(_meeting_plan().chunks)  # pages 10, memo 1, p4 1, meeting
    assert summary["segments"] == segments and summary["pages"] == (1 + 1 + 2 + 3) + 2 + 1  # mixed + p1/p2 + receipt
    assert summary["tokens"]["output"] == int(sources.output_tokens.sum())
    assert summary["this_invocation"]["segments_inferred"] == segments
    with job["fs"].open_input_stream(summary["summary_path"].removeprefix("s3://")) as f:
        assert json.loads(f.read())["run_id"] == summary["run_id"]
    text = json.dumps(summary)
    assert "testing-secret-key" not in text and "testing-key-id" not in text


def test_token_ids_equal_a_direct_vllm_call(job):
    """Same input, same prompt, greedy: the pipeline's tokens are the engine's tokens."""
    from vllm import SamplingParams

    segments = job["segments"]
    fs = job["fs"]
    with fs.open_input_stream("scans/mixed/invoice.png") as f:
        (page,) = media.decode_images(f.read())  # the file as a user would hand it to vLLM: full size, RGB
    with fs.open_input_stream("scans/mixed/meeting.flac") as f:
        audio = media.decode_audio(f.read())
    from model.inputs import audio_chunks

    chunk = audio_chunks.plan_audio(audio).chunks[1]
    conversations = [
        prompts.messages_for_item("auto", "document", image=page),
        prompts.messages_for_item("auto", "audio", audio=audio_chunks.chunk_samples(audio, chunk)),
    ]
    with running_engine(job["spec"].engine) as llm:
        outs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=4),
                        chat_template_content_format="openai", use_tqdm=False)
    expected = [list(o.outputs[0].token_ids) for o in outs]
    got_page = segments[segments.source_uri == "s3://scans/mixed/invoice.png"].output_token_ids.iloc[0]
    got_chunk = segments[(segments.source_uri == "s3://scans/mixed/meeting.flac")
                         & (segments.segment_index == 1)].output_token_ids.iloc[0]
    assert [list(got_page), list(got_chunk)] == expected


def test_rerun_same_date_is_idempotent_and_threshold_exit(job):
    """The nightly re-run of a finished date recomputes nothing (no engine start), rewrites the same
    rows, and exits 3 (threshold exceeded) through the CLI when the error rate is over the threshold."""
    from jobs.run import EXIT_TOO_MANY_ERRORS, main

    spec = job["spec"]
    argv = ["--output", spec.output.uri, "--model", spec.engine.model, "--run-date", RUN_DATE,
            "--max-new-tokens", "4", "--max-model-len", "4096", "--batch-size", "4", "--pdf-dpi", "60",
            "--error-threshold", "0.1", "--run-id", spec.run.run_id, "--s3-endpoint", spec.storage.endpoint_url]
    for uri in spec.inputs:
        argv += ["--input", uri]
    assert main(argv) == EXIT_TOO_MANY_ERRORS
    sources = _read(job["fs"], "out/nightly/sources").to_pandas()
    segments = _read(job["fs"], "out/nightly/segments").to_pandas()
    assert len(sources) == 18 and sources.source_id.is_unique
    assert len(segments) == len(job["segments"])
    assert sorted(sources.output_tokens) == sorted(job["sources"].output_tokens)
    path = job["summary"]["summary_path"].removeprefix("s3://")
    with job["fs"].open_input_stream(path) as f:
        rerun = json.loads(f.read())
    assert rerun["this_invocation"]["sources_processed"] == 0
    assert rerun["this_invocation"]["segments_inferred"] == 0
    assert rerun["this_invocation"]["sources_skipped_as_done"] == 18
    assert not rerun["passed"]


def test_subtitle_files_beside_the_tables(job):
    """--subtitles srt: one file per ok recording, cues at the chunks' true times (read with `srt`)."""
    import srt

    info, fs = job["summary"]["subtitles"], job["fs"]
    spec = job["spec"]
    assert info["format"] == "srt" and info["files"] == 4  # memo, meeting, silence, p4
    assert info["directory"] == f"s3://out/nightly/subtitles/run_date={RUN_DATE}/{spec.run.run_id}"
    sources = job["sources"].set_index("source_uri")
    meeting_id = sources.loc["s3://scans/mixed/meeting.flac", "source_id"]
    base = info["directory"].removeprefix("s3://")
    with fs.open_input_stream(f"{base}/meeting.{meeting_id}.srt") as f:
        cues = list(srt.parse(f.read().decode()))
    segments = job["segments"]
    rows = segments[segments.source_id == meeting_id].sort_values("segment_index")
    expected = [(s, e, " ".join(t.split())) for s, e, t in zip(rows.start_s, rows.end_s, rows.text) if t.strip()]
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content.replace("\n", " ")) for c in cues] == [
        (pytest.approx(s, abs=1e-3), pytest.approx(e, abs=1e-3), t) for s, e, t in expected]
    silence_id = sources.loc["s3://scans/mixed/silence.wav", "source_id"]
    with fs.open_input_stream(f"{base}/silence.{silence_id}.srt") as f:
        assert f.read() == b""
