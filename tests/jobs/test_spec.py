"""Job spec: YAML, flags over YAML, derived run id (same command + date -> same run), pure validation."""

from __future__ import annotations

import pytest

from jobs.run import parser, spec_from_args
from jobs.spec import JobSpec


def test_yaml_and_flags_merge(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "inputs: [s3://scans/a/, s3://scans/b.parquet]\noutput: {uri: s3://out/x}\n"
        "engine: {model: /models/m, image_tokens: 1120}\nparquet: {id_column: doc}\nrun: {run_date: '2026-11-22'}\n")
    spec = JobSpec.from_yaml(path).resolve()
    assert spec.inputs == ["s3://scans/a/", "s3://scans/b.parquet"] and spec.parquet.id_column == "doc"
    merged = spec_from_args(parser().parse_args(["--spec", str(path), "--actors", "1,4", "--batch-size", "8",
                                                  "--s3-endpoint", "http://minio:9000"])).resolve()
    assert (merged.run.actors, merged.run.batch_size) == ((1, 4), 8)
    assert merged.engine.image_tokens == 1120 and merged.storage.endpoint_url == "http://minio:9000"
    assert merged.run.run_id == spec.run.run_id  # same inputs/settings/date -> same run


def spec(inputs=("s3://x/",), *, engine=None, output=None, **sections) -> JobSpec:
    return JobSpec(inputs=list(inputs), engine={"model": "m", **(engine or {})}, output={"uri": "o", **(output or {})},
                   **sections)


def test_run_id_changes_with_inputs_and_date():
    a = spec(run={"run_date": "2026-11-22"}).resolve()
    assert a.run.run_id.startswith("20261122-")
    assert spec(run={"run_date": "2026-11-23"}).resolve().run.run_id != a.run.run_id
    assert spec(["s3://y/"], run={"run_date": "2026-11-22"}).resolve().run.run_id != a.run.run_id


@pytest.mark.parametrize("bad", [dict(engine=dict(image_tokens=100)), dict(run=dict(error_threshold=2)),
                                 dict(run=dict(run_date="22/11/2026")), dict(run=dict(actors=(3, 2))),
                                 dict(run=dict(run_id="a b")), dict(pages=dict(pdf_dpi=0)),
                                 dict(output=dict(retries=-1)), dict(pages=dict(pdf_text="always")),
                                 dict(output=dict(json_schema='{"type": 3}'))])
def test_invalid_specs_refused(bad):
    with pytest.raises(ValueError):
        spec(**bad)


def test_validation_is_pure_and_io_happens_at_resolve(tmp_path):
    """A schema file is read by resolve() (where the job starts), once, not by validation; a missing
    one is refused there naming the setting."""
    missing = spec(output={"json_schema": "/nonexistent/schema.json"})  # no I/O: validation passes
    with pytest.raises(ValueError, match="json_schema: cannot use '/nonexistent/schema.json'"):
        missing.resolve()
    path = tmp_path / "schema.json"
    path.write_text('{"type": "object"}')
    resolved = spec(output={"json_schema": str(path)}).resolve()
    path.unlink()  # read once: the resolved spec carries the schema itself
    assert resolved.output.json_schema == '{"type":"object"}' and resolved.resolve() == resolved


def test_unknown_yaml_field_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: [a]\noutput: {uri: o}\nengine: {model: m}\nrun: {batchsize: 3}\n")
    with pytest.raises(ValueError, match="batchsize"):
        JobSpec.from_yaml(path)


def test_docparse_options_from_flags(tmp_path):
    schema = tmp_path / "invoice.schema.json"
    schema.write_text('{"type": "object", "properties": {"total": {"type": "number"}}}')
    base = ["--input", "s3://x/", "--output", "o", "--model", "m", "--run-date", "2026-11-22"]
    plain = spec_from_args(parser().parse_args(base)).resolve()
    assert (plain.output.retries, plain.output.strict, plain.pages.pdf_text, plain.output.json_schema) == (
        0, False, "ignore", None)
    docparse = spec_from_args(parser().parse_args(base + ["--retries", "3", "--strict", "--pdf-text", "prefer",
                                                          "--json-schema", str(schema), "--schema-column", "sch"]))
    docparse = docparse.resolve()
    assert (docparse.output.retries, docparse.output.strict, docparse.pages.pdf_text,
            docparse.parquet.schema_column) == (3, True, "prefer", "sch")
    assert docparse.output.json_schema == '{"type":"object","properties":{"total":{"type":"number"}}}'
    # What is computed changes the run id; the defaults keep earlier runs' ids.
    assert docparse.run.run_id != plain.run.run_id
    assert spec(output={"retries": 2}, run={"run_date": "2026-11-22"}).resolve().run.run_id == plain.run.run_id
    inline = spec(output={"json_schema": {"type": "object"}})
    assert inline.output.json_schema == '{"type":"object"}'
    assert JobSpec.model_validate(inline.model_dump()).output.json_schema == inline.output.json_schema


