"""A store that starts refusing writes in the middle of a run, end to end.

A real `python -m jobs.run` driver (its own local Ray, the vLLM CPU engine, the tiny checkpoint)
writes its output to the real S3 server (moto) through the fault proxy. Once the first work-area
files are written, the proxy starts answering every CompleteMultipartUpload the way moto 5.2.1 does
(a 200 the AWS SDK inside pyarrow reads as INTERNAL_FAILURE; pyarrow writes every object as a
multipart upload), so every later work-area write fails. The job must stop with exit 1 and the
storage's answer, leave nothing running, and publish no tables; once the store accepts writes again,
the same command resumes from the work area: every source exactly once, and the sources finished
before the refusal are not inferred again.

The time from the refusal to the exit is a figure, not an assertion bound beyond the job timeout:
it is the retries of the AWS SDK (8 attempts) inside each of Ray Data's write attempts (10, with
backoff up to 32 s), which count INTERNAL_FAILURE as transient.
"""

from __future__ import annotations

import json
import os
import time

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from connectors.storage import StorageConfig
from tests.reliability.faultproxy import FaultPlan, FaultProxy
from tests.reliability.figures import report
from tests.reliability.jobrunner import JobProcess, job_args
from tests.reliability.test_batch_faults import _pages_dir

pytestmark = pytest.mark.reliability

BUCKET = "rel-refusal"
PAGES = int(os.environ.get("RELIABILITY_REFUSAL_PAGES", "24"))
TIMEOUT_S = float(os.environ.get("RELIABILITY_JOB_TIMEOUT_S", "900"))
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _keys(fs: pafs.S3FileSystem, prefix: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True))
    except FileNotFoundError:
        return []
    return [i.path for i in infos if i.type == pafs.FileType.File]


def _table(fs: pafs.S3FileSystem, name: str):
    return pads.dataset(f"{BUCKET}/out/{name}", filesystem=fs, format="parquet", partitioning="hive").to_table()


@pytest.fixture(scope="module")
def refusal(s3_endpoint, tiny_checkpoint, tmp_path_factory):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    work = tmp_path_factory.mktemp("refusal")
    expected = _pages_dir(work / "in", PAGES)
    fs = StorageConfig(endpoint_url=s3_endpoint).s3()  # straight to moto, not through the proxy
    proxy = FaultProxy(s3_endpoint, FaultPlan())
    proxy.start()
    env = {**CREDENTIALS}
    args = job_args([str(work / "in")], f"s3://{BUCKET}/out", str(tiny_checkpoint), run_id="refused",
                    extra=["--batch-size", "2", "--max-concurrent-batches", "1", "--s3-endpoint", proxy.url])
    try:
        first = JobProcess(args, env, work, "refused").start()
        work_prefix = "out/_work/refused/"
        first.wait_for(lambda: _keys(fs, work_prefix), "the first work-area files", TIMEOUT_S)
        written_before = _keys(fs, work_prefix)
        proxy.set_plan(FaultPlan(refuse_multipart=True))
        refused_at = time.time()
        rc = first.wait(TIMEOUT_S)
        stop_s = time.time() - refused_at
        refused_completes = proxy.multipart_refused
        left = first.leftovers(90)
        published = _keys(fs, "out/sources/") + _keys(fs, "out/segments/")
        proxy.set_plan(FaultPlan())
        second = JobProcess(args, env, work, "resumed").start()
        rc2 = second.wait(TIMEOUT_S)
        left2 = second.leftovers(90)
        yield dict(expected=expected, fs=fs, first=first, rc=rc, stop_s=stop_s, left=left, published=published,
                   written_before=written_before, refused_completes=refused_completes, second=second, rc2=rc2, left2=left2, proxy=proxy)
    finally:
        proxy.stop()


def test_a_store_refusing_writes_mid_run_stops_the_job_with_its_answer(refusal):
    log = refusal["first"].log()
    assert refusal["rc"] == 1, refusal["first"].full_log()[-5000:]
    assert "INTERNAL_FAILURE" in log and "CompleteMultipartUpload" in log, log[-3000:]
    assert refusal["published"] == [], "tables were published by a run whose writes failed"
    assert not refusal["left"], f"processes outlived the failed job: {refusal['left']}"


def test_the_next_run_resumes_every_source_exactly_once(refusal):
    assert refusal["rc2"] == 0, refusal["second"].full_log()[-5000:]
    assert not refusal["left2"], refusal["left2"]
    fs = refusal["fs"]
    sources, segments = _table(fs, "sources"), _table(fs, "segments")
    ids = sources.column("source_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == refusal["expected"]
    assert sources.column("status").to_pylist().count("ok") == len(ids)
    keys = list(zip(segments.column("source_id").to_pylist(), segments.column("segment_index").to_pylist()))
    assert len(keys) == len(set(keys)), "duplicate segment rows"
    # The first run's work files written before the refusal are kept and read, not recomputed.
    with fs.open_input_stream(f"{BUCKET}/out/summaries/run_date=2026-11-22/refused.json") as stream:
        summary = json.loads(stream.read())
    skipped = summary["this_invocation"]["sources_skipped_as_done"]
    assert skipped >= 1 and summary["this_invocation"]["sources_processed"] == len(ids) - skipped
    report("write_refusal_mid_run", sources=len(ids), rows_lost=0, duplicates=0, exit_code=refusal["rc"],
           refusal_to_exit_s=round(refusal["stop_s"], 1), work_files_before=len(refusal["written_before"]),
           resumed_skipped=skipped, completes_refused=refusal["refused_completes"])
