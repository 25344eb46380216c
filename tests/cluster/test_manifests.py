"""Every manifest in cluster/kuberay is made of fields the tools accept, and the pieces fit together.

Field-level checks: tests/cluster/kube_schema.py (Kubernetes types from the official client's API
models, KubeRay types from KubeRay's v1 API reference). The strings KubeRay hands to Ray are checked
with Ray's and the project's own parsers: serveConfigV2 with Ray Serve's config schema and the
endpoint's `ServingConfig`; runtimeEnvYAML with Ray's `RuntimeEnv`; the RayJob entrypoint with the
batch job's own command-line parser.
"""

from __future__ import annotations

import copy
import importlib
import pathlib
import shlex

import pytest
import yaml
from ray.runtime_env import RuntimeEnv
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from tests.cluster.kube_schema import ManifestError, validate

KUBERAY = pathlib.Path(__file__).resolve().parents[2] / "cluster" / "kuberay"
FILES = sorted(KUBERAY.rglob("*.yaml"))


def _docs(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(kind: str) -> dict:
    found = [d for f in FILES for d in _docs(f) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _cluster_specs() -> dict[str, dict]:
    return {
        "RayCluster": _one("RayCluster")["spec"],
        "RayService": _one("RayService")["spec"]["rayClusterConfig"],
        "RayJob": _one("RayJob")["spec"]["rayClusterSpec"],
    }


def test_all_manifests_present():
    kinds = sorted(d["kind"] for f in FILES for d in _docs(f))
    assert kinds == sorted(["RayCluster", "RayService", "RayJob", "CronJob", "ServiceAccount", "Role", "RoleBinding"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(KUBERAY)))
def test_fields_are_known_and_typed(path):
    for doc in _docs(path):
        validate(doc)


@pytest.mark.parametrize(
    "kind, where, field, misspelled",
    [
        ("RayCluster", ["spec"], "enableInTreeAutoscaling", "enableInTreeAutoscailing"),
        ("RayCluster", ["spec", "workerGroupSpecs", 0], "minReplicas", "minReplica"),
        ("RayCluster", ["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0], "volumeMounts", "volumeMount"),
        ("RayService", ["spec"], "serveConfigV2", "serveConfig"),
        ("RayService", ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec"], "tolerations", "toleration"),
        ("RayJob", ["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinished"),
        ("RayJob", ["spec", "submitterPodTemplate", "spec", "containers", 0, "resources"], "limits", "limit"),
        ("CronJob", ["spec"], "concurrencyPolicy", "concurencyPolicy"),
        ("CronJob", ["spec", "jobTemplate", "spec", "template", "spec", "volumes", 0, "configMap"], "items", "item"),
        ("Role", ["rules", 0], "verbs", "verb"),
    ],
)
def test_a_misspelled_field_is_caught(kind, where, field, misspelled):
    doc = copy.deepcopy(_one(kind))
    node = doc
    for step in where:
        node = node[step]
    node[misspelled] = node.pop(field)
    with pytest.raises(ManifestError, match=misspelled):
        validate(doc)


def test_wrong_scalar_types_are_caught():
    doc = copy.deepcopy(_one("RayCluster"))
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0  # KubeRay wants strings here
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    with pytest.raises(ManifestError) as err:
        validate(doc)
    assert "num-gpus: expected str" in str(err.value) and "maxReplicas: expected int" in str(err.value)


def test_cpu_head_and_gpu_workers_everywhere():
    images = set()
    for kind, spec in _cluster_specs().items():
        assert spec["rayVersion"] == "2.60.0", kind
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-gpus"] == "0", kind
        head_container = head["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head_container["resources"]["limits"], kind
        (workers,) = spec["workerGroupSpecs"]
        worker = workers["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1", kind
        assert any(v["mountPath"] == "/dev/shm" for v in worker["volumeMounts"]), kind
        images |= {head_container["image"], worker["image"]}
    assert len(images) == 1, f"one project image for every pod: {images}"


def test_rayservice_serve_config_runs_the_endpoint_builder():
    serve_config = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    # Ray Serve's schema lets unknown keys through; hold them to its declared fields.
    assert set(serve_config) <= set(ServeDeploySchema.model_fields)
    (app,) = serve_config["applications"]
    assert set(app) <= set(ServeApplicationSchema.model_fields)
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    assert app["import_path"] == "serving.app:build_app"
    from serving.config import ServingConfig

    config = ServingConfig.model_validate(app["args"])  # extra="forbid": a wrong arg name fails
    assert config.engine.device == "gpu" and config.auth.api_keys_file == "/etc/gemma4/api-keys/keys"
    # The key file is mounted where the args say, in every pod an ingress replica may run in.
    cluster = _one("RayService")["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        mounts = group["template"]["spec"]["containers"][0]["volumeMounts"]
        assert any(m["mountPath"] == "/etc/gemma4/api-keys" for m in mounts)


def test_rayjob_runtime_env_and_entrypoint():
    spec = _one("RayJob")["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= RuntimeEnv.known_fields
    RuntimeEnv(**runtime_env)
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.run"]
    from jobs.run import parser, spec_from_args  # the batch job's own command line

    job = spec_from_args(parser().parse_args(argv[3:]))
    assert job.output.uri == "s3://gemma4-results/nightly/" and job.engine.model == "/models/gemma-4-12b-it"
    assert job.run.error_threshold == 0.05 and job.engine.device == "gpu" and job.run.actors == (1, 8)
    # The image holds the model at the path the entrypoint names.
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert any(job.engine.model.startswith(m["mountPath"]) for m in worker["volumeMounts"])


def test_cronjob_creates_the_rayjob_with_just_enough_rbac():
    cron = _one("CronJob")["spec"]
    assert len(cron["schedule"].split()) == 5 and cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = container["args"][0]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = volume["configMap"]["items"]
    assert f"kubectl create -f {mount['mountPath']}/{item['path']}" in script
    assert 'test "$status" = SUCCEEDED' in script  # a failed RayJob fails the Kubernetes Job
    # The ConfigMap is made from the RayJob file under the key the volume reads (see cronjob.yaml).
    header = (KUBERAY / "nightly" / "cronjob.yaml").read_text()
    assert f"--from-file={item['key']}=cluster/kuberay/nightly/rayjob.yaml" in header
    assert f"kubectl create configmap {volume['configMap']['name']}" in header

    account, role, binding = (_one(k) for k in ("ServiceAccount", "Role", "RoleBinding"))
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount" and subject["name"] == account["metadata"]["name"] and subject["namespace"]
    (rule,) = role["rules"]
    assert rule == {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}

