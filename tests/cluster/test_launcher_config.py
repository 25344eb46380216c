"""cluster/ray-cluster.onprem.yaml is a launcher file `ray up` accepts.

Checked with Ray's own code: the JSON schema shipped in the ray package
(ray/autoscaler/ray-schema.json) and the preparation `ray up` runs on a local-provider config
(`prepare_config` -> `prepare_local`, then `validate_config`).
"""

from __future__ import annotations

import copy
import json
import pathlib

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

LAUNCHER = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "ray-cluster.onprem.yaml"
SCHEMA = json.loads((pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
# Provider keys the local node provider reads (ray/autoscaler/_private/local/{config,node_provider}.py);
# the schema allows any provider key, so a misspelling there would otherwise pass.
LOCAL_PROVIDER_KEYS = {"type", "head_ip", "worker_ips", "coordinator_address", "external_head_ip"}


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_matches_rays_schema(launcher):
    jsonschema.validate(launcher, SCHEMA)


def test_ray_up_preparation_accepts_it(launcher):
    prepared = prepare_config(copy.deepcopy(launcher))
    validate_config(prepared)
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    assert node_type["min_workers"] == node_type["max_workers"] == len(launcher["provider"]["worker_ips"])


def test_local_provider_fields(launcher):
    provider = launcher["provider"]
    assert provider["type"] == "local"
    assert set(provider) <= LOCAL_PROVIDER_KEYS, set(provider) - LOCAL_PROVIDER_KEYS
    assert provider["head_ip"] and provider["worker_ips"]


def test_installs_the_project_with_gpu_extra_and_starts_ray_from_that_env(launcher):
    setup = "\n".join(launcher["setup_commands"])
    assert 'pip install -q -e "/home/ray/gemma4-unified[gpu]"' in setup
    assert "vllm.general_plugins" in setup  # the install is verified to expose the plugin
    assert "/home/ray/gemma4-unified" in launcher["file_mounts"]
    for cmd in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]:
        assert "PATH=/home/ray/venv/bin:$PATH" in cmd
    head_start = " ".join(launcher["head_start_ray_commands"])
    assert "--num-gpus=0" in head_start and "--dashboard-port=8265" in head_start


def test_a_misspelled_field_is_rejected(launcher):
    bad = copy.deepcopy(launcher)
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        validate_config(prepare_config(bad))
