"""Faults injected into whole batch jobs: real `python -m jobs.run` drivers, each with its own local
Ray cluster, the vLLM CPU engine on the tiny checkpoint, the real S3 server (moto) on loopback.

* corpus + object-store faults + secrets (one run): the bad-input corpus, Parquet tables with bad
  rows, an object that answers 403 and one that answers 404, all read from S3 through the
  fault-injecting proxy (a share of all requests fail transiently). The job completes, every input
  yields exactly one row (ok with a result, or an error whose message says what is wrong), peak
  memory of the whole process tree stays bounded, and the credentials appear nowhere: not in the
  driver's log, not in any Ray log file, not in the output tables or the summary.
* driver killed mid-job, then re-run: the second run skips what the first finished (its summary
  says how many) and processes only the rest; the union is complete with no duplicates.
* actor killed mid-job (in that re-run, to save an engine start): the process of the vLLM inference
  actor is SIGKILLed while items are still pending; the job completes with every source exactly
  once and no duplicated segments.

Bounded for CI through RELIABILITY_* env vars (item counts, fault rate, long-recording length).
"""

from __future__ import annotations

import os
import pathlib
import re
import secrets
import time

import pyarrow.compute as pc
import pytest

from jobs import samples
from tests.reliability import corpus
from tests.reliability.faultproxy import FaultPlan, FaultProxy
from tests.reliability.figures import report
from tests.reliability.jobrunner import JobProcess, job_args, read_summaries, read_table, scan_files, work_files

pytestmark = pytest.mark.reliability

FAULT_RATE = float(os.environ.get("RELIABILITY_FAULT_RATE", "0.2"))
JOB_LONG_AUDIO_S = float(os.environ.get("RELIABILITY_JOB_LONG_AUDIO_S", "300"))
KILL_PAGES = int(os.environ.get("RELIABILITY_KILL_PAGES", "40"))
JOB_TIMEOUT_S = float(os.environ.get("RELIABILITY_JOB_TIMEOUT_S", "900"))
# Bounds on memory (MiB). The engine process (vLLM, ~2-3 GiB on CPU) is not counted as a worker.
# The largest input the limits admit is a 100 MP page (the poster PDF is rendered down to that):
# about 0.7 GiB to render in the decode stage, and ~2.3 GiB in ray.data.llm's multimodal stages,
# which get the page at full resolution (see docs/reliability.md, findings).
WORKER_BOUND_MIB = float(os.environ.get("RELIABILITY_WORKER_MIB", "3072"))
TREE_BOUND_MIB = float(os.environ.get("RELIABILITY_TREE_MIB", "14336"))  # RSS summed: shared pages count per process
BUCKET = "rel-batch"


def _env(extra: dict | None = None) -> dict:
    # The driver starts its own local Ray with the CLI's defaults (no resource overrides): what a
    # user running `python -m jobs.run` on a 2-core machine gets.
    return dict(extra or {})


