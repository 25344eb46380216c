"""Preflight (jobs/preflight.py): before Ray or an engine starts, the job checks that its inputs are
listable, that its output accepts a write the way the work area is written (a multipart upload on
S3), and that the model is a loadable checkpoint -- and stops in seconds with the location and the
storage's answer when one is not.

The refusing store is the real S3 server (moto) behind the fault proxy, which answers every
CompleteMultipartUpload with the exact bytes moto 5.2.1 sends (the machine's system-wide moto):
a 200 that the AWS SDK inside pyarrow reads as INTERNAL_FAILURE. No Ray, no engine here, except
the last test's `python -m jobs.run`, which must end before starting either.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from connectors.storage import StorageConfig
from jobs import preflight
from jobs.exit_codes import ConfigError, ExitCode
from jobs.spec import JobSpec
from tests.reliability.faultproxy import FaultPlan, FaultProxy
from tests.reliability.figures import report

pytestmark = pytest.mark.reliability

BUCKET = "rel-preflight"
ROOT = pathlib.Path(__file__).resolve().parents[2]
FAIL_BOUND_S = float(os.environ.get("RELIABILITY_PREFLIGHT_FAIL_S", "20"))  # "in seconds", loaded machine


@pytest.fixture(scope="module")
def store(s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="in/page.png", Body=b"not read by preflight")
    return s3


def _proxy(s3_endpoint, **plan) -> FaultProxy:
    proxy = FaultProxy(s3_endpoint, FaultPlan(**plan))
    proxy.start()
    return proxy


def _spec(model, proxy: FaultProxy, **kw) -> JobSpec:
    return JobSpec(inputs=kw.pop("inputs", [f"s3://{BUCKET}/in/"]), output={"uri": kw.pop("output", f"s3://{BUCKET}/out")},
                   engine={"model": str(model)}, storage=StorageConfig(endpoint_url=proxy.url), run={"run_id": "pf"}, **kw)


def _objects(s3, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def test_a_good_store_passes_and_the_probe_is_removed(store, s3_endpoint, tiny_checkpoint):
    proxy = _proxy(s3_endpoint)
    try:
        result = preflight.check(_spec(tiny_checkpoint, proxy), f"s3://{BUCKET}/out/_work/pf")
    finally:
        proxy.stop()
    assert result.model_checked
    assert not [k for k in _objects(store, "out/") if k.endswith(".parquet")], "the probe was left behind"
    # Two parts: the probe exercised UploadPart twice, as a large work-area or table file does.
    report("preflight_ok", seconds=round(result.total_s, 2), output_s=round(result.output_s, 2),
           requests=proxy.requests)


def test_a_store_that_refuses_multipart_uploads_fails_in_seconds(store, s3_endpoint, tiny_checkpoint):
    proxy = _proxy(s3_endpoint, refuse_multipart=True)
    started = time.perf_counter()
    try:
        with pytest.raises(preflight.PreflightError) as info:
            preflight.check(_spec(tiny_checkpoint, proxy), f"s3://{BUCKET}/out/_work/pf")
    finally:
        proxy.stop()
    elapsed = time.perf_counter() - started
    message = str(info.value)
    assert info.value.check == "output"
    assert f"s3://{BUCKET}/out" in message and "/_work/pf/_preflight/probe-" in message  # the location
    assert "INTERNAL_FAILURE" in message and "CompleteMultipartUpload" in message  # the storage's answer
    assert proxy.multipart_refused >= 1
    assert elapsed < FAIL_BOUND_S, elapsed
    assert not [k for k in _objects(store, "out/") if k.endswith(".parquet")], "the probe was left behind"
    report("preflight_refusing_store", seconds=round(elapsed, 2), refused_completes=proxy.multipart_refused)


@pytest.mark.parametrize("inputs,expect", [
    ([f"s3://{BUCKET}/nothing-here/"], "no such file, directory or prefix"),
    (["s3://rel-preflight-no-such-bucket/in/"], "rel-preflight-no-such-bucket"),
    (["/nonexistent/scans/**.pdf"], "no such file, directory or prefix"),
])
def test_inputs_that_cannot_be_listed_are_named(store, s3_endpoint, tiny_checkpoint, inputs, expect):
    proxy = _proxy(s3_endpoint)
    try:
        with pytest.raises(preflight.PreflightError) as info:
            preflight.check(_spec(tiny_checkpoint, proxy, inputs=inputs), f"s3://{BUCKET}/out/_work/pf")
    finally:
        proxy.stop()
    assert info.value.check == "inputs"
    assert inputs[0] in str(info.value) and expect in str(info.value)
    if "no such" in expect:  # nothing there: fix the command (exit 2), unlike a store's refusal (exit 1)
        assert isinstance(info.value, ConfigError)


def test_denied_listing_is_reported_with_the_storage_answer(store, s3_endpoint, tiny_checkpoint):
    proxy = _proxy(s3_endpoint, permanent={f"{BUCKET}/in": 403})
    try:
        with pytest.raises(preflight.PreflightError) as info:
            preflight.check(_spec(tiny_checkpoint, proxy), f"s3://{BUCKET}/out/_work/pf")
    finally:
        proxy.stop()
    assert info.value.check == "inputs" and "not listable" in str(info.value)
    assert not isinstance(info.value, ConfigError)
    assert "ACCESS_DENIED" in str(info.value).upper().replace(" ", "_")


@pytest.mark.parametrize("where", ["under_a_file", "pseudo_fs"])
def test_a_local_output_that_cannot_be_written_is_a_configuration_error(tiny_checkpoint, tmp_path, where):
    """A local output this process cannot write (under a regular file; on /proc, where nothing can be
    created) is fixed in the command: a configuration error (exit 2), not a store's failure (exit 1)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "a-file").write_text("")
    output = {"under_a_file": tmp_path / "a-file" / "out", "pseudo_fs": pathlib.Path("/proc/g4u-no-such-dir/out")}[where]
    spec = JobSpec(inputs=[str(tmp_path / "in")], output={"uri": str(output)}, engine={"model": str(tiny_checkpoint)},
                   run={"run_id": "pf"})
    with pytest.raises(preflight.PreflightError) as info:
        preflight.check(spec, f"{output}/_work/pf")
    assert info.value.check == "output" and isinstance(info.value, ConfigError)
    assert str(output) in str(info.value) and "not writable" in str(info.value)


