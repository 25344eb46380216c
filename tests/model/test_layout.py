"""The package layout: moved modules keep their old names, and project modules import no cycle."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("model", "jobs", "serving", "connectors")


@pytest.mark.parametrize("old, new", [
    ("model.media", "model.inputs.media"), ("model.prompts", "model.inputs.prompts"),
    ("model.audio_chunks", "model.inputs.audio_chunks"), ("model.tiny", "model.checkpoints.tiny"),
    ("model.demo", "model.checkpoints.demo"), ("model.demo_data", "model.checkpoints.demo_data"),
    ("model.train_demo", "model.checkpoints.train_demo"),
])
def test_old_module_names_are_the_moved_modules(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new  # the alias does not rename the module


def test_old_cli_name_runs_the_moved_module():
    out = subprocess.run([sys.executable, "-m", "model.demo", "--path"], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip().endswith("model/checkpoints/demo_checkpoint")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, name: str) -> set[str]:
    """Project modules `path` imports anywhere: function bodies and TYPE_CHECKING blocks too (a
    deferred import is still a dependency, and hides the cycle rather than removing it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(name.split(".")[: -node.level] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_no_import_cycles():
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
