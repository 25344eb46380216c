"""Row functions of the pipeline without Ray or an engine: decode/prompt fan-out, error rows,
resume bookkeeping and assembly (dedupe of resumed work)."""

from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pyarrow as pa

from connectors.sources import ParquetColumns, file_source
from connectors.storage import StorageConfig
from jobs import samples, stages
from jobs.resume import ResumeIndex
from jobs.workarea import resume_state
from model.inputs import audio_chunks, media, pages
from model.inputs.audio_chunks import Segmentation
from model.inputs.media import MediaLimits


def ctx(**kw) -> stages.StageContext:
    base = dict(run_id="r1", attempt="a1", task="auto", storage=StorageConfig(), limits=MediaLimits(pdf_dpi=50),
                parquet=ParquetColumns(), segmentation=Segmentation(), max_new_tokens=4)
    base.update(kw)
    return stages.StageContext(**base)


def test_decode_fans_out_pages_and_chunks(tmp_path):
    pdf = tmp_path / "d.pdf"
    pdf.write_bytes(samples.pdf_doc(["a", "b", "c"]))
    rows = list(stages.decode_source(file_source(str(pdf)), ctx()))
    assert [r["page"] for r in rows] == [1, 2, 3] and all(r["num_segments"] == 3 for r in rows)
    part = json.loads(rows[0]["messages_json"])[0]["content"][0]
    assert part == {"type": "image_pil", "image_pil": stages.PAGE_REF}  # the page travels in page_*
    assert rows[0]["page_codec"] in ("file", "zstd") and len(rows[0]["page_data"]) > 0
    # Audio: one row per VAD chunk (the checkpoint's 30 s window, packed), true start/end times.
    audio, placed = samples.speech_recording(70.0, seed=2)
    wav = tmp_path / "long.wav"
    wav.write_bytes(samples.wav_bytes(audio))
    rows = list(stages.decode_source(file_source(str(wav)), ctx()))
    audio = media.decode_audio(wav.read_bytes())  # the file holds 16-bit samples
    plan = audio_chunks.plan_audio(audio)
    assert [(r["start_s"], r["end_s"]) for r in rows] == [(c.start_s, c.end_s) for c in plan.chunks]
    assert len(rows) == 2 and all(r["num_segments"] == 2 for r in rows)
    assert rows[0]["start_s"] < placed[0][0] / 16000 and rows[-1]["end_s"] > placed[-1][1] / 16000
    assert rows[0]["modality"] == "audio" and abs(rows[0]["duration_s"] - 70.0) < 1e-6
    sent = base64.b64decode(json.loads(rows[1]["messages_json"])[0]["content"][0]["input_audio"]["data"])
    np.testing.assert_array_equal(media.decode_audio(sent), audio_chunks.chunk_samples(audio, plan.chunks[1]))
    # Utterance packing (a setting; the demo checkpoint declares it): one row per string.
    rows = list(stages.decode_source(file_source(str(wav)), ctx(segmentation=Segmentation(pack="utterance"))))
    assert len(rows) == len(placed)


def test_recording_without_speech_is_one_ok_row_with_empty_text(tmp_path):
    wav = tmp_path / "silence.wav"
    wav.write_bytes(samples.wav_bytes(np.zeros(16000 * 12, np.float32)))
    (row,) = stages.decode_source(file_source(str(wav)), ctx())
    assert row["segment_index"] == stages.ERROR_SEGMENT and row["error"] is None and row["num_segments"] == 0
    assert row["duration_s"] == 12.0
    request = stages.to_llm_request(row, 4)  # skips the engine like an error row...
    assert request["__inference_error__"] == stages.NO_SPEECH
    work = stages.collect_segment({**row, **request}, ctx())  # ...and comes back as an ok row
    assert work["status"] == "ok" and work["text"] == "" and work["error"] is None
    done, partial = resume_state(pa.Table.from_pylist([work], schema=stages.WORK_SCHEMA))
    assert done == {row["source_id"]} and not partial
    source, segments = stages.assemble_source([work])
    assert (source["status"], source["text"], source["num_segments"], segments) == ("ok", "", 0, [])


def test_decode_skips_finished_segments_of_partial_sources(tmp_path):
    tiff = tmp_path / "d.tiff"
    tiff.write_bytes(samples.tiff_doc(["a", "b", "c"]))
    source = file_source(str(tiff))
    rows = list(stages.decode_source(source, ctx(resume=ResumeIndex.of(partial={source["source_id"]: {0, 2}}))))
    assert [r["segment_index"] for r in rows] == [1]


def test_bad_sources_become_one_error_row(tmp_path):
    missing = file_source(str(tmp_path / "nope.png"))
    (row,) = stages.decode_source(missing, ctx())
    assert row["segment_index"] == stages.ERROR_SEGMENT and "not found" in row["error"]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    (row,) = stages.decode_source(file_source(str(empty)), ctx())
    assert row["error_stage"] == "decode" and "empty" in row["error"]
    # Error rows skip every ray.data.llm stage: the processor gets __inference_error__ set.
    request = stages.to_llm_request(row, 4)
    assert request["__inference_error__"].startswith("[decode]")


