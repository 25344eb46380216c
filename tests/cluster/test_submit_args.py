"""jobs.submit turns any form of job spec into complete `jobs.run` arguments, checked before submission."""

from __future__ import annotations

import dataclasses

import pytest

from jobs.spec import JobSpec
from jobs.submit import merge_runtime_env, resolve_spec, spec_to_argv

ARGS = [
    "--input", "s3://scans/2026-11-21/", "--input", "/data/calls", "--output", "s3://results/nightly",
    "--model", "/models/gemma-4-12b-it", "--device", "gpu", "--image-tokens", "1120", "--actors", "2,8",
    "--error-threshold", "0.05", "--uri-column", "path", "--s3-endpoint", "http://minio.internal:9000",
]


def test_argv_round_trip_pins_run_date_and_id():
    spec = resolve_spec(ARGS)
    argv = spec_to_argv(spec)
    assert argv[argv.index("--run-date") + 1] == spec.run_date
    assert argv[argv.index("--run-id") + 1] == spec.run_id
    assert resolve_spec(argv) == spec  # the cluster parses exactly the notebook's spec


def test_spec_object_and_dict_forms():
    spec = JobSpec(inputs=["/in"], output="/out", model="/m", run_date="2026-11-20", max_new_tokens=64)
    assert resolve_spec(spec_to_argv(spec)) == spec
    as_dict = {"inputs": ["/in"], "output": "/out", "model": "/m", "run_date": "2026-11-20", "max_new_tokens": 64}
    assert resolve_spec(as_dict) == spec


def test_a_setting_without_flag_is_refused_not_dropped():
    spec = resolve_spec(ARGS)
    spec = dataclasses.replace(spec, storage=dataclasses.replace(spec.storage, region="eu-central-1"))
    with pytest.raises(ValueError, match="storage.region"):
        spec_to_argv(spec)


def test_bad_arguments_fail_before_submission():
    with pytest.raises(SystemExit):
        resolve_spec(["--input", "/in", "--output", "/out", "--model", "/m", "--image-tokens", "123"])


def test_runtime_env_merge_keeps_project_env_vars():
    merged = merge_runtime_env({"working_dir": "/w", "env_vars": {"A": "1"}}, {"env_vars": {"B": "2"}, "pip": ["x"]})
    assert merged == {"working_dir": "/w", "env_vars": {"A": "1", "B": "2"}, "pip": ["x"]}


def test_document_parsing_options_travel_to_the_cluster(tmp_path):
    """--strict is a switch; the JSON schema travels as its text (a notebook's local file is not on
    the cluster)."""
    schema = tmp_path / "invoice.json"
    schema.write_text('{"type": "object", "required": ["total"]}')
    spec = resolve_spec(ARGS + ["--strict", "--retries", "2", "--pdf-text", "prefer", "--json-schema", str(schema)])
    argv = spec_to_argv(spec)
    assert "--strict" in argv and "True" not in argv
    assert argv[argv.index("--json-schema") + 1] == '{"type":"object","required":["total"]}'
    back = resolve_spec(argv)
    assert (back.strict, back.retries, back.pdf_text) == (True, 2, "prefer")
    assert back.schema_text() == spec.schema_text() and back.run_id == spec.run_id
    assert "--strict" not in spec_to_argv(resolve_spec(ARGS))


def test_a_broken_log_stream_still_ends_with_the_run_summary(capsys):
    """The console follow-up when Ray's log stream drops mid-run (a head restart, a proxy timeout):
    status changes still print, then the summary the job wrote. Ray's job client is a stand-in here:
    a real dropped stream cannot be provoked on cue; the real path is tests/cluster/test_submit.py."""
    from jobs import submit

    statuses = iter(["RUNNING", "RUNNING", "SUCCEEDED"])

    class Client:
        async def tail_job_logs(self, job_id):
            yield "[jobs] attempt 1/3: streaming 2 of 2 input units\n"
            raise ConnectionError("connection reset by peer")

    class Handle:
        job_id, client = "g4u-x", Client()

        def status(self):
            return next(statuses)

        def summary(self):
            return {"run_id": "r1", "run_date": "2026-12-04", "sources": {"total": 2, "ok": 2, "error": 0,
                    "by_modality": {}}, "pages": 2, "audio_seconds": 0.0, "segments": 2,
                    "tokens": {"input": 10, "output": 4}, "this_invocation": {"sources_processed": 2,
                    "sources_skipped_as_done": 0, "segments_inferred": 2, "items_per_s": 1.0},
                    "errors_sample": [], "error_rate": 0.0, "error_threshold": 0.1, "passed": True,
                    "tables": {"sources": "/o/sources", "segments": "/o/segments"}, "summary_path": "/o/s.json"}

    status, streamed = submit._follow(Handle(), timeout=60)
    assert (status, streamed) == ("SUCCEEDED", False)
    submit._print_summary(Handle())
    out = capsys.readouterr().out
    assert "log stream ended (connection reset by peer)" in out
    assert "job g4u-x: RUNNING" in out and "job g4u-x: SUCCEEDED" in out
    assert out.index("the run summary from the output") < out.index("== run r1 (2026-12-04) ==")
    assert "error rate 0.000 (threshold 0.1): PASSED" in out
