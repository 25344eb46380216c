"""Field-level validation of the Kubernetes and KubeRay manifests in cluster/kuberay.

No PyPI package ships KubeRay's CRD schemas (checked: the package index has no kuberay/CRD package;
the CRDs live only in github.com/ray-project/kuberay, ray-operator/config/crd/bases, ~1 MB each, and
are not vendored here). So the check is built from two published sources:

* Kubernetes core types (PodTemplateSpec, Container, Service, CronJob, Role, ...): the model classes
  of the official `kubernetes` Python client, generated from the Kubernetes OpenAPI spec. Each class
  lists its JSON field names (`attribute_map`) and types (`openapi_types`); constructing it runs the
  client-side checks for required fields.
* KubeRay's own types (ray.io/v1): the allowlists below, transcribed from KubeRay's API reference
  (github.com/ray-project/kuberay docs/reference/api.md, generated from
  ray-operator/apis/ray/v1/{raycluster,rayjob,rayservice}_types.go; cross-checked against the CRD
  ray-operator/config/crd/bases/ray.io_rayjobs.yaml). Only the stable v1 fields are listed.

Every key of every object is checked against its type: a misspelled field anywhere (top level, inside
a pod template, a container, a volume) is reported with its path. Scalar types are checked too, so a
number where Kubernetes wants a string (an env value, a rayStartParams entry) is caught.
"""

from __future__ import annotations

import re

from kubernetes import client as k8s

# -- KubeRay ray.io/v1 types (field -> type, in the kubernetes client's type-string grammar) ----------
_ENUM = re.compile(r"^enum\((.*)\)$")

RAY_TYPES: dict[str, dict[str, str]] = {
    "RayClusterSpec": {
        "suspend": "bool",
        "managedBy": "str",
        "autoscalerOptions": "AutoscalerOptions",
        "headServiceAnnotations": "dict(str, str)",
        "enableInTreeAutoscaling": "bool",
        "gcsFaultToleranceOptions": "GcsFaultToleranceOptions",
        "headGroupSpec": "HeadGroupSpec",
        "rayVersion": "str",
        "workerGroupSpecs": "list[WorkerGroupSpec]",
    },
    "AutoscalerOptions": {
        "resources": "V1ResourceRequirements",
        "image": "str",
        "imagePullPolicy": "str",
        "securityContext": "V1SecurityContext",
        "idleTimeoutSeconds": "int",
        "upscalingMode": "enum(Default,Aggressive,Conservative)",
        "version": "enum(v1,v2)",
        "env": "list[V1EnvVar]",
        "envFrom": "list[V1EnvFromSource]",
        "volumeMounts": "list[V1VolumeMount]",
    },
    "GcsFaultToleranceOptions": {
        "redisUsername": "RedisCredential",
        "redisPassword": "RedisCredential",
        "externalStorageNamespace": "str",
        "redisAddress": "str",
    },
    "RedisCredential": {"valueFrom": "V1EnvVarSource", "value": "str"},
    "HeadGroupSpec": {
        "template": "V1PodTemplateSpec",
        "headService": "V1Service",
        "enableIngress": "bool",
        "rayStartParams": "dict(str, str)",
        "serviceType": "str",
    },
    "WorkerGroupSpec": {
        "suspend": "bool",
        "groupName": "str",
        "replicas": "int",
        "minReplicas": "int",
        "maxReplicas": "int",
        "idleTimeoutSeconds": "int",
        "rayStartParams": "dict(str, str)",
        "template": "V1PodTemplateSpec",
        "scaleStrategy": "ScaleStrategy",
        "numOfHosts": "int",
    },
    "ScaleStrategy": {"workersToDelete": "list[str]"},
    "RayJobSpec": {
        "activeDeadlineSeconds": "int",
        "backoffLimit": "int",
        "rayClusterSpec": "RayClusterSpec",
        "submitterPodTemplate": "V1PodTemplateSpec",
        "metadata": "dict(str, str)",
        "clusterSelector": "dict(str, str)",
        "submitterConfig": "SubmitterConfig",
        "managedBy": "str",
        "deletionStrategy": "DeletionStrategy",
        "entrypoint": "str",
        "runtimeEnvYAML": "str",
        "jobId": "str",
        "submissionMode": "enum(K8sJobMode,HTTPMode,InteractiveMode)",
        "entrypointResources": "str",
        "entrypointNumCpus": "float",
        "entrypointNumGpus": "float",
        "ttlSecondsAfterFinished": "int",
        "shutdownAfterJobFinishes": "bool",
        "suspend": "bool",
    },
    "SubmitterConfig": {"backoffLimit": "int"},
    "DeletionStrategy": {"onSuccess": "DeletionPolicy", "onFailure": "DeletionPolicy"},
    "DeletionPolicy": {"policy": "enum(DeleteCluster,DeleteWorkers,DeleteSelf,DeleteNone)"},
    "RayServiceSpec": {
        "serveService": "V1Service",
        "upgradeStrategy": "RayServiceUpgradeStrategy",
        "serveConfigV2": "str",
        "rayClusterConfig": "RayClusterSpec",
        "excludeHeadPodFromServeSvc": "bool",
    },
    "RayServiceUpgradeStrategy": {"type": "enum(NewCluster,None)"},
}

