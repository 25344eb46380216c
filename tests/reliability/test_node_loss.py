"""A lost node, twice in one run, on a three-node Ray cluster on loopback.

The cluster (tests/reliability/loopback_cluster.py): a head that runs nothing (`--num-cpus=0`) and
two worker nodes, token authentication on as Ray 2.60 enables it by default; the job is a real
`python -m jobs.run` driver attached with `RAY_ADDRESS` (and `RAY_AUTH_MODE=token`), reading and
writing a directory all nodes share, on the tiny checkpoint. A node loss is every process of that
node SIGKILLed at once: raylet, agents, workers, and the vLLM engine processes on it; its object
store's blocks are gone with it.

1. Just after the engine is ready (its actor out of its constructor, nothing written yet), the
   engine's node is killed. A replacement node joins (as an autoscaler or an operator would add
   one), so the cluster is back to two workers.
2. After part of the output was written, the node the engine now runs on is killed.
3. Then a third job on the same cluster: its driver alone is SIGKILLed once its engine is ready, and
   none of its processes (engine actor, vLLM's engine core and worker) may outlive it on any node.

The run must finish (exit 0) with every source exactly once, all `ok`: through Ray's own actor
restarts, task retries and lineage reconstruction where they recover, and through the job's own
attempts from the work area (`--max-attempts`) where they do not. Afterwards nothing of the job
(its tag) runs anywhere on the cluster, and the cluster's own processes stop cleanly.

Bounded for CI: RELIABILITY_NODE_LOSS_PAGES sources (one page each). RELIABILITY_NODE_LOSS_BASELINE=1
first runs the same job without kills on the same cluster, for the extra-wall-time figure.
"""

from __future__ import annotations

import os
import pathlib
import re
import time

import psutil
import pytest

from tests.reliability.figures import report
from tests.reliability.jobrunner import (BASE_ENV, CLUSTER_SINGLETONS, JobProcess, job_args, read_summaries,
                                         read_table, working_engine)
from tests.reliability.loopback_cluster import CLIENT_ENV, LoopbackCluster
from tests.reliability.test_batch_faults import _assert_exactly_once, _done_in_work_area, _pages_dir

pytestmark = pytest.mark.reliability

PAGES = int(os.environ.get("RELIABILITY_NODE_LOSS_PAGES", "36"))
TIMEOUT_S = float(os.environ.get("RELIABILITY_JOB_TIMEOUT_S", "900"))
BASELINE = os.environ.get("RELIABILITY_NODE_LOSS_BASELINE") == "1"
NODE_CPUS = 4  # logical CPUs per worker node: the engine (1) plus the light stages beside it
# The GCS declares a node dead after this many missed 1 s health checks (Ray's defaults take ~15 s
# or more; a test setting, the job does not depend on it).
HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
JOB_GONE_S = float(os.environ.get("RELIABILITY_ATTACHED_GONE_S", "60"))


def _engine_ready(job: JobProcess):
    """The job's engine actor once out of its constructor (Ray's process title drops `.__init__`)."""
    actors = [p for p in job.tagged_processes("MapWorker(MapBatches(vLLMEngineStageUDF))")
              if "__init__" not in " ".join(p.cmdline())]
    cores = job.tagged_processes("VLLM::EngineCore")
    return actors[0] if actors and cores else None


def _name(proc) -> str:
    try:
        return proc.name()
    except psutil.Error:  # gone between the listing and the read
        return ""


