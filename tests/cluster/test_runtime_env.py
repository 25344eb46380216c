"""The runtime environment ships the project *and its vLLM plugin entry point* to every Ray process.

A job submitted to a real local head (Job Submission API, working_dir + py_modules runtime env)
reports, from its driver and from a worker task, where `importlib.metadata` finds the
`vllm.general_plugins` entry point and which `model.registration` it loads. Both must come from what
the runtime env shipped (Ray's per-job resource dirs), not from the project checkout or the venv's
editable install that happen to exist on this machine.
"""

from __future__ import annotations

import pathlib

from jobs.submit import PROJECT_ROOT, check_cluster, plugin_metadata_dir, project_runtime_env


def test_plugin_metadata_is_built_from_pyproject():
    dist_info = plugin_metadata_dir()
    assert dist_info.name.endswith(".dist-info")
    text = (dist_info / "entry_points.txt").read_text()
    assert "[vllm.general_plugins]" in text
    assert "model.registration:register" in text


def test_runtime_env_ships_code_and_plugin():
    env = project_runtime_env({"X": "1"})
    assert env["working_dir"] == str(PROJECT_ROOT)
    excludes = env["excludes"]
    assert "/.venv/" in excludes and "/tests/" in excludes and "/README.md" in excludes
    assert not {"/model/", "/jobs/", "/serving/", "/connectors/", "/pyproject.toml"} & set(excludes)
    assert pathlib.Path(env["py_modules"][0]).name.endswith(".dist-info")
    assert env["env_vars"]["X"] == "1"
    assert "working_dir" not in project_runtime_env(ship_code=False)


def test_driver_and_workers_find_the_shipped_plugin(ray_head):
    report = check_cluster(ray_head.address, token=ray_head.token, timeout=300)
    processes = [report["driver"], *report["workers"]]
    assert len(report["workers"]) == 1  # one node
    venv = pathlib.Path(report["driver"]["python"]).parent.parent
    for proc in processes:
        assert "error" not in proc, proc
        assert proc["entry_point"] == "gemma4_unified_exact = model.registration:register"
        dist_at = pathlib.Path(proc["distribution_at"])
        module = pathlib.Path(proc["module_file"])
        # Found in what the runtime env unpacked under this head's temp dir ...
        assert str(dist_at).startswith(ray_head.temp_dir), proc
        assert str(module).startswith(ray_head.temp_dir), proc
        # ... not in the venv's editable install nor the checkout.
        assert venv not in dist_at.parents and PROJECT_ROOT not in module.parents, proc
