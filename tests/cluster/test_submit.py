"""Notebook API end to end: submit the batch job to a real Ray head, wait, read the tables back.

Real parts: the Ray head of conftest.py (own temp dir, token auth, Job Submission API), the
project's runtime env (working_dir + plugin metadata), the batch job `python -m jobs.run` with the
vLLM CPU engine on the tiny checkpoint, and an S3 endpoint on loopback (moto server) for inputs,
outputs and reading the results back with pyarrow.

Two job runs in all (one engine start): the first run of a night, then the same nightly command
again for the same date with a stricter error threshold. The second must not duplicate a row, must
not recompute anything, and must end FAILED because 1 of 3 sources errored (> 10 %), which is how a
scheduler (RayJob -> CronJob) learns about a bad night.
"""

from __future__ import annotations

import subprocess
import sys

import boto3
import pyarrow as pa
import pytest

from jobs import samples
from jobs.exit_codes import ExitCode
from jobs.submit import JobHandle, read_table, submit

RUN_DATE = "2026-11-21"
OUTPUT = "s3://cluster-out/nightly"


@pytest.fixture(scope="module")
def inputs(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    for bucket in ("cluster-in", "cluster-out"):
        s3.create_bucket(Bucket=bucket)
    objects = {
        "incoming/page.png": samples.png_page("Invoice 42\nTotal: 17 EUR"),
        "incoming/clip.wav": samples.wav_bytes(samples.speech_recording(4.0, seed=1, pauses=(0.3, 1.0))[0]),
        "incoming/broken.pdf": b"%PDF-1.7 this is not really a PDF",
    }
    for key, body in objects.items():
        s3.put_object(Bucket="cluster-in", Key=key, Body=body)
    return {f"s3://cluster-in/{key}" for key in objects}


def _job_env(s3_endpoint: str) -> dict:
    # Credentials go to the job explicitly (submit never copies them from the notebook's env).
    return {"env_vars": {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
    }}


def _args(checkpoint, threshold: float) -> list[str]:
    return [
        "--input", "s3://cluster-in/incoming/", "--output", OUTPUT, "--model", str(checkpoint),
        "--device", "cpu", "--max-new-tokens", "8", "--max-model-len", "2048", "--batch-size", "4",
        "--run-date", RUN_DATE, "--error-threshold", str(threshold),
    ]


@pytest.fixture(scope="module")
def first_run(ray_head, tiny_checkpoint, inputs, s3_endpoint) -> JobHandle:
    handle = submit(_args(tiny_checkpoint, 0.5), address=ray_head.address, token=ray_head.token,
                    runtime_env=_job_env(s3_endpoint))
    status = handle.wait(timeout=1200, poll_s=3)
    assert status == "SUCCEEDED", handle.logs()[-6000:]
    return handle


def test_submit_wait_and_read_results(first_run, inputs):
    handle = first_run
    assert handle.run_date == RUN_DATE and handle.run_id.startswith("20261121-")
    assert handle.status() == "SUCCEEDED"
    assert f"run {handle.run_id}" in handle.logs()  # the driver's output, through the job API
    sources = handle.sources()
    assert isinstance(sources, pa.Table)
    rows = {r["source_uri"]: r for r in sources.to_pylist()}
    assert set(rows) == inputs  # exactly one row per input file
    assert rows["s3://cluster-in/incoming/page.png"]["status"] == "ok"
    assert rows["s3://cluster-in/incoming/clip.wav"]["status"] == "ok"
    bad = rows["s3://cluster-in/incoming/broken.pdf"]
    assert bad["status"] == "error" and bad["error"] and bad["text"] is None
    assert all(r["run_id"] == handle.run_id and r["run_date"] == RUN_DATE for r in rows.values())

    segments = handle.segments_df()  # pandas straight from s3://
    ok = segments[segments.status == "ok"]
    assert set(ok.source_uri) == {"s3://cluster-in/incoming/page.png", "s3://cluster-in/incoming/clip.wav"}
    assert (ok.output_tokens > 0).all()

    summary = handle.summary()  # kept beside the tables
    assert summary["run_id"] == handle.run_id and summary["run_date"] == RUN_DATE
    assert summary["sources"] == {"total": 3, "ok": 2, "error": 1, "by_modality": summary["sources"]["by_modality"]}
    assert summary["passed"] is True


def test_same_night_again_from_the_cli_no_duplicates_and_threshold_fails(first_run, ray_head, tiny_checkpoint, s3_endpoint):
    """`python -m jobs.submit --address URL -- <jobs.run args>`, as a scheduler would run it."""
    before = first_run.segments().sort_by([("source_uri", "ascending"), ("segment_index", "ascending")])
    env_flags = [f"--env={k}={v}" for k, v in _job_env(s3_endpoint)["env_vars"].items()]
    cli = subprocess.run(
        [sys.executable, "-m", "jobs.submit", "--address", ray_head.address, "--token-file", str(ray_head.token_file),
         *env_flags, "--timeout", "900", "--", *_args(tiny_checkpoint, 0.1)],
        capture_output=True, text=True, timeout=1000,
    )
    # 1 of 3 sources errored > 10 %: the job fails, and the command exits with the driver's own code
    # for "threshold exceeded" (what a scheduler sees), not the 1 of a failed job or the 2 of a bad flag.
    assert cli.returncode == ExitCode.THRESHOLD_EXCEEDED == 3, cli.stdout[-4000:] + cli.stderr[-4000:]
    assert ": FAILED" in cli.stdout and f"run {first_run.run_id}" in cli.stdout  # job log streamed
    assert "error rate 0.333 (threshold 0.1): FAILED" in cli.stdout

    sources = read_table(OUTPUT, "sources", run_date=RUN_DATE)  # every row of that night
    uris = sources.column("source_uri").to_pylist()
    assert len(uris) == len(set(uris)) == 3
    segments = read_table(OUTPUT, "segments", run_date=RUN_DATE)
    keys = list(zip(segments.column("source_uri").to_pylist(), segments.column("segment_index").to_pylist()))
    assert len(keys) == len(set(keys)) == before.num_rows
    after = segments.sort_by([("source_uri", "ascending"), ("segment_index", "ascending")])
    assert after.column("text").to_pylist() == before.column("text").to_pylist()

    summary = first_run.summary()  # same run id: the second invocation rewrote the night's summary
    assert summary["this_invocation"]["sources_processed"] == 0  # nothing recomputed
    assert summary["this_invocation"]["sources_skipped_as_done"] == 3
    assert summary["passed"] is False and summary["error_threshold"] == 0.1
