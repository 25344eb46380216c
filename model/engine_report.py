"""One line per vLLM error, in the engine's own processes, that the job can quote.

When vLLM's engine fails to start, the exception the Ray actor raises says only "Engine core
initialization failed. See root cause above"; the root cause (a weight of the wrong shape, a
missing file, out of memory) is a traceback in the engine core's or the worker's log. `install()`
(called from the plugin's `register()` in vLLM's child processes) adds a logging handler to
vLLM's root logger that, for every record logged with an exception, writes one line

    [vllm-error] pid 1234 VLLM::Worker: AssertionError:  (at vocab_parallel_embedding.py:472: assert loaded_weight.shape[output_dim] == self.org_vocab_size)

to stderr. Ray forwards worker output to the driver (`log_to_driver`), where `jobs.failures`
picks these lines up and names the reason in the job's error.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

MARKER = "[vllm-error]"
_installed = False


class _ErrorLine(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info or record.exc_info[1] is None:
            return
        exc = record.exc_info[1]
        text = " ".join(str(exc).split())[:600]
        where = _where(record.exc_info[2])
        line = f"{MARKER} pid {os.getpid()} {_title()}: {type(exc).__name__}: {text}{where}\n"
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - reporting must never raise inside vLLM's logging
            pass


def _where(tb) -> str:
    """Where it was raised: a bare `assert` in a weight loader has no message of its own."""
    try:
        frame = traceback.extract_tb(tb)[-1]
    except (IndexError, TypeError):
        return ""
    code = f": {frame.line.strip()[:200]}" if frame.line else ""
    return f" (at {os.path.basename(frame.filename)}:{frame.lineno}{code})"


def _title() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as handle:
            return handle.read().split(b"\0")[0].decode(errors="replace").strip()[:40] or "?"
    except OSError:
        return "?"


def install() -> None:
    global _installed
    if not _installed:
        _installed = True
        logging.getLogger("vllm").addHandler(_ErrorLine())
