"""jobs.submit turns any form of job spec into the whole spec the cluster runs, checked before submission."""

from __future__ import annotations

import shlex

import pytest

from jobs.spec import JobSpec
from jobs.submit import job_command, merge_runtime_env, resolve_spec

ARGS = [
    "--input", "s3://scans/2026-11-21/", "--input", "/data/calls", "--output", "s3://results/nightly",
    "--model", "/models/gemma-4-12b-it", "--device", "gpu", "--image-tokens", "1120", "--actors", "2,8",
    "--error-threshold", "0.05", "--uri-column", "path", "--s3-endpoint", "http://minio.internal:9000",
]


def cluster_side(command: list[str]) -> JobSpec:
    """What `python -m jobs.run` on the cluster makes of the submitted command line."""
    assert command[:3] == ["python", "-m", "jobs.run"]
    return resolve_spec(shlex.split(shlex.join(command))[3:])


def test_spec_round_trip_pins_run_date_and_id():
    spec = resolve_spec(ARGS)
    assert spec.run.run_date and spec.run.run_id
    assert cluster_side(job_command(spec)) == spec  # the cluster runs exactly the notebook's spec


def test_spec_object_and_dict_forms():
    spec = resolve_spec(JobSpec(inputs=["/in"], output={"uri": "/out", "max_new_tokens": 64}, engine={"model": "/m"},
                                run={"run_date": "2026-11-20"}))
    assert cluster_side(job_command(spec)) == spec
    as_dict = {"inputs": ["/in"], "output": {"uri": "/out", "max_new_tokens": 64}, "engine": {"model": "/m"},
               "run": {"run_date": "2026-11-20"}}
    assert resolve_spec(as_dict) == spec


def test_every_setting_travels():
    """Settings with no option of their own before (storage region, timeouts) reach the cluster too."""
    spec = resolve_spec(ARGS)
    spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"region": "eu-central-1",
                                                                              "request_timeout_s": 5.0})})
    back = cluster_side(job_command(spec))
    assert back == spec and back.storage.region == "eu-central-1" and back.storage.request_timeout_s == 5.0


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
    command = job_command(spec)
    assert str(schema) not in shlex.join(command)
    schema.unlink()  # not on the cluster
    back = cluster_side(command)
    assert (back.output.strict, back.output.retries, back.pages.pdf_text) == (True, 2, "prefer")
    assert back.output.json_schema == '{"type":"object","required":["total"]}' == spec.output.json_schema
    assert back.run.run_id == spec.run.run_id
    assert resolve_spec(ARGS).output.strict is False


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
