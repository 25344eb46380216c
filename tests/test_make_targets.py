"""The Makefile's targets run modules that exist (`make bench` once ran `python -m bench.all`, which
never did)."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _runnable(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package runs its __main__
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return True


@pytest.mark.parametrize("target", ["demo", "test", "bench"])
def test_make_target_runs_an_existing_module(target):
    commands = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    modules = re.findall(r"python\S*\s+-m\s+([\w.]+)", commands)
    assert modules, commands
    missing = [m for m in modules if not _runnable(m)]
    assert not missing, f"make {target} runs modules that do not exist: {missing}"


def test_every_bench_the_runner_names_exists():
    from bench.__main__ import BENCHES

    assert BENCHES and all(_runnable(f"bench.{name}") for name in BENCHES)
