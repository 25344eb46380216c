"""Peak memory of a piece of work, measured in a fresh process.

`python -m tests.reliability.memprobe MODULE:FUNCTION [ARG ...]` imports the module (the baseline:
interpreter + libraries), records the resident set, runs FUNCTION(*ARGS) and prints one JSON line:
baseline and peak RSS in MiB (peak from the kernel's high-water mark, `ru_maxrss`, so a short spike
counts too), the growth, and FUNCTION's JSON-able result. A fresh process per measurement means
nothing allocated earlier in the test session inflates or hides the figure.
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys


def _rss_now_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _reset_peak() -> None:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so the
    # imports' transient peak is not counted as the work's.
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> None:
    target, *args = argv
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    import numpy  # noqa: F401 - part of the baseline
    baseline = _rss_now_mib()
    _reset_peak()
    result = func(*args)
    peak = _peak_mib()
    print(json.dumps({"baseline_mib": round(baseline, 1), "peak_mib": round(peak, 1),
                      "growth_mib": round(peak - baseline, 1), "result": result}))


def measure(target: str, *args: str, timeout: float = 600) -> dict:
    """Run `target` (module:function) in a fresh interpreter; return the JSON line it printed."""
    proc = subprocess.run([sys.executable, "-m", "tests.reliability.memprobe", target, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{target} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main(sys.argv[1:])
