"""Job spec: YAML, flags over YAML, derived run id (same command + date -> same run)."""

from __future__ import annotations

import pytest

from jobs.run import parser, spec_from_args
from jobs.spec import JobSpec


def test_yaml_and_flags_merge(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: [s3://scans/a/, s3://scans/b.parquet]\noutput: s3://out/x\nmodel: /models/m\n"
        "image_tokens: 1120\nparquet: {id_column: doc}\nrun_date: '2026-11-22'\n")
    spec = JobSpec.from_yaml(path)
    assert spec.inputs == ["s3://scans/a/", "s3://scans/b.parquet"] and spec.parquet.id_column == "doc"
    merged = spec_from_args(parser().parse_args(["--spec", str(path), "--actors", "1,4", "--batch-size", "8",
                                                  "--s3-endpoint", "http://minio:9000"]))
    assert (merged.actors_min, merged.actors_max, merged.batch_size) == (1, 4, 8)
    assert merged.image_tokens == 1120 and merged.storage.endpoint_url == "http://minio:9000"
    assert merged.run_id == spec.run_id  # same inputs/settings/date -> same run


def test_run_id_changes_with_inputs_and_date():
    a = JobSpec(inputs=["s3://x/"], output="o", model="m", run_date="2026-11-22")
    assert a.run_id.startswith("20261122-")
    assert JobSpec(inputs=["s3://x/"], output="o", model="m", run_date="2026-11-23").run_id != a.run_id
    assert JobSpec(inputs=["s3://y/"], output="o", model="m", run_date="2026-11-22").run_id != a.run_id


@pytest.mark.parametrize("bad", [dict(image_tokens=100), dict(error_threshold=2), dict(run_date="22/11/2026"),
                                 dict(actors_min=3, actors_max=2), dict(run_id="a b"), dict(pdf_dpi=0),
                                 dict(retries=-1), dict(pdf_text="always"), dict(json_schema='{"type": 3}'),
                                 dict(json_schema="/nonexistent/schema.json")])
def test_invalid_specs_refused(bad):
    with pytest.raises(ValueError):
        JobSpec(inputs=["x"], output="o", model="m", **bad)


def test_unknown_yaml_field_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: [a]\noutput: o\nmodel: m\nbatchsize: 3\n")
    with pytest.raises(ValueError, match="batchsize"):
        JobSpec.from_yaml(path)


def test_docparse_options_from_flags(tmp_path):
    schema = tmp_path / "invoice.schema.json"
    schema.write_text('{"type": "object", "properties": {"total": {"type": "number"}}}')
    base = ["--input", "s3://x/", "--output", "o", "--model", "m", "--run-date", "2026-11-22"]
    plain = spec_from_args(parser().parse_args(base))
    assert (plain.retries, plain.strict, plain.pdf_text, plain.json_schema) == (0, False, "ignore", None)
    spec = spec_from_args(parser().parse_args(base + ["--retries", "3", "--strict", "--pdf-text", "prefer",
                                                      "--json-schema", str(schema), "--schema-column", "sch"]))
    assert (spec.retries, spec.strict, spec.pdf_text, spec.parquet.schema_column) == (3, True, "prefer", "sch")
    assert spec.schema_text() == '{"type":"object","properties":{"total":{"type":"number"}}}'
    # What is computed changes the run id; the defaults keep earlier runs' ids.
    assert spec.run_id != plain.run_id
    assert JobSpec(inputs=["s3://x/"], output="o", model="m", run_date="2026-11-22", retries=2).run_id == plain.run_id
    inline = JobSpec(inputs=["s3://x/"], output="o", model="m", json_schema={"type": "object"})
    assert inline.schema_text() == '{"type":"object"}' and JobSpec.from_dict(inline.to_dict()).schema_text() == inline.schema_text()


def test_engine_concurrency_flags_and_the_rows_in_flight_rule():
    base = ["--input", "s3://x/", "--output", "o", "--model", "m"]
    plain = spec_from_args(parser().parse_args(base))
    assert (plain.max_num_seqs, plain.max_num_batched_tokens, plain.max_concurrent_batches) == (None, None, None)
    settings = plain.engine_settings()
    assert (settings.max_num_seqs, settings.max_num_batched_tokens) == (None, None)  # vLLM's own on GPU
    # Rows in flight per actor cover what ray.data.llm admits into the engine (1.1 x max_num_seqs).
    assert plain.batch_size * plain.concurrent_batches(64) >= 1.1 * 64
    assert plain.concurrent_batches(1024) == 71 and plain.concurrent_batches(8) == 1  # batch 16
    spec = spec_from_args(parser().parse_args(base + ["--max-num-seqs", "512", "--max-num-batched-tokens", "16384",
                                                      "--max-concurrent-batches", "3"]))
    assert (spec.engine_settings().max_num_seqs, spec.engine_settings().max_num_batched_tokens) == (512, 16384)
    assert spec.concurrent_batches(512) == 3  # set by the user: kept
    assert spec.run_id == plain.run_id  # how fast, not what is computed
    with pytest.raises(ValueError):
        JobSpec(inputs=["x"], output="o", model="m", max_concurrent_batches=0)
