"""Real files and real schemas end to end (local Ray, ray.data.llm, the vLLM CPU engine, the tiny random
checkpoint): one ok row per file made the way users' files are made (tests/realfiles.py: EXIF-turned
photos, HEIC, a TIFF with per-frame orientation, a GIF, PNM, Pillow's other formats, AIFF/AIFC/AU and
other libsndfile containers, a PDF turned with /Rotate, a LaTeX PDF), every page's applied orientation
in the segments table; and the user-style schema corpus (tests/schemas.py), one Parquet row per schema
in the per-row json_schema column: every runnable schema gives JSON that validates with `jsonschema`,
every other one is that row's error naming its keyword.

One job run for the module. It cannot ride on test_docparse's job: that job's assertions fix its
token limit (48, to cut unguided pages off), its retry round (which would re-run every flagged row
here) and its exact counts. Here every request is guided (the files get a small job-level schema,
the rows their own), so pages close their JSON early and the token limit can leave room for the
larger schemas (the most the corpus needed on the tiny checkpoint was under 90 tokens).
"""

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
from tests import realfiles
from tests.schemas import USER_SCHEMAS, bounded_object

RUN_DATE = "2026-12-08"
MAX_NEW_TOKENS = 192
FILE_SCHEMA = bounded_object("word", "^[a-z]{1,8}$")
# A schema users write without bounds: random weights may not close its string within the limit.
UNBOUNDED = {"type": "object", "properties": {"notes": {"type": "string"}}, "required": ["notes"],
             "additionalProperties": False}


def _valid(value, schema: dict) -> None:
    cls = jsonschema.validators.validator_for(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(value)


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_checkpoint, ray_local):
    root = tmp_path_factory.mktemp("realfiles")
    inputs = root / "in"
    inputs.mkdir()
    files = realfiles.corpus()
    for item in files:
        (inputs / item.name).write_bytes(item.data)
    page = samples.png_page(samples.SAMPLE_TEXTS[1], (240, 160))
    names = [s.name for s in USER_SCHEMAS] + ["unbounded_notes"]
    schemas = [s.schema for s in USER_SCHEMAS] + [UNBOUNDED]
    pq.write_table(pa.table({"id": names, "image": [page] * len(names),
                             "json_schema": [json.dumps(s) for s in schemas]}), root / "schemas.parquet")
    spec = JobSpec(inputs=[str(inputs), str(root / "schemas.parquet")],
                   output={"uri": str(root / "out"), "json_schema": FILE_SCHEMA, "max_new_tokens": MAX_NEW_TOKENS},
                   engine={"model": str(tiny_checkpoint), "max_model_len": 4096}, pages={"pdf_dpi": 60},
                   run={"batch_size": 8, "error_threshold": 0.5, "run_date": RUN_DATE})
    summary = run_job(spec)
    out = pathlib.Path(spec.output.uri)
    sources = pq.read_table(out / "sources").to_pylist()
    segments = pq.read_table(out / "segments").to_pylist()
    by_key = {(r["source_id"] if r["source_row"] else r["source_uri"].rsplit("/", 1)[-1]): r for r in sources}
    return dict(summary=summary, out=out, files=files, sources=by_key, segments=segments)


def _segments(job, key):
    source = job["sources"][key]
    return sorted((s for s in job["segments"] if s["source_id"] == source["source_id"]),
                  key=lambda s: s["segment_index"])


def test_every_real_file_is_one_ok_row_with_its_format(job):
    for item in job["files"]:
        row = job["sources"][item.name]
        assert (row["status"], row["error"]) == ("ok", None), (item.name, row["error"])
        assert row["format"] == item.fmt and row["modality"] == item.kind, item.name
        if item.kind == "audio":
            assert row["duration_s"] == pytest.approx(item.duration_s, abs=0.01), item.name
            continue
        segments = _segments(job, item.name)
        assert row["pages"] == item.pages and [s["page"] for s in segments] == list(range(1, item.pages + 1))
        for segment in segments:  # the job's schema: every page wrote valid JSON
            _valid(json.loads(segment["json"]), FILE_SCHEMA)


def test_segments_record_the_orientation_applied(job):
    for item in job["files"]:
        segments = _segments(job, item.name)
        if item.kind == "audio":
            assert all(s["orientation"] is None for s in segments)
        elif item.orientations:
            assert [s["orientation"] for s in segments] == list(item.orientations), item.name
        else:  # the LaTeX PDF: upright pages
            assert {s["orientation"] for s in segments} == {1}, item.name
    # The turned photos reached the model at their upright size: as many image tokens as the upright PNG.
    tokens = {item.name: _segments(job, item.name)[0]["input_tokens"] for item in job["files"]
              if item.name.startswith(("phone_o", "screenshot", "photo_o", "iphone", "scanimage"))}
    assert len(set(tokens.values())) == 1, tokens


def test_every_runnable_schema_gives_valid_json_and_the_rest_are_row_errors_naming_the_keyword(job):
    for case in USER_SCHEMAS:
        row = job["sources"][case.name]
        if case.refused is None:
            assert row["status"] == "ok", (case.name, row["error"])
            (segment,) = _segments(job, case.name)
            value = json.loads(segment["json"])
            _valid(value, case.schema)
            assert json.loads(row["json"]) == [value] and segment["finish_reason"] == "stop", case.name
        else:
            assert row["status"] == "error" and row["error_stage"] == "decode", case.name
            assert row["error"].startswith("the row's JSON schema column:") and f"'{case.refused}'" in row["error"]
            assert _segments(job, case.name) == [] and row["input_tokens"] == 0


def test_a_schema_that_cannot_finish_in_the_limit_is_a_clear_row_error(job):
    row = job["sources"]["unbounded_notes"]
    (segment,) = _segments(job, "unbounded_notes")
    if row["status"] == "ok":  # the random model closed the string in time: then it is valid
        _valid(json.loads(segment["json"]), UNBOUNDED)
    else:
        assert segment["finish_reason"] == "length" and segment["flags"] == ["truncated", "invalid_json"]
        assert f"token limit ({MAX_NEW_TOKENS} new tokens)" in row["error"] and "maxLength" in row["error"]


def test_the_orientation_column_reads_with_duckdb(job):
    import duckdb

    out = job["out"]
    rows = duckdb.sql(f"""
        select orientation, count(*) from read_parquet('{out}/segments/*/*.parquet', hive_partitioning = true)
        where modality = 'document' group by orientation order by orientation
    """).fetchall()
    counts = dict(rows)
    assert counts[6] >= 5 and counts[8] >= 2 and counts[3] == 1 and counts[5] == 1 and None not in counts
    described = duckdb.sql(f"describe select * from read_parquet('{out}/segments/*/*.parquet', hive_partitioning = true)")
    assert {name: kind for name, kind, *_ in described.fetchall()}["orientation"] == "INTEGER"
