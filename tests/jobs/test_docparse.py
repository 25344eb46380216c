"""Document parsing outputs end to end (local Ray, ray.data.llm, the vLLM CPU engine, the tiny
random checkpoint): JSON-schema guided decoding gives schema-valid JSON for every page; a PDF with a
real text layer under `--pdf-text prefer` gives exactly its text and sends no request to the engine
for those pages, while scanned, garbled and sparse pages still go to the model; pages cut off at the
token limit are flagged `truncated`, retried as the policy says, and counted; the new columns read
back with DuckDB and pandas. One job run for the module (two engine starts: the stream and one
retry round)."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import samples
from jobs.pipeline import run_job
from jobs.spec import JobSpec
from tests.schemas import bounded_object

RUN_DATE = "2026-11-23"
MAX_NEW_TOKENS = 48
SCHEMA = bounded_object("title", "^[a-z]{1,8}$")


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_checkpoint, ray_local):
    root = tmp_path_factory.mktemp("docparse")
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "scan.pdf").write_bytes(samples.pdf_doc(samples.SAMPLE_TEXTS[:2]))  # image-only: 2 model pages
    (inputs / "digital.pdf").write_bytes(samples.text_pdf(samples.BORN_DIGITAL_PAGES))  # 2 text-layer pages
    (inputs / "garbled.pdf").write_bytes(samples.text_pdf(samples.BORN_DIGITAL_PAGES[:1], garbled=True))
    (inputs / "mixed.pdf").write_bytes(samples.text_pdf(samples.BORN_DIGITAL_PAGES[:1] + [["Page 2"]]))
    table = pa.table({
        "id": ["j1", "j2", "t1", "j3"],
        "image": [samples.png_page(samples.SAMPLE_TEXTS[0]), samples.png_page(samples.SAMPLE_TEXTS[1]),
                  samples.png_page(samples.SAMPLE_TEXTS[2]), samples.text_pdf(samples.BORN_DIGITAL_PAGES)],
        "json_schema": [json.dumps(SCHEMA), json.dumps(SCHEMA), None, json.dumps(SCHEMA)],
    })
    pq.write_table(table, root / "rows.parquet")
    spec = JobSpec(
        inputs=[str(inputs), str(root / "rows.parquet")],
        output={"uri": str(root / "out"), "max_new_tokens": MAX_NEW_TOKENS, "retries": 1},
        engine={"model": str(tiny_checkpoint), "max_model_len": 4096}, pages={"pdf_dpi": 60, "pdf_text": "prefer"},
        run={"batch_size": 4, "run_date": RUN_DATE},
    ).resolve()
    summary = run_job(spec)
    out = pathlib.Path(spec.output.uri)
    sources = pq.read_table(out / "sources").to_pylist()
    segments = pq.read_table(out / "segments").to_pylist()
    return dict(spec=spec, summary=summary, out=out,
                sources={(r["source_id"] if r["source_row"] else r["source_uri"].rsplit("/", 1)[-1]): r for r in sources},
                segments=segments)


def _segments_of(job, key):
    source = job["sources"][key]
    return sorted((s for s in job["segments"] if s["source_id"] == source["source_id"]),
                  key=lambda s: s["segment_index"])


def test_guided_decoding_gives_schema_valid_json_for_every_page(job):
    pages = {"j1": 1, "j2": 1, "j3": len(samples.BORN_DIGITAL_PAGES)}  # j3: a multi-page PDF row
    assert pages["j3"] >= 2
    for key, n in pages.items():
        source = job["sources"][key]
        assert source["status"] == "ok", source["error"]
        segments = _segments_of(job, key)
        assert [s["page"] for s in segments] == list(range(1, n + 1))
        values = [json.loads(s["json"]) for s in segments]
        for segment, value in zip(segments, values):
            jsonschema.validate(value, SCHEMA)
            assert segment["finish_reason"] == "stop" and segment["flags"] == []
        assert json.loads(source["json"]) == values  # the source holds one value per page, in page order
    assert job["sources"]["t1"]["json"] is None  # no schema for that row
    # A schema needs the model even where the text layer is usable: it is context (anchor), not the answer.
    for j3 in _segments_of(job, "j3"):
        assert j3["text_source"] == "model" and j3["text_layer"] == "usable" and j3["input_tokens"] > 0


def test_text_layer_pages_give_exactly_their_text_without_the_engine(job):
    digital = job["sources"]["digital.pdf"]
    assert digital["status"] == "ok" and digital["text_source"] == "pdf_text" and digital["pdf_text_pages"] == 2
    assert digital["text"] == "\n\n".join("\n".join(lines) for lines in samples.BORN_DIGITAL_PAGES)
    for segment, lines in zip(_segments_of(job, "digital.pdf"), samples.BORN_DIGITAL_PAGES):
        assert segment["text"] == "\n".join(lines) and segment["text_layer"] == "usable"
        # No request reached the engine: no prompt, no generated ids, no engine time, one "attempt" of 0.
        assert (segment["text_source"], segment["input_tokens"], segment["output_tokens"]) == ("pdf_text", 0, 0)
        assert segment["output_token_ids"] is None and segment["finish_reason"] is None
        assert segment["infer_s"] == 0.0 and segment["attempts"] == 0
    assert digital["input_tokens"] == digital["output_tokens"] == 0
    # Still read by the model: a scan (no layer), a layer of garbage, a page with a page number only.
    expect = {"scan.pdf": ["none", "none"], "garbled.pdf": ["garbled"], "mixed.pdf": ["usable", "sparse"]}
    for key, verdicts in expect.items():
        segments = _segments_of(job, key)
        assert [s["text_layer"] for s in segments] == verdicts
        assert [s["text_source"] for s in segments] == ["pdf_text" if v == "usable" else "model" for v in verdicts]
        assert all(s["input_tokens"] > 0 for s in segments if s["text_source"] == "model")
    assert job["sources"]["mixed.pdf"]["text_source"] == "mixed" and job["sources"]["mixed.pdf"]["pdf_text_pages"] == 1
    assert job["sources"]["t1"]["pdf_text_pages"] == 0 and job["sources"]["t1"]["text_source"] == "model"


def test_pages_at_the_token_limit_are_flagged_retried_and_counted(job):
    cut = ("t1", "scan.pdf", "garbled.pdf", "mixed.pdf")
    model_segments = [s for key in cut for s in _segments_of(job, key) if s["text_source"] == "model"]
    assert len(model_segments) == 5
    still_cut = []
    for segment in model_segments:
        # Random weights never close a page within 48 greedy tokens: every first attempt was cut, so
        # every page was run once more (--retries 1), and the better attempt was kept.
        assert segment["attempts"] == 2 and segment["retry_round"] in (0, 1)
        assert segment["status"] == "ok" and segment["text_source"] == "model"
        if segment["finish_reason"] == "length":
            assert "truncated" in segment["flags"] and segment["output_tokens"] == MAX_NEW_TOKENS
            still_cut.append(segment)
        else:
            # The retry's sampled attempt (temperature > 0) may end at EOS: then it is the one kept.
            assert segment["finish_reason"] == "stop" and segment["retry_round"] == 1
            assert "truncated" not in segment["flags"]
    assert still_cut, "no page stayed cut off: the flagging path was not exercised"
    flagged_sources = 0
    for key in cut:
        source = job["sources"][key]
        segments = [s for s in _segments_of(job, key) if s["text_source"] == "model"]
        cut_here = any("truncated" in s["flags"] for s in segments)
        assert source["status"] == "ok"  # not --strict: ok, flagged
        assert ("truncated" in source["flags"]) == cut_here  # the union of its segments' flags
        assert source["retried_segments"] == len(segments)
        flagged_sources += cut_here
    quality = job["summary"]["quality"]
    assert quality["flags"]["truncated"] == {"segments": len(still_cut), "sources": flagged_sources}
    # The four schema pages closed their JSON; the cut pages count by the attempt kept.
    assert quality["finish_reason"] == {"length": len(still_cut), "stop": 4 + 5 - len(still_cut)}
    assert quality["text_source"] == {"model": 9, "pdf_text": 3}
    assert quality["text_layer"] == {"none": 2, "garbled": 1, "usable": 5, "sparse": 1}
    assert quality["segments_retried"] == 5 and quality["retries"] == 1 and not quality["strict"]
    assert quality["pdf_text"] == "prefer"
    assert quality["retry_rounds_this_invocation"][0]["segments"] == 5
    # The retry round is not counted again as inferred segments; text-layer pages are not inferred.
    invocation = job["summary"]["this_invocation"]
    assert invocation["segments_inferred"] == 9 and invocation["segments_from_pdf_text"] == 3


def test_new_columns_read_with_duckdb_and_pandas(job):
    import duckdb
    import pandas as pd

    out = job["out"]
    sources = pd.read_parquet(out / "sources").set_index("source_id")
    assert {"flags", "text_source", "pdf_text_pages", "retried_segments", "json"} <= set(sources.columns)
    assert list(sources.loc["t1", "flags"]) == ["truncated"] and list(sources.loc["j1", "flags"]) == []
    segments = pd.read_parquet(out / "segments")
    assert set(segments.finish_reason.dropna()) == {"stop", "length"} and segments.attempts.dtype == "int32"
    assert segments.finish_reason.isna().sum() == (segments.text_source == "pdf_text").sum() == 3  # null rule
    con = duckdb.connect()
    rows = con.sql(f"""
        select source_id, list_contains(flags, 'truncated') as cut, json_extract(json, '$[0].total') as total
        from read_parquet('{out}/sources/*/*.parquet', hive_partitioning = true) order by source_id
    """).fetchall()
    assert len(rows) == 8
    by_id = {r[0]: r for r in rows}
    assert by_id["j1"][1] is False and by_id["t1"][1] is True
    assert int(by_id["j1"][2]) == json.loads(job["sources"]["j1"]["json"])[0]["total"]
    described = con.sql(f"describe select * from read_parquet('{out}/segments/*/*.parquet', hive_partitioning = true)")
    types = {name: kind for name, kind, *_ in described.fetchall()}
    assert types["flags"] == "VARCHAR[]" and types["finish_reason"] == "VARCHAR" and types["attempts"] == "INTEGER"
    assert types["json"] == "VARCHAR" and types["text_source"] == "VARCHAR" and types["text_layer"] == "VARCHAR"
