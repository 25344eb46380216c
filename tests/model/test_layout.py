"""The package layout: moved modules keep their old names."""

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
