"""docs/configuration.md lists every setting of the batch job and the endpoint, as the classes say."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_settings_reference_is_current():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.DOC.read_text()
    assert module.current(text) == text, "docs/configuration.md is stale: run scripts/config_reference.py"


def test_every_option_is_documented_once():
    from jobs.spec import JobSpec
    from model.config import flags
    from serving.config import ServingConfig

    text = (ROOT / "docs" / "configuration.md").read_text()
    for config in (JobSpec, ServingConfig):
        for path, option in flags(config).items():
            assert text.count(f"| `{'.'.join(path)}` | `{option}` |") == 1, (path, option)
