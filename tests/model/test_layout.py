"""The package layout: project modules import no cycle, and the endpoint does not import the batch job."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("model", "jobs", "serving", "connectors")


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


def test_shared_code_lives_where_both_sides_import_it():
    """serving/ does not import jobs/ (what both need lives in model/ or connectors/), and neither
    model/ nor connectors/ imports jobs/ or serving/."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {(name, m) for name, path in modules.items() for m in _imports(path, name) if m in modules}
    serving_to_jobs = {(a, b) for a, b in edges if a.startswith("serving") and b.startswith("jobs")}
    assert not serving_to_jobs, sorted(serving_to_jobs)
    shared = {(a, b) for a, b in edges if a.split(".")[0] in ("model", "connectors")
              and b.split(".")[0] in ("jobs", "serving")}
    assert not shared, sorted(shared)