def test_a_page_row_carries_the_page_at_the_model_size_and_becomes_an_image_pil_request(tmp_path):
    scan = tmp_path / "scan.jpg"
    scan.write_bytes(samples.scan_page(300))
    context = ctx(geometry=pages.PageGeometry(1120))
    (row,) = stages.decode_source(file_source(str(scan)), context)
    assert (row["page_width"], row["page_height"], row["page_resized"]) == (1344, 1872, True)
    target_png = len(media.image_to_png_bytes(pages.encoded_page(
        row["page_data"], row["page_codec"], row["page_mode"], (1344, 1872))))
    row_bytes = len(pickle.dumps(row))
    assert row_bytes <= 1.5 * target_png, (row_bytes, target_png)  # compact: no full-resolution bitmap
    request = stages.to_llm_request(row, 4)
    assert request["mm_processor_kwargs"] == {"max_soft_tokens": 1120, "do_resize": False}
    assert request["page_data"] is None and request["messages_json"] is None  # the page is there once
    (image_part, text_part) = request["messages"][0]["content"]
    assert image_part["type"] == "image_pil" and image_part["image_pil"].size == (1344, 1872)
    assert text_part["type"] == "text"
    assert len(pickle.dumps({**row, **request})) <= 1.5 * target_png


def test_a_page_that_fails_to_render_fails_its_segment_and_its_source_only(tmp_path, monkeypatch):
    real = pages.render_pdf_page
    count = {"n": 0}

    def flaky(page, width, height):
        count["n"] += 1
        if count["n"] == 3:
            raise RuntimeError("bad content stream")
        return real(page, width, height)

    monkeypatch.setattr(pages, "render_pdf_page", flaky)
    pdf = tmp_path / "d.pdf"
    pdf.write_bytes(samples.text_pdf(4))
    rows = list(stages.decode_source(file_source(str(pdf)), ctx()))
    assert [r["segment_index"] for r in rows] == [0, 1, 2, 3] and all(r["num_segments"] == 4 for r in rows)
    assert [r["error"] is None for r in rows] == [True, True, False, True]
    assert rows[2]["error_stage"] == "decode" and "PDF page 3 cannot be rendered" in rows[2]["error"]
    assert "__inference_error__" in stages.to_llm_request(rows[2], 4)
    work = [stages.collect_segment({**r, "generated_tokens": None if r["error"] else [5], "generated_text": "x"},
                                   ctx()) for r in rows]
    source, segments = stages.assemble_source(work)
    assert source["status"] == "error" and source["num_segments"] == 4 and len(segments) == 4
    assert source["error"].startswith("1 of 4 segments failed; page 3: PDF page 3 cannot be rendered")


def test_a_bug_mid_document_still_accounts_for_every_page(tmp_path, monkeypatch):
    pdf = tmp_path / "d.pdf"
    pdf.write_bytes(samples.text_pdf(3))
    real = pages.Pages.iter

    def broken(self, skip=frozenset()):
        produced = real(self, skip)
        yield next(produced)
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(pages.Pages, "iter", broken)
    rows = list(stages.decode_source(file_source(str(pdf)), ctx()))
    assert [r["segment_index"] for r in rows] == [0, 1, 2]
    assert rows[0]["error"] is None and all("decoder bug" in r["error"] for r in rows[1:])


def _work(source_id, index, n, t, status="ok", stage=None, modality="document", **kw):
    row = dict(source_id=source_id, source_uri=f"s3://b/{source_id}", source_row=None, segment_index=index,
               num_segments=n, modality=modality, format="pdf", page=index + 1 if index >= 0 else None,
               start_s=None, end_s=None, duration_s=None, source_bytes=10, status=status,
               error=None if status == "ok" else "boom", error_stage=stage, text=f"t{index}",
               output_token_ids=[1, 2], input_tokens=5, output_tokens=2, decode_s=0.1, infer_s=0.2,
               run_id="r1", attempt="a", written_at=t)
    row.update(kw)
    return row


def test_assemble_dedupes_resumed_segments_and_orders_pages():
    rows = [_work("x", 1, 3, 2.0), _work("x", 0, 3, 1.0), _work("x", 1, 3, 3.0, text="again"), _work("x", 2, 3, 4.0)]
    source, segments = stages.assemble_source(rows)
    assert source["status"] == "ok" and source["num_segments"] == 3 and source["pages"] == 3
    assert [s["segment_index"] for s in segments] == [0, 1, 2]
    assert source["text"] == "t0\n\nagain\n\nt2"


def test_assemble_reports_missing_and_failed_segments():
    source, _ = stages.assemble_source([_work("x", 0, 3, 1.0)])
    assert source["status"] == "error" and "only 1 of 3" in source["error"]
    source, segments = stages.assemble_source([_work("x", 0, 2, 1.0), _work("x", 1, 2, 1.0, status="error", stage="infer")])
    assert source["status"] == "error" and "page 2" in source["error"] and source["text"] is None
    assert len(segments) == 2


