"""vLLM's engine processes end with the process that started them.

vLLM runs its engine core, and with the multiprocessing executor its workers, in `spawn`ed child
processes. When the process that owns the engine dies without shutting it down (a Ray worker
SIGKILLed, or one whose raylet was SIGKILLed while the engine was still loading), those children
are reparented and keep running: measured here, `VLLM::EngineCore` and `VLLM::Worker` (3.3 GB
resident on CPU; on a GPU node they keep the GPU) were alive 19 minutes after their job was killed.
Nothing can talk to them any more: the front end's sockets died with it.

`guard()` is called from the vLLM plugin's `register()`, which vLLM runs in every one of its
processes. In a process that is a multiprocessing child (engine core, worker) it starts one daemon
thread that waits for the parent *process* to exit and then ends this process and its
descendants. Not `PR_SET_PDEATHSIG`: that fires when the parent *thread* that spawned the child
exits, and vLLM's engine is created on whatever thread the Ray actor or Serve replica runs its
constructor on. The wait is a pidfd (Linux >= 5.3: wakes up the moment the parent exits), with a
0.5 s `getppid()` poll as the fallback. In processes that are not multiprocessing children (Ray
workers, the API server, a user's script) it does nothing: their own supervisors own them.

Bound: a guarded process is gone well within a second of its parent's death (measured in
tests/model/test_orphan_guard.py). vLLM's engine core loads the plugin right after its startup
handshake with the front end; a parent that dies before that handshake leaves an engine core
that vLLM itself ends when the handshake times out (`HANDSHAKE_TIMEOUT_MINS`, 5 minutes).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

_lock = threading.Lock()
_guarded_parent: int | None = None


def guard() -> bool:
    """Start the parent watch in this process if it is a multiprocessing child (idempotent).
    Returns whether this process is guarded."""
    global _guarded_parent
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return False
    with _lock:
        if _guarded_parent is not None:
            return True
        if os.getppid() != parent.pid:
            if parent.is_alive():
                # Started through a fork server: the OS parent is not the process that owns
                # this one, so the OS parent's exit says nothing. vLLM uses spawn or fork.
                return False
            _end_orphaned(parent.pid)  # the owner died before this process got here
        _guarded_parent = parent.pid
        threading.Thread(target=_watch, args=(parent.pid,), name="orphan-guard", daemon=True).start()
    return True


def _watch(parent_pid: int) -> None:
    _wait_for_exit(parent_pid)
    _end_orphaned(parent_pid)


def _wait_for_exit(parent_pid: int) -> None:
    fd = None
    try:
        fd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):
        pass
    try:
        # Still our parent after the pidfd was opened, so the pidfd names it (a pid is not reused
        # while its process lives); otherwise it died in between.
        if fd is not None and os.getppid() == parent_pid:
            select.select([fd], [], [])  # readable once the parent has exited
            return
    finally:
        if fd is not None:
            os.close(fd)
    while os.getppid() == parent_pid:
        time.sleep(0.5)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (read from /proc; empty where there is no /proc)."""
    try:
        tree = _children_map()
    except OSError:
        return []
    found, todo = [], list(tree.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(tree.get(child, ()))
    return found


def _end_orphaned(parent_pid: int) -> None:
    me = os.getpid()
    try:
        sys.stderr.write(f"[orphan-guard] process {me} ({_title()}): its parent {parent_pid} exited "
                         "without shutting it down; ending it and its children\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - stderr may be gone with the parent; exiting matters, not the line
        pass
    for child in descendants(me):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    # No interpreter shutdown: with the front end gone, atexit hooks and device teardown can only
    # hang. The kernel releases memory (and the GPU's, through the driver) on exit.
    os._exit(1)


def _title() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:60] or "?"
    except OSError:
        return "?"