def _broken_copy(src: pathlib.Path, tmp: pathlib.Path, name: str) -> pathlib.Path:
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def test_checkpoints_that_cannot_load_are_refused(tiny_checkpoint, tmp_path):
    assert preflight.check_model(str(tiny_checkpoint))
    cases = {}
    truncated = _broken_copy(tiny_checkpoint, tmp_path, "truncated")
    weights = next(truncated.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cases[truncated] = "is truncated"
    garbage = _broken_copy(tiny_checkpoint, tmp_path, "garbage")
    next(garbage.glob("*.safetensors")).write_bytes(struct.pack("<Q", 10**12) + b"{}")
    cases[garbage] = "not a readable safetensors file"
    no_tokenizer = _broken_copy(tiny_checkpoint, tmp_path, "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    cases[no_tokenizer] = "has no tokenizer"
    other = _broken_copy(tiny_checkpoint, tmp_path, "other_arch")
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    cases[other] = "not a Gemma 4 Unified checkpoint"
    cases[tmp_path / "missing"] = "does not exist"
    for path, expect in cases.items():
        with pytest.raises(preflight.PreflightError) as info:
            preflight.check_model(str(path))
        assert expect in str(info.value) and str(path) in str(info.value), (path, str(info.value))
    # On an attached cluster a path the driver cannot see may exist on the GPU nodes only.
    assert preflight.check_model(str(tmp_path / "missing"), attached=True) is False


def test_job_on_a_refusing_store_ends_before_ray_or_an_engine_starts(store, s3_endpoint, tiny_checkpoint, tmp_path):
    proxy = _proxy(s3_endpoint, refuse_multipart=True)
    ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.run", "--input", f"s3://{BUCKET}/in/", "--output", f"s3://{BUCKET}/out",
             "--model", str(tiny_checkpoint), "--run-id", "refused", "--s3-endpoint", proxy.url],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        proxy.stop()
    elapsed = time.perf_counter() - started
    try:
        out = proc.stdout + proc.stderr
        assert proc.returncode == ExitCode.JOB_FAILED, out[-3000:]
        assert "refuses writes" in out and "INTERNAL_FAILURE" in out, out[-3000:]
        assert not list(ray_tmp.rglob("session_*")), "Ray was started before preflight failed"
        logs = out + "".join(p.read_text(errors="replace") for p in ray_tmp.rglob("g4u-logs/*.log"))
        assert "EngineCore" not in logs and "Initializing a V1 LLM engine" not in logs, "an engine was started"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    report("preflight_job_refusing_store", exit_code=proc.returncode, wall_s=round(elapsed, 1))


@pytest.mark.parametrize("case", ["missing_input", "unwritable_output", "not_a_checkpoint"])
def test_command_errors_found_by_preflight_exit_2_before_ray_starts(tiny_checkpoint, tmp_path, case):
    """`python -m jobs.run` naming an input that does not exist, a local output it cannot write or a
    model path that is not a checkpoint: exit 2 (configuration error, jobs/exit_codes.py), the reason
    on the console, and no Ray started."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "page.png").write_bytes(b"not read by preflight")
    (tmp_path / "a-file").write_text("")
    args = {"inputs": str(tmp_path / "in"), "output": str(tmp_path / "out"), "model": str(tiny_checkpoint)}
    expect = {"missing_input": ("inputs", str(tmp_path / "no-such-dir"), "no input files match"),
              "unwritable_output": ("output", str(tmp_path / "a-file" / "out"), "not writable"),
              "not_a_checkpoint": ("model", str(tmp_path / "in"), "not a Hugging Face checkpoint")}[case]
    args[expect[0]] = expect[1]
    ray_tmp = pathlib.Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.run", "--input", args["inputs"], "--output", args["output"],
             "--model", args["model"], "--run-id", "pf"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == ExitCode.USAGE, out[-3000:]
        assert "configuration error" in out and expect[2] in out and expect[1] in out, out[-3000:]
        assert not list(ray_tmp.rglob("session_*")), "Ray was started before preflight failed"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
