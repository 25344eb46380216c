"""Figures the reliability tests measure (for docs/reliability.md): printed, and appended as JSON
lines to $RELIABILITY_FIGURES when that is set (`pytest -s` shows them too)."""

from __future__ import annotations

import json
import os


def report(name: str, **values) -> None:
    line = json.dumps({"figure": name, **values}, default=str)
    print(f"[reliability] {line}", flush=True)
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")
