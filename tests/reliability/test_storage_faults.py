"""Object-store faults at the storage layer (`connectors.storage`, what every pipeline stage uses),
through the fault-injecting proxy in front of the real S3 server (moto) on loopback. No Ray, no
engine: the whole-job form of these faults is in test_batch_faults.py.

Proves: transient faults (500, 503, SlowDown, dropped connections, bodies cut short) are retried
and every byte arrives intact, for listing, reads and writes; permanent 403/404 are reported at
once as permanent errors with an actionable message, not retried for minutes.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from connectors.storage import StorageConfig, StorageError, list_files, read_bytes, resolve
from tests.reliability.faultproxy import FaultPlan, FaultProxy
from tests.reliability.figures import report

pytestmark = pytest.mark.reliability

N_OBJECTS = int(os.environ.get("RELIABILITY_STORE_OBJECTS", "40"))
FAULT_RATE = float(os.environ.get("RELIABILITY_FAULT_RATE", "0.3"))
BUCKET = "reliability-store"


@pytest.fixture(scope="module")
def bucket(s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    objects = {}
    for i in range(N_OBJECTS):
        body = hashlib.sha256(str(i).encode()).digest() * (64 + 97 * i)  # 2 kB .. 250 kB
        s3.put_object(Bucket=BUCKET, Key=f"in/obj-{i:03d}.bin", Body=body)
        objects[f"s3://{BUCKET}/in/obj-{i:03d}.bin"] = body
    s3.put_object(Bucket=BUCKET, Key="in/denied.bin", Body=b"x")
    return objects


@pytest.fixture
def proxy(s3_endpoint):
    proxy = FaultProxy(s3_endpoint)
    proxy.start()
    yield proxy
    proxy.stop()


def test_transient_faults_are_retried_and_bytes_arrive_intact(bucket, proxy):
    proxy.set_plan(FaultPlan(transient_rate=FAULT_RATE, seed=1))
    config = StorageConfig(endpoint_url=proxy.url, read_attempts=3)
    listed = list_files(f"s3://{BUCKET}/in/", config)
    assert set(bucket) <= set(listed)
    for uri, body in bucket.items():
        assert read_bytes(uri, config) == body, uri
    # Writes too: the job's output tables go through the same filesystem.
    fs, path = resolve(f"s3://{BUCKET}/out/result.bin", config)
    payload = os.urandom(300_000)
    for _ in range(5):
        with fs.open_output_stream(path) as out:
            out.write(payload)
        with fs.open_input_file(path) as handle:
            assert handle.read() == payload
    assert proxy.transient_injected >= N_OBJECTS * FAULT_RATE / 2, proxy.injected
    assert set(proxy.injected) >= {"500", "503", "slowdown", "drop"}, proxy.injected
    report("storage_faults", requests=proxy.requests, injected=dict(proxy.injected),
           objects=N_OBJECTS, bytes_lost=0)


@pytest.mark.parametrize("status,message", [(403, "access denied"), (404, "object not found")])
def test_permanent_errors_are_reported_not_retried_forever(bucket, proxy, status, message):
    proxy.set_plan(FaultPlan(permanent={f"{BUCKET}/in/denied.bin": status}))
    config = StorageConfig(endpoint_url=proxy.url)
    with pytest.raises(StorageError) as info:
        read_bytes(f"s3://{BUCKET}/in/denied.bin", config)
    assert info.value.permanent, str(info.value)
    assert message in str(info.value) and f"s3://{BUCKET}/in/denied.bin" in str(info.value)
    served = proxy.permanent_served[f"{BUCKET}/in/denied.bin"]
    assert 1 <= served <= 3, served  # asked once (HEAD and/or GET), not retried for minutes


@pytest.mark.parametrize("key", ["in/invoice-4031.png", "in/scan-404 not found.png"])
def test_a_transient_error_is_not_read_from_the_object_key(s3_endpoint, bucket, proxy, key):
    """The store's answer decides, not text in the key: a 500/503 on `invoice-4031.png` is transient
    (retried, then "could not read"), not a permanent "access denied"."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=BUCKET, Key=key, Body=b"x")
    proxy.set_plan(FaultPlan(transient_rate=1.0, kinds=("500", "503")))
    config = StorageConfig(endpoint_url=proxy.url, max_attempts=1, read_attempts=1)
    with pytest.raises(StorageError) as info:
        read_bytes(f"s3://{BUCKET}/{key}", config)
    assert not info.value.permanent, str(info.value)
    assert str(info.value).startswith(f"could not read s3://{BUCKET}/{key} after retries")


def test_an_explicit_profile_signs_the_requests(bucket, proxy, tmp_path, monkeypatch):
    """`StorageConfig.profile` picks the credentials the filesystem signs with (and the profile's
    region), not only the endpoint lookup; the process's own AWS_ACCESS_KEY_ID is not used."""
    (tmp_path / "credentials").write_text(
        "[team-b]\naws_access_key_id = team-b-key-id\naws_secret_access_key = team-b-secret\n")
    (tmp_path / "config").write_text("[profile team-b]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    config = StorageConfig(endpoint_url=proxy.url, profile="team-b")
    assert config.resolved_region() == "eu-west-1"
    uri = next(iter(bucket))
    assert read_bytes(uri, config) == bucket[uri]
    assert set(proxy.access_keys) == {"team-b-key-id"}, proxy.access_keys
    # Without a profile the process's own credentials sign, as before.
    proxy.access_keys.clear()
    assert read_bytes(uri, StorageConfig(endpoint_url=proxy.url)) == bucket[uri]
    assert set(proxy.access_keys) == {os.environ["AWS_ACCESS_KEY_ID"]}, proxy.access_keys
