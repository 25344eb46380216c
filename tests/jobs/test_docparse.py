"""Document parsing outputs end to end (local Ray, ray.data.llm, the vLLM CPU engine, the tiny
random checkpoint): JSON-schema guided decoding gives schema-valid JSON for every page; pages cut
off at the token limit are flagged `truncated`, retried as the policy says, and counted; the new
columns read back with DuckDB and pandas. One job run for the module (two engine starts: the
stream and one retry round)."""

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

RUN_DATE = "2026-11-23"
MAX_NEW_TOKENS = 48
# Bounded strings and integers: grammar-constrained decoding closes the object within the token
# budget even with random weights (docs/batch.md "Structured extraction").
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "pattern": "^[a-z]{1,8}$"},
        "total": {"type": "integer", "minimum": 0, "maximum": 999},
    },
    "required": ["title", "total"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_checkpoint, ray_local):
    root = tmp_path_factory.mktemp("docparse")
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "scan.pdf").write_bytes(samples.pdf_doc(samples.SAMPLE_TEXTS[:2]))  # image-only: 2 model pages
    table = pa.table({
        "id": ["j1", "j2", "t1"],
        "image": [samples.png_page(samples.SAMPLE_TEXTS[0]), samples.png_page(samples.SAMPLE_TEXTS[1]),
                  samples.png_page(samples.SAMPLE_TEXTS[2])],
        "json_schema": [json.dumps(SCHEMA), json.dumps(SCHEMA), None],
    })
    pq.write_table(table, root / "rows.parquet")
    spec = JobSpec(
        inputs=[str(inputs), str(root / "rows.parquet")], output=str(root / "out"), model=str(tiny_checkpoint),
        max_new_tokens=MAX_NEW_TOKENS, max_model_len=4096, batch_size=4, pdf_dpi=60, retries=1,
        run_date=RUN_DATE,
    )
    summary = run_job(spec)
    out = pathlib.Path(spec.output)
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
    for key in ("j1", "j2"):
        source = job["sources"][key]
        assert source["status"] == "ok", source["error"]
        (segment,) = _segments_of(job, key)
        value = json.loads(segment["json"])
        jsonschema.validate(value, SCHEMA)
        assert segment["finish_reason"] == "stop" and segment["flags"] == []
        assert json.loads(source["json"]) == [value]  # the source holds one value per page, in order
    assert job["sources"]["t1"]["json"] is None  # no schema for that row


def test_pages_at_the_token_limit_are_flagged_retried_and_counted(job):
    truncated = [s for key in ("t1", "scan.pdf") for s in _segments_of(job, key)]
    assert len(truncated) == 3
    for segment in truncated:
        assert segment["finish_reason"] == "length" and "truncated" in segment["flags"]
        assert segment["output_tokens"] == MAX_NEW_TOKENS
        assert segment["attempts"] == 2 and segment["retry_round"] in (0, 1)  # --retries 1: one more run
        assert segment["status"] == "ok" and segment["text_source"] == "model"
    for key in ("t1", "scan.pdf"):
        source = job["sources"][key]
        assert source["status"] == "ok" and "truncated" in source["flags"]  # not --strict: ok, flagged
        assert source["retried_segments"] == source["num_segments"]
    quality = job["summary"]["quality"]
    assert quality["flags"]["truncated"] == {"segments": 3, "sources": 2}
    assert quality["finish_reason"] == {"length": 3, "stop": 2}
    assert quality["text_source"] == {"model": 5}
    assert quality["segments_retried"] == 3 and quality["retries"] == 1 and not quality["strict"]
    assert quality["retry_rounds_this_invocation"][0]["segments"] == 3
    # The retry round is not counted again as inferred segments.
    assert job["summary"]["this_invocation"]["segments_inferred"] == 5


def test_new_columns_read_with_duckdb_and_pandas(job):
    import duckdb
    import pandas as pd

    out = job["out"]
    sources = pd.read_parquet(out / "sources").set_index("source_id")
    assert {"flags", "text_source", "pdf_text_pages", "retried_segments", "json"} <= set(sources.columns)
    assert list(sources.loc["t1", "flags"]) == ["truncated"] and list(sources.loc["j1", "flags"]) == []
    segments = pd.read_parquet(out / "segments")
    assert set(segments.finish_reason) == {"stop", "length"} and segments.attempts.dtype == "int32"
    con = duckdb.connect()
    rows = con.sql(f"""
        select source_id, list_contains(flags, 'truncated') as cut, json_extract(json, '$[0].total') as total
        from read_parquet('{out}/sources/*/*.parquet', hive_partitioning = true) order by source_id
    """).fetchall()
    assert len(rows) == 4
    by_id = {r[0]: r for r in rows}
    assert by_id["j1"][1] is False and by_id["t1"][1] is True
    assert int(by_id["j1"][2]) == json.loads(job["sources"]["j1"]["json"])[0]["total"]
    described = con.sql(f"describe select * from read_parquet('{out}/segments/*/*.parquet', hive_partitioning = true)")
    types = {name: kind for name, kind, *_ in described.fetchall()}
    assert types["flags"] == "VARCHAR[]" and types["finish_reason"] == "VARCHAR" and types["attempts"] == "INTEGER"
    assert types["json"] == "VARCHAR" and types["text_source"] == "VARCHAR" and types["text_layer"] == "VARCHAR"