def test_engine_concurrency_flags_and_the_rows_in_flight_rule():
    base = ["--input", "s3://x/", "--output", "o", "--model", "m"]
    plain = spec_from_args(parser().parse_args(base)).resolve()
    assert (plain.engine.max_num_seqs, plain.engine.max_num_batched_tokens, plain.run.max_concurrent_batches) == (
        None, None, None)
    settings = plain.engine
    assert (settings.max_num_seqs, settings.max_num_batched_tokens) == (None, None)  # vLLM's own on GPU
    # Rows in flight per actor cover what ray.data.llm admits into the engine (1.1 x max_num_seqs).
    assert plain.run.batch_size * plain.run.concurrent_batches(64) >= 1.1 * 64
    assert plain.run.concurrent_batches(1024) == 71 and plain.run.concurrent_batches(8) == 1  # batch 16
    fast = spec_from_args(parser().parse_args(base + ["--max-num-seqs", "512", "--max-num-batched-tokens", "16384",
                                                      "--max-concurrent-batches", "3"])).resolve()
    assert (fast.engine.max_num_seqs, fast.engine.max_num_batched_tokens) == (512, 16384)
    assert fast.run.concurrent_batches(512) == 3  # set by the user: kept
    assert fast.run.run_id == plain.run.run_id  # how fast, not what is computed
    with pytest.raises(ValueError):
        spec(run={"max_concurrent_batches": 0})


def test_every_setting_from_cli_yaml_and_python(tmp_path):
    """One option per field, in one group per section; the same value set through the command line,
    a YAML spec and Python gives the same spec, and a spec round-trips through JSON."""
    from model.config import flags

    options = flags(JobSpec)
    assert len(set(options.values())) == len(options)  # every field has its own option
    help_text = parser().format_help()
    for section in ("engine:", "output:", "pages:", "audio:", "parquet:", "storage:", "run:"):
        assert "\n" + section in help_text
    argv = ["--input", "s3://x/", "--output", "o", "--model", "m", "--gpu-memory-utilization", "0.8",
            "--kv-cache-dtype", "fp8", "--engine-kwargs", '{"enable_prefix_caching": false}', "--s3-region", "eu-1",
            "--s3-profile", "team-b", "--s3-read-attempts", "5", "--max-audio-seconds", "60", "--actors", "2,3"]
    from_cli = spec_from_args(parser().parse_args(argv))
    path = tmp_path / "job.yaml"
    path.write_text("inputs: [s3://x/]\noutput: {uri: o}\n"
                    "engine: {model: m, gpu_memory_utilization: 0.8, kv_cache_dtype: fp8,"
                    " engine_kwargs: {enable_prefix_caching: false}}\n"
                    "storage: {region: eu-1, profile: team-b, read_attempts: 5}\naudio: {max_audio_seconds: 60}\n"
                    "run: {actors: [2, 3]}\n")
    from_python = spec(engine={"gpu_memory_utilization": 0.8, "kv_cache_dtype": "fp8",
                               "engine_kwargs": {"enable_prefix_caching": False}},
                       storage={"region": "eu-1", "profile": "team-b", "read_attempts": 5},
                       audio={"max_audio_seconds": 60}, run={"actors": (2, 3)})
    assert from_cli == JobSpec.from_yaml(path) == from_python
    assert JobSpec.model_validate_json(from_cli.model_dump_json()) == from_cli
    kwargs = from_cli.engine.model_copy(update={"device": "gpu"}).vllm_kwargs()
    assert (kwargs["gpu_memory_utilization"], kwargs["kv_cache_dtype"], kwargs["enable_prefix_caching"]) == (
        0.8, "fp8", False)


def test_an_engine_setting_vllm_does_not_know_fails_when_the_job_starts(tmp_path):
    """Before preflight, Ray or an engine: a configuration error (exit 2) naming the setting."""
    from jobs.exit_codes import ConfigError
    from jobs.pipeline import run_job

    (tmp_path / "in").mkdir()
    base = dict(inputs=[str(tmp_path / "in")], output={"uri": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="engine_kwargs: no_such_argument is not a vLLM engine argument"):
        run_job(JobSpec(**base, engine={"model": "m", "engine_kwargs": {"no_such_argument": 1}}))
    with pytest.raises(ConfigError, match="kv_cache_dtype must be one of"):
        run_job(JobSpec(**base, engine={"model": "m", "kv_cache_dtype": "fp7"}))
    assert not (tmp_path / "out").exists()
