"""The orphan guard (model/orphan_guard.py): a vLLM engine process whose parent dies ends too.

Real processes, no Ray, no engine: a parent starts a child the way vLLM starts its engine core
(multiprocessing spawn / fork), the child arms the guard and starts a grandchild; the test
SIGKILLs the parent and watches the child and grandchild go.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOUND_S = 3.0  # the guard wakes on the parent's exit (pidfd); allow for a loaded machine


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _start_tree(tmp_path: pathlib.Path, method: str) -> tuple[subprocess.Popen, dict]:
    out = tmp_path / f"tree-{method}.json"
    parent = subprocess.Popen([sys.executable, "-m", "tests.model.orphan_tree", str(out), method], cwd=ROOT)
    deadline = time.time() + 60
    while not out.exists():
        assert parent.poll() is None, "the parent process ended early"
        assert time.time() < deadline, "the child never reported"
        time.sleep(0.1)
    return parent, json.loads(out.read_text())


def _cleanup(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_child_and_its_children_end_when_the_parent_is_killed(tmp_path, method):
    parent, tree = _start_tree(tmp_path, method)
    try:
        assert tree["guarded"]
        assert _alive(tree["child"]) and _alive(tree["grandchild"])
        time.sleep(0.5)
        assert _alive(tree["child"]), "the guard ended a child whose parent is alive"
        parent.kill()
        parent.wait()
        killed = time.time()
        while (_alive(tree["child"]) or _alive(tree["grandchild"])) and time.time() - killed < BOUND_S:
            time.sleep(0.05)
        gone_s = time.time() - killed
        assert not _alive(tree["child"]), f"child still alive {BOUND_S} s after its parent was killed"
        assert not _alive(tree["grandchild"]), "the child's own child outlived it"
        print(f"orphan guard ({method}): child and grandchild gone {gone_s:.2f} s after the parent's SIGKILL")
    finally:
        _cleanup(parent.pid, tree["child"], tree["grandchild"])


def test_processes_that_are_not_multiprocessing_children_are_not_guarded():
    code = "from model import orphan_guard; print(orphan_guard.guard())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_forkserver_children_are_left_alone(tmp_path):
    # The OS parent of a fork-server child is the fork server, not its owner: not guarded, and
    # certainly not ended at once for "having lost" a parent it never had.
    parent, tree = _start_tree(tmp_path, "forkserver")
    fork_server = psutil.Process(tree["child"]).ppid()
    try:
        assert fork_server != parent.pid
        assert not tree["guarded"]
        time.sleep(1.0)
        assert _alive(tree["child"])
    finally:
        # Only this test's own processes: the session's Ray cluster and S3 server are children of
        # pytest too, and a Ray driver whose GCS is killed exits its process (pytest with it).
        _cleanup(parent.pid, tree["child"], tree["grandchild"], fork_server)