# Required fields of the KubeRay types (`json:"..."` tags without omitempty in *_types.go).
RAY_REQUIRED: dict[str, set[str]] = {
    "RayClusterSpec": {"headGroupSpec"},
    "HeadGroupSpec": {"template"},
    "WorkerGroupSpec": {"groupName", "template"},
}

# kind -> (apiVersion, spec type). Kubernetes kinds map to the client's model class.
KINDS: dict[str, tuple[str, str]] = {
    "RayCluster": ("ray.io/v1", "RayClusterSpec"),
    "RayJob": ("ray.io/v1", "RayJobSpec"),
    "RayService": ("ray.io/v1", "RayServiceSpec"),
    "CronJob": ("batch/v1", "V1CronJob"),
    "Job": ("batch/v1", "V1Job"),
    "ServiceAccount": ("v1", "V1ServiceAccount"),
    "ConfigMap": ("v1", "V1ConfigMap"),
    "Secret": ("v1", "V1Secret"),
    "Role": ("rbac.authorization.k8s.io/v1", "V1Role"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "V1RoleBinding"),
}

_PRIMITIVES = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


class ManifestError(ValueError):
    pass


def validate(doc: dict) -> None:
    """Raise ManifestError listing every unknown field, wrong type or missing required field."""
    errors: list[str] = []
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ManifestError(f"unsupported kind {kind!r}")
    api_version, spec_type = KINDS[kind]
    if doc.get("apiVersion") != api_version:
        errors.append(f"apiVersion: expected {api_version!r}, got {doc.get('apiVersion')!r}")
    if spec_type.startswith("V1"):
        _check(doc, spec_type, kind, errors)
    else:
        allowed = {"apiVersion", "kind", "metadata", "spec"}
        for key in doc:
            if key not in allowed:
                errors.append(f"{kind}.{key}: unknown field")
        _check(doc.get("metadata", {}), "V1ObjectMeta", f"{kind}.metadata", errors)
        _check(doc.get("spec"), spec_type, f"{kind}.spec", errors)
    if errors:
        raise ManifestError("\n".join(errors))


def _check(value, type_str: str, path: str, errors: list[str], quantity: bool = False):
    """Check `value` against a type string; returns a value usable to build kubernetes models."""
    if value is None:
        return None
    if m := _ENUM.match(type_str):
        options = m.group(1).split(",")
        if value not in options:
            errors.append(f"{path}: {value!r} is not one of {options}")
        return value
    if type_str.startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return None
        inner = type_str[5:-1]
        return [_check(v, inner, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if type_str.startswith("dict("):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return None
        inner = type_str[5:-1].split(",", 1)[1].strip()
        return {k: _check(v, inner, f"{path}.{k}", errors, quantity=quantity) for k, v in value.items()}
    if type_str in _PRIMITIVES:
        ok = _PRIMITIVES[type_str]
        # Resource quantities are int-or-string in the API although the client types them "str".
        if quantity and type_str == "str":
            ok = (str, int, float)
        if isinstance(value, bool) and type_str != "bool" or not isinstance(value, ok):
            errors.append(f"{path}: expected {type_str}, got {type(value).__name__} {value!r}")
        return value
    if type_str in ("object", "datetime", "date"):  # IntOrString and friends: anything scalar goes
        return value
    if type_str in RAY_TYPES:
        return _check_ray(value, type_str, path, errors)
    return _check_k8s(value, type_str, path, errors)


def _check_ray(value, type_name: str, path: str, errors: list[str]):
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping ({type_name}), got {type(value).__name__}")
        return None
    fields = RAY_TYPES[type_name]
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: unknown field of {type_name} (allowed: {sorted(fields)})")
            continue
        _check(item, fields[key], f"{path}.{key}", errors)
    for key in RAY_REQUIRED.get(type_name, ()):
        if key not in value:
            errors.append(f"{path}: missing required field {key!r}")
    return value


def _check_k8s(value, type_name: str, path: str, errors: list[str]):
    cls = getattr(k8s, type_name, None)
    if cls is None:
        raise ManifestError(f"{path}: no Kubernetes model {type_name} in the kubernetes client")
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping ({type_name}), got {type(value).__name__}")
        return None
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        attr = by_json.get(key)
        if attr is None:
            errors.append(f"{path}.{key}: unknown field of {type_name} (allowed: {sorted(by_json)})")
            continue
        quantity = type_name == "V1ResourceRequirements" and key in ("limits", "requests")
        kwargs[attr] = _check(item, cls.openapi_types[attr], f"{path}.{key}", errors, quantity=quantity)
    try:
        # The client's constructors enforce required fields (ValueError "must not be `None`").
        cls(**kwargs)
    except ValueError as exc:
        errors.append(f"{path}: {exc}")
    return value