def _assert_exactly_once(sources, segments, expected_ids: set[str]):
    ids = sources.column("source_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate source rows"
    assert set(ids) == expected_ids, (expected_ids - set(ids), set(ids) - expected_ids)
    keys = list(zip(segments.column("source_id").to_pylist(), segments.column("segment_index").to_pylist()))
    assert len(keys) == len(set(keys)), "duplicate segment rows"
    return len(ids), len(keys)


# -- corpus + store faults + secrets ------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_run(s3_endpoint, tiny_checkpoint, tmp_path_factory):
    import boto3

    work = tmp_path_factory.mktemp("corpus_job")
    key_id = "AKIAREL" + secrets.token_hex(6).upper()
    secret = "relSecret/" + secrets.token_urlsafe(24)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    cases = corpus.file_cases(work, JOB_LONG_AUDIO_S)
    expected: dict[str, tuple[str, str]] = {}  # source_id or uri -> (expect, regex)
    for case in cases:
        s3.put_object(Bucket=BUCKET, Key=f"corpus/{case.filename}", Body=case.payload())
        expected[f"s3://{BUCKET}/corpus/{case.filename}"] = (case.expect, case.message or "")
    good = next(c for c in cases if c.kind == "good_png").payload()
    for name, (payload, rows) in corpus.parquet_cases(good, f"s3://{BUCKET}/nowhere/missing.png").items():
        s3.put_object(Bucket=BUCKET, Key=f"corpus/{name}", Body=payload)
        for row_id, outcome in rows:
            expected[row_id] = ("ok", "") if outcome == "ok" else ("error", outcome)
    s3.put_object(Bucket=BUCKET, Key="corpus/denied.png", Body=good)
    s3.put_object(Bucket=BUCKET, Key="corpus/vanished.png", Body=good)
    expected[f"s3://{BUCKET}/corpus/denied.png"] = ("error", r"access denied .*check the credentials")
    expected[f"s3://{BUCKET}/corpus/vanished.png"] = ("error", r"object not found")

    proxy = FaultProxy(s3_endpoint, FaultPlan(
        transient_rate=FAULT_RATE, seed=7,
        permanent={f"{BUCKET}/corpus/denied.png": 403, f"{BUCKET}/corpus/vanished.png": 404}))
    proxy.start()
    output = work / "out"
    job = JobProcess(
        # The corpus's audio is tones, not speech: fixed windows send it to the model (the VAD
        # path, the default, has its own tests in tests/jobs/test_audio_chunks.py).
        job_args([f"s3://{BUCKET}/corpus/"], str(output), str(tiny_checkpoint), run_id="corpus",
                 extra=["--s3-endpoint", proxy.url, "--segmentation", "fixed"]),
        _env({"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}),
        work, "corpus")
    started = time.time()
    job.start()
    rc = job.wait(JOB_TIMEOUT_S)
    wall = time.time() - started
    proxy.stop()
    leftovers = job.leftovers()
    yield dict(job=job, rc=rc, wall=wall, proxy=proxy, output=output, expected=expected, cases=cases,
               secrets=[key_id, secret])
    import shutil

    shutil.rmtree(job.ray_tmp, ignore_errors=True)
    assert not leftovers, leftovers


def test_corpus_job_completes_with_one_clear_row_per_input(corpus_run):
    run = corpus_run
    assert run["rc"] == 0, run["job"].full_log()[-5000:]
    sources = read_table(run["output"] / "sources")
    segments = read_table(run["output"] / "segments")
    expected = run["expected"]
    rows = {}
    for row in sources.to_pylist():
        key = row["source_id"] if row["source_id"] in expected else row["source_uri"]
        assert key not in rows, f"duplicate row for {key}"
        rows[key] = row
    assert set(rows) == set(expected), (set(expected) - set(rows), set(rows) - set(expected))
    _assert_exactly_once(sources, segments, set(sources.column("source_id").to_pylist()))
    wrong = []
    for key, (expect, pattern) in expected.items():
        row = rows[key]
        if expect == "ok":
            if row["status"] != "ok" or not row["text"] or row["num_segments"] < 1:
                wrong.append((key, "expected a result", row["status"], row["error"]))
        elif row["status"] != "error" or not re.search(pattern, row["error"] or ""):
            wrong.append((key, f"expected error /{pattern}/", row["status"], row["error"]))
    assert not wrong, "\n".join(map(str, wrong))
    long_row = rows[f"s3://{BUCKET}/corpus/long_recording.wav"]
    from model.inputs.audio_chunks import fixed_chunks

    assert long_row["num_segments"] == len(fixed_chunks(int(JOB_LONG_AUDIO_S * 16000), max_samples=30 * 16000))
    summary = read_summaries(run["output"])[-1]
    assert summary["sources"]["total"] == len(expected)
    errors = sum(1 for e, _ in expected.values() if e == "error")
    report("corpus_job", inputs=len(expected), kinds=len(run["cases"]) + 4, error_rows=errors,
           ok_rows=len(expected) - errors, rows_lost=0, duplicates=0, wall_s=round(run["wall"], 1))


def test_store_faults_were_injected_and_retried(corpus_run):
    proxy = corpus_run["proxy"]
    assert proxy.transient_injected >= 5, proxy.injected
    assert proxy.permanent_served  # the 403/404 keys were asked for and answered permanently
    report("job_store_faults", requests=proxy.requests, transient_injected=dict(proxy.injected),
           permanent_answers=dict(proxy.permanent_served), fault_rate=FAULT_RATE)


def test_corpus_job_memory_is_bounded(corpus_run):
    peak = corpus_run["job"].peak
    assert 0 < peak.decode_worker_mib < WORKER_BOUND_MIB, peak.top()
    assert peak.total_mib < TREE_BOUND_MIB, peak.top()
    report("corpus_job_memory", tree_peak_mib=round(peak.total_mib), largest_process_mib=round(peak.process_mib),
           largest_process=peak.process[:60], worker_peak_mib=round(peak.decode_worker_mib),
           by_process=peak.top(6),
           long_recording_s=JOB_LONG_AUDIO_S)


def test_credentials_never_appear_in_logs_summaries_or_outputs(corpus_run):
    run = corpus_run
    places = [run["job"].log_path, *run["output"].rglob("*"), *pathlib.Path(run["job"].ray_tmp).rglob("*")]
    scanned, hits = scan_files(places, run["secrets"])
    assert not hits, f"credential found: {hits}"
    assert scanned > 10  # the Ray logs were there to scan
    report("secrets_scan", files_scanned=scanned, credentials_found=0)


# -- every kind of end: nothing outlives the job; killed / stopped, re-run with the actor killed ------------
#
# One scenario, three invocations of the same command (engine starts are the expensive part on CPU):
# run 0's process group is SIGKILLed while its engine is still loading (the end that used to leave
# vLLM's EngineCore and Worker running for good); run 1 is stopped with SIGTERM after its first results;
# run 2, the re-run, has its vLLM inference actor SIGKILLed after its own first results and must still
# complete. After each end, every process of that run (Ray's and vLLM's: tagged with the run's
# JOBS_PROCESS_TAG, or seen in its process tree) must be gone within the stated bound.

# Bounds on how long a run's processes may outlive its end. SIGKILL of the process group: the
# driver, GCS, raylet and Ray's agents die at once, Ray's workers as soon as they see their raylet
# gone, vLLM's engine processes through the orphan guard (model/orphan_guard.py) the moment their
# Ray worker exits. SIGTERM: Ray's handler in the driver shuts its local cluster down; when the
# raylet dies before it logged the SIGTERM, Ray's dashboard and runtime-env agents take it for a
# crash and report it to the (dead) GCS with a 60 s timeout before exiting: Ray's own ~65 s, so
# 90 s allowed. The vLLM processes have their own, tight bound.
KILLED_GROUP_GRACE_S = float(os.environ.get("RELIABILITY_KILLED_GROUP_GRACE_S", "90"))
STOPPED_GRACE_S = float(os.environ.get("RELIABILITY_STOPPED_GRACE_S", "90"))
FINISHED_GRACE_S = float(os.environ.get("RELIABILITY_FINISHED_GRACE_S", "60"))
VLLM_GONE_S = float(os.environ.get("RELIABILITY_VLLM_GONE_S", "20"))  # engine processes after any end


def _pages_dir(directory: pathlib.Path, pages: int) -> set[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(pages):
        (directory / f"page-{i:03d}.png").write_bytes(
            samples.png_page(f"{samples.SAMPLE_TEXTS[i % 4]} #{i}", (160, 120)))
    from connectors.sources import stable_id

    return {stable_id(str(p)) for p in directory.iterdir()}


def _done_in_work_area(output: pathlib.Path, run_id: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.stages import WORK_SCHEMA
    from jobs.workarea import resume_state

    readable = []
    for path in work_files(output, run_id):
        try:
            readable.append(pq.read_table(path))
        except Exception:  # noqa: BLE001 - a file cut by a kill: the re-run discards it
            pass
    work = pa.concat_tables(readable, promote_options="permissive") if readable else WORK_SCHEMA.empty_table()
    return resume_state(work)


def _end(job: JobProcess, kind: str, grace_s: float, rc) -> dict:
    """Wait for the run's processes to go; the figures of that end."""
    left = job.leftovers(grace_s)
    vllm = [t for t in job.gone_after if t.startswith("VLLM::")]
    return dict(kind=kind, rc=rc, alive_at_end=job.left_at_end, left_after_grace=left,
                seconds_to_zero=round(job.gone_s, 1) if job.gone_s is not None else None, grace_s=grace_s,
                vllm_gone_s=max((job.gone_after[t] for t in vllm), default=None),
                slowest=sorted(job.gone_after.items(), key=lambda kv: -kv[1])[:3])


@pytest.fixture(scope="module")
def kill_runs(tiny_checkpoint, tmp_path_factory):
    import signal

    work = tmp_path_factory.mktemp("kills")
    # Pages only: one segment per source makes the accounting exact (a kill cannot split a source).
    expected = _pages_dir(work / "in", KILL_PAGES)
    output = work / "out"
    args = job_args([str(work / "in")], str(output), str(tiny_checkpoint), run_id="kills",
                    extra=["--batch-size", "2"])
    ends = {}

    zero = JobProcess(args, _env(), work, "kills-0").start()
    try:
        # The engine is loading: its worker process exists, the actor is still in its constructor.
        zero.wait_for(lambda: zero.processes("VLLM::Worker"), "run 0's engine to load", JOB_TIMEOUT_S)
        engine_pids = [p.pid for p in zero.processes("VLLM::")]
    finally:
        rc = zero.kill_group(signal.SIGKILL)
    ends["sigkill_group_engine_loading"] = _end(zero, "SIGKILL of the process group, engine loading", KILLED_GROUP_GRACE_S, rc)
    ends["sigkill_group_engine_loading"]["engine_processes"] = len(engine_pids)

    first = JobProcess(args, _env(), work, "kills-1").start()
    try:
        # Stop once a finished source is readable in the work area (a file still being written does
        # not count), so the first run has done some but not all of the work.
        first.wait_for(lambda: _done_in_work_area(output, "kills")[0], "run 1's first results", JOB_TIMEOUT_S)
    finally:
        rc = first.kill_group(signal.SIGTERM)
    ends["sigterm"] = _end(first, "SIGTERM of the process group", STOPPED_GRACE_S, rc)
    done, partial = _done_in_work_area(output, "kills")
    files_before = set(work_files(output, "kills"))

    second = JobProcess(args, _env(), work, "kills-2").start()
    actors, killed_at, done_at_actor_kill = [], None, None
    try:
        second.wait_for(lambda: set(work_files(output, "kills")) - files_before, "run 2's first results",
                        JOB_TIMEOUT_S)
        actors = second.processes("MapBatches(vLLMEngineStageUDF)")
        done_at_actor_kill = len(_done_in_work_area(output, "kills")[0])
        for actor in actors:
            os.kill(actor.pid, signal.SIGKILL)
        killed_at = time.time()
        rc = second.wait(JOB_TIMEOUT_S)
    finally:
        if second.proc.poll() is None:
            second.kill_driver()
    recovered_s = time.time() - killed_at if killed_at else None
    ends["success"] = _end(second, "success (exit 0)", FINISHED_GRACE_S, rc)
    yield dict(expected=expected, output=output, ends=ends, done=done, partial=partial,
               second=second, rc=rc, actors=actors, done_at_actor_kill=done_at_actor_kill,
               recovered_s=recovered_s)
    import shutil

    for job in (zero, first, second):
        shutil.rmtree(job.ray_tmp, ignore_errors=True)


def test_nothing_outlives_a_job_killed_stopped_or_finished(kill_runs):
    ends = kill_runs["ends"]
    engine_loading = ends["sigkill_group_engine_loading"]
    assert engine_loading["engine_processes"] >= 2, "the kill did not come while vLLM's engine was loading"
    for name, end in ends.items():
        assert not end["left_after_grace"], f"{name}: outlived the job by {end['grace_s']} s: {end['left_after_grace']}"
        assert end["vllm_gone_s"] is None or end["vllm_gone_s"] <= VLLM_GONE_S, (name, end)
    assert ends["sigterm"]["rc"] != 0
    report("leftovers", **{name: {k: v for k, v in end.items() if k != "left_after_grace"}
                           for name, end in ends.items()})


def test_inference_actor_killed_mid_job(kill_runs):
    run = kill_runs
    assert run["actors"], "no inference actor process found"
    assert run["rc"] == 0, run["second"].full_log()[-5000:]
    assert run["done_at_actor_kill"] < len(run["expected"]), "the kill came after the work was done"
    sources = read_table(run["output"] / "sources")
    segments = read_table(run["output"] / "segments")
    n_sources, n_segments = _assert_exactly_once(sources, segments, run["expected"])
    statuses = pc.value_counts(sources.column("status")).to_pylist()
    assert sources.filter(pc.equal(sources.column("status"), "ok")).num_rows == len(run["expected"]), statuses
    report("actor_kill", sources=n_sources, segments=n_segments, done_when_killed=run["done_at_actor_kill"],
           actors_killed=len(run["actors"]), recovered_in_s=round(run["recovered_s"], 1), rows_lost=0,
           duplicates=0)


def test_stopped_job_rerun_finishes_only_the_rest(kill_runs):
    run = kill_runs
    expected, done = run["expected"], run["done"]
    assert 0 < len(done) < len(expected), f"stop not mid-job: {len(done)} of {len(expected)} done"
    assert run["rc"] == 0, run["second"].full_log()[-5000:]
    summaries = read_summaries(run["output"])
    assert len(summaries) == 1  # the killed and the stopped run wrote none; the re-run wrote one
    inv = summaries[0]["this_invocation"]
    assert inv["sources_skipped_as_done"] == len(done), inv
    assert inv["sources_processed"] == len(expected) - len(done), inv
    sources = read_table(run["output"] / "sources")
    segments = read_table(run["output"] / "segments")
    n_sources, _ = _assert_exactly_once(sources, segments, expected)
    # Finished work was not recomputed: sources done by run 1 have work rows of run 1's attempt only.
    attempts: dict[str, set] = {}
    for row in read_table(run["output"] / "_work" / "kills" / "segments").select(["source_id", "attempt"]).to_pylist():
        attempts.setdefault(row["source_id"], set()).add(row["attempt"])
    recomputed = [s for s in done if len(attempts.get(s, ())) > 1]
    assert not recomputed, recomputed
    report("stopped_rerun", sources=len(expected), done_by_first=len(done), partial=len(run["partial"]),
           skipped_by_second=inv["sources_skipped_as_done"], processed_by_second=inv["sources_processed"],
           union=n_sources, duplicates=0)