@pytest.fixture(scope="module")
def node_loss(tiny_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("nodeloss")
    expected = _pages_dir(work / "in", PAGES)
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
                **BASE_ENV}
    cluster = LoopbackCluster(work, base_env, head_env=HEAD_ENV)
    jobs: list[JobProcess] = []
    try:
        started = time.time()
        cluster.start_head()
        cluster.add_node("a", NODE_CPUS)
        cluster.add_node("b", NODE_CPUS)
        cluster_s = time.time() - started
        env = {"RAY_ADDRESS": cluster.address, **CLIENT_ENV}
        baseline_s = None
        if BASELINE:
            base = JobProcess(job_args([str(work / "in")], str(work / "base-out"), str(tiny_checkpoint),
                                       run_id="baseline", extra=["--batch-size", "2"]), env, work, "baseline")
            jobs.append(base)
            t0 = time.time()
            assert base.start().wait(TIMEOUT_S) == 0, base.full_log()[-4000:]
            baseline_s = time.time() - t0
            base.leftovers(JOB_GONE_S, keep=CLUSTER_SINGLETONS)
        output = work / "out"
        job = JobProcess(job_args([str(work / "in")], str(output), str(tiny_checkpoint), run_id="nodeloss",
                                  extra=["--batch-size", "2", "--max-concurrent-batches", "1",
                                         "--max-attempts", "3"]), env, work, "nodeloss")
        jobs.append(job)
        t0 = time.time()
        job.start()
        kills = []

        # 1. just after the engine is ready
        actor = job.wait_for(lambda: _engine_ready(job), "the engine to be ready", TIMEOUT_S)
        node = cluster.node_of(actor.pid)
        assert node in ("a", "b"), f"engine actor {actor.pid} on {node}"
        done_before = len(_done_in_work_area(output, "nodeloss")[0])
        killed = cluster.kill_node(node)
        kills.append(dict(moment="engine ready", node=node, processes_killed=killed, done_before=done_before,
                          at_s=round(time.time() - t0, 1)))
        cluster.add_node("c", NODE_CPUS)  # the replacement

        # 2. after part of the output was written (since the first kill), kill the engine's node again:
        # the replacement engine has finished a batch, and its rows are in the work area.
        first = actor.pid
        actor = job.wait_for(lambda: working_engine(job, {first}, anywhere=True), "the new engine's first batch",
                             TIMEOUT_S)

        def written():
            done = len(_done_in_work_area(output, "nodeloss")[0])
            return done if done > done_before else None

        done = job.wait_for(written, "output written after the first node loss", TIMEOUT_S)
        node = cluster.node_of(actor.pid)
        assert node is not None and node != kills[0]["node"], node
        assert done < len(expected), "the job finished before the second kill"
        killed = cluster.kill_node(node)
        kills.append(dict(moment="part of the output written", node=node, processes_killed=killed,
                          done_before=done, at_s=round(time.time() - t0, 1)))

        rc = job.wait(TIMEOUT_S)
        wall_s = time.time() - t0
        left = job.leftovers(JOB_GONE_S, keep=CLUSTER_SINGLETONS)
        singletons = len(job.tagged_processes()) if not left else None

        # 3. a third job on the same cluster whose driver alone is SIGKILLed once its engine is ready
        # (a notebook kernel or a scheduler's worker dying): Ray ends the actors the dead driver
        # owned, the engine's among them, and vLLM's processes follow their actor (orphan guard).
        orphan = JobProcess(job_args([str(work / "in")], str(work / "orphan-out"), str(tiny_checkpoint),
                                     run_id="orphan", extra=["--batch-size", "2"]), env, work, "orphan")
        jobs.append(orphan)
        orphan.start()
        orphan.wait_for(lambda: _engine_ready(orphan), "the third job's engine to be ready", TIMEOUT_S)
        orphan_alive = [_name(p) for p in orphan.tagged_processes()]
        orphan.kill_driver()
        orphan_left = orphan.leftovers(JOB_GONE_S, keep=CLUSTER_SINGLETONS)
        yield dict(expected=expected, output=output, job=job, rc=rc, wall_s=wall_s, kills=kills,
                   left=left, gone_s=job.gone_s, singletons=singletons, cluster_s=cluster_s, baseline_s=baseline_s,
                   orphan=orphan, orphan_alive=orphan_alive, orphan_left=orphan_left,
                   cluster_left=cluster.stop())
    finally:
        for job in jobs:
            if job.proc is not None and job.proc.poll() is None:
                job.kill_driver()
        cluster.stop()
        import shutil

        for job in jobs:
            shutil.rmtree(job.ray_tmp, ignore_errors=True)


def test_two_node_losses_every_source_exactly_once(node_loss):
    run = node_loss
    log = run["job"].log()
    assert run["rc"] == 0, run["job"].full_log()[-6000:]
    sources = read_table(run["output"] / "sources")
    segments = read_table(run["output"] / "segments")
    n_sources, n_segments = _assert_exactly_once(sources, segments, run["expected"])
    statuses = sources.column("status").to_pylist()
    assert statuses.count("ok") == len(run["expected"]), [r for r in sources.to_pylist() if r["status"] != "ok"][:3]
    attempts = re.findall(r"\[jobs\] attempt (\d+)/3", log)
    failed = re.findall(r"\[jobs\] attempt \d+/3 failed \((\w+)", log)
    summary = read_summaries(run["output"])[-1]
    assert summary["sources"]["total"] == len(run["expected"])
    extra = round(run["wall_s"] - run["baseline_s"], 1) if run["baseline_s"] else None
    report("node_loss", sources=n_sources, segments=n_segments, rows_lost=0, duplicates=0,
           kills=run["kills"], attempts=len(attempts), attempt_failures=failed, wall_s=round(run["wall_s"], 1),
           baseline_wall_s=round(run["baseline_s"], 1) if run["baseline_s"] else None, extra_wall_s=extra,
           cluster_start_s=round(run["cluster_s"], 1))


def test_nothing_of_the_job_outlives_it_on_the_cluster(node_loss):
    run = node_loss
    assert not run["left"], f"the job's processes outlived it on the attached cluster: {run['left']}"
    assert not run["cluster_left"], f"cluster processes needed SIGKILL: {run['cluster_left']}"
    report("node_loss_leftovers", job_processes_gone_after_s=round(run["gone_s"] or 0, 1), left=0,
           ray_data_singletons_kept=run["singletons"])


def test_a_killed_driver_releases_its_engine_on_the_cluster(node_loss):
    run = node_loss
    orphan = run["orphan"]
    assert any(name.startswith("VLLM::") for name in run["orphan_alive"]), run["orphan_alive"]
    assert not run["orphan_left"], f"a SIGKILLed driver's processes outlived it on the cluster: {run['orphan_left']}"
    report("node_loss_killed_driver", alive_at_kill=orphan.left_at_end, gone_after_s=round(orphan.gone_s or 0, 1),
           per_process_s=orphan.gone_after)
