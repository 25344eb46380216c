"""Where a command's Ray and vLLM logs go: a log file, so the console keeps one progress line.

Shared by `python -m jobs.run` (jobs/console.py) and `python -m serving.app`.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import IO


def default_log_path(kind: str, name: str) -> pathlib.Path:
    """`$G4U_LOG_DIR/<kind>-<name>-<time>.log`, by default beside Ray's own logs (`$RAY_TMPDIR/ray` or
    /tmp/ray, what `ray start` and `ray.init` use), in `g4u-logs/`."""
    base = os.environ.get("G4U_LOG_DIR")
    root = pathlib.Path(base) if base else pathlib.Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "g4u-logs"
    return root / f"{kind}-{name}-{time.strftime('%Y%m%dT%H%M%S')}.log"


class LogFile:
    """Redirect file descriptors 1 and 2 to `path` for the duration; `out` is the console (the original
    stdout). With `verbose`, nothing is redirected and `out` is sys.stdout."""

    def __init__(self, path: str | os.PathLike, *, verbose: bool = False):
        self.path = pathlib.Path(path)
        self.verbose = verbose
        self.out: IO[str] = sys.stdout
        self._saved: tuple[int, int] | None = None

    def __enter__(self) -> LogFile:
        if self.verbose:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.out.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self.out.close()
        self._saved = None
        self.out = sys.stdout

    def write(self, text: str) -> None:
        """Append to the log file itself (with --verbose: stderr). Not through sys.stderr, which an
        embedding process (pytest, a notebook) may have pointed elsewhere than descriptor 2."""
        if self._saved is None:
            sys.stderr.write(text)
            sys.stderr.flush()
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def isatty(self) -> bool:
        try:
            return self.out.isatty()
        except (ValueError, OSError):
            return False