def test_fetch_error_marker_superseded_by_later_success():
    rows = [_work("x", -1, 0, 1.0, status="error", stage="fetch", modality=None), _work("x", 0, 1, 2.0)]
    source, segments = stages.assemble_source(rows)
    assert source["status"] == "ok" and len(segments) == 1


def test_resume_state():
    rows = [_work("done", 0, 1, 1.0), _work("part", 0, 3, 1.0), _work("part", 2, 3, 1.0),
            _work("bad", -1, 0, 1.0, status="error", stage="decode"),
            _work("retry", -1, 0, 1.0, status="error", stage="fetch")]
    done, partial = resume_state(pa.Table.from_pylist(rows, schema=stages.WORK_SCHEMA))
    assert done == {"done", "bad"}
    assert partial == {"part": {0, 2}}


def test_audio_source_text_is_stitched():
    rows = [_work("a", i, 2, 1.0, modality="audio", page=None, start_s=s, end_s=e, text=t)
            for i, (s, e, t) in enumerate([(0.0, 30.0, "one two three four"), (28.0, 40.0, "three four five")])]
    source, segments = stages.assemble_source(rows)
    assert source["text"] == "one two three four five" and source["pages"] is None
    assert [(s["start_s"], s["end_s"]) for s in segments] == [(0.0, 30.0), (28.0, 40.0)]


def test_pdf_text_modes_in_the_decode_stage(tmp_path):
    """ignore: every page to the model; anchor: the layer in the prompt; prefer: usable layers are
    the text (no request), the rest to the model; prefer with a schema: anchor."""
    pdf = tmp_path / "mixed.pdf"
    pdf.write_bytes(samples.text_pdf(samples.BORN_DIGITAL_PAGES[:1] + [["Page 2"]]))
    source = file_source(str(pdf))

    def run(**kw):
        return list(stages.decode_source(source, ctx(**kw)))

    def instruction(row):
        return json.loads(row["messages_json"])[0]["content"][-1]["text"]

    ignore = run()
    assert [(r["text_source"], r["text_layer"]) for r in ignore] == [("model", None), ("model", None)]
    assert "TEXT_LAYER_START" not in instruction(ignore[0])
    anchor = run(pdf_text="anchor")
    assert [r["text_layer"] for r in anchor] == ["usable", "sparse"]
    assert samples.BORN_DIGITAL_PAGES[0][1] in instruction(anchor[0]) and "Page 2" in instruction(anchor[1])
    prefer = run(pdf_text="prefer")
    layer, model = prefer
    assert (layer["text_source"], layer["page"], layer["messages_json"]) == ("pdf_text", 1, None)
    assert layer["pdf_text"] == "\n".join(samples.BORN_DIGITAL_PAGES[0]) and layer["page_data"] is None
    assert stages.to_llm_request(layer, 4)["__inference_error__"] == stages.NO_INFERENCE
    assert (model["text_source"], model["text_layer"], model["page"]) == ("model", "sparse", 2)
    assert "TEXT_LAYER_START" not in instruction(model)
    schema = run(pdf_text="prefer", json_schema='{"type":"object"}')
    assert [r["text_source"] for r in schema] == ["model", "model"] and "TEXT_LAYER_START" in instruction(schema[0])
    # A retry of page 2 only: page 1's layer is not emitted again.
    retry = list(stages.decode_source({**source, "retry_segments": [1], "retry_round": 1}, ctx(pdf_text="prefer")))
    assert [(r["segment_index"], r["retry_round"]) for r in retry] == [(1, 1)]


def test_a_1000_frame_tiff_streams_page_by_page_with_flat_memory(tmp_path, monkeypatch):
    """Each request leaves decode as its frame is prepared (the first after one frame, not after the
    file), and the decode task's own memory stays flat over 1,000 frames: it keeps no frame's bitmap
    (320x420 RGB, 0.4 MB each: 400 MB over the file if kept) and no earlier request."""
    frames = 1000
    tiff = tmp_path / "book.tiff"
    tiff.write_bytes(samples.tiff_doc([f"page {i}" for i in range(frames)]))
    prepared = []
    real = pages._prepare_frame
    monkeypatch.setattr(pages, "_prepare_frame", lambda *a, **kw: prepared.append(1) or real(*a, **kw))

    def private_mib() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("RssAnon:"))

    rows = stages.decode_source(file_source(str(tiff)), ctx(geometry=pages.PageGeometry(70)))
    first = next(rows)
    assert first["page"] == 1 and first["num_segments"] == frames and len(prepared) == 1
    seen, memory = 1, {}
    for row in rows:
        assert row["error"] is None and row["page"] == seen + 1
        seen += 1
        if seen in (100, frames):
            memory[seen] = private_mib()
    assert seen == frames and len(prepared) == frames
    assert memory[frames] - memory[100] < 40, memory  # frames 100..1000: 360 MB of bitmaps if kept
