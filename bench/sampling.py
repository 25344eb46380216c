"""A background sampler: a daemon thread that takes one sample every `interval_s` while a `with`
block runs (the benchmarks' engine gauges and CPU by process, the scale test's decode memory)."""

from __future__ import annotations

import threading


class Sampler:
    """Subclasses define `sample()` (called every `interval_s` seconds, first after one interval, in
    the sampler thread) and may define `setup()` (called once in that thread before the first wait)."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def setup(self) -> None:
        pass

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        self.setup()
        while not self._stop.wait(self.interval_s):
            self.sample()
