"""Object storage and local files behind one pyarrow filesystem interface.

`StorageConfig` says how to reach S3-compatible stores (on-prem MinIO/Ceph are the normal case) and
holds no secrets: credentials come from the standard AWS chain of the process that uses the
filesystem (environment, `~/.aws` profiles, instance metadata), so the config can be shipped to Ray
workers and written into summaries. The endpoint comes from `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` or the profile's `endpoint_url`, as boto3 and the AWS CLI resolve it.

Transient S3 failures (5xx, SlowDown, throttling, dropped connections) are retried by the AWS SDK's
standard retry strategy inside pyarrow; `read_bytes` adds a few attempts with backoff on top for
errors the SDK surfaces as plain OSErrors (e.g. a connection reset while streaming the body).
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
import urllib.parse

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field

_GLOB_CHARS = set("*?[")

# Object-store settings that are not secret, copied from the environment where a job is submitted or
# the endpoint is built into the environment of the processes that reach the store. Credentials are
# never copied (Ray shows runtime_env env_vars in the dashboard and logs): nodes get them from their
# own environment (a Kubernetes secret, an instance profile). The file settings must name paths that
# exist on the nodes too (a mounted secret), as they do in the project's KubeRay manifests.
STORE_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
)


def store_env() -> dict[str, str]:
    """The `STORE_ENV` variables set in this process."""
    return {k: os.environ[k] for k in STORE_ENV if os.environ.get(k)}


class StorageError(OSError):
    """An object that cannot be read; `permanent` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


class StorageConfig(BaseModel):
    """storage: S3-compatible object stores (credentials: the AWS chain of the process using them)"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = Field(
        None, description="S3 endpoint; default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / the profile's endpoint_url",
        json_schema_extra={"flag": "--s3-endpoint"})
    region: str | None = Field(None, description="default: AWS_REGION / AWS_DEFAULT_REGION / the profile's region",
                               json_schema_extra={"flag": "--s3-region"})
    profile: str | None = Field(
        None, description="AWS profile for the endpoint, region and credentials (default: AWS_PROFILE)",
        json_schema_extra={"flag": "--s3-profile"})
    max_attempts: int = Field(8, ge=1, description="AWS SDK standard retries per request (backoff with jitter)",
                              json_schema_extra={"flag": "--s3-max-attempts"})
    connect_timeout_s: float = Field(10.0, gt=0, description="seconds", json_schema_extra={"flag": "--s3-connect-timeout"})
    request_timeout_s: float = Field(60.0, gt=0, description="seconds", json_schema_extra={"flag": "--s3-request-timeout"})
    read_attempts: int = Field(3, ge=1, description="attempts around a whole object read",
                               json_schema_extra={"flag": "--s3-read-attempts"})

    def _profile_config(self) -> dict:
        """The named profile's settings from the AWS config files ({} without a profile or file)."""
        try:
            import botocore.session

            return botocore.session.Session(profile=self.profile or os.environ.get("AWS_PROFILE")).get_scoped_config()
        except Exception:  # noqa: BLE001 - no profile file / unknown profile: plain AWS settings
            return {}

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(var):
                return os.environ[var]
        config = self._profile_config()  # `endpoint_url` (botocore >= 1.31), as the AWS CLI reads it
        return config.get("endpoint_url") or (config.get("s3") or {}).get("endpoint_url")

    def resolved_region(self) -> str | None:
        return (self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                or self._profile_config().get("region"))

    def s3(self) -> pafs.S3FileSystem:
        return _s3_filesystem(self)


_FILESYSTEMS: dict[tuple, tuple[pafs.S3FileSystem, object]] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _s3_filesystem(config: StorageConfig) -> pafs.S3FileSystem:
    """One filesystem per settings and process environment, made again when the credentials of an
    explicit profile (assumed roles, SSO: temporary) need refreshing."""
    key = (config, os.environ.get("AWS_PROFILE"), config.resolved_endpoint())
    with _FILESYSTEMS_LOCK:
        cached = _FILESYSTEMS.get(key)
        if cached is not None and not getattr(cached[1], "refresh_needed", lambda: False)():
            return cached[0]
        kwargs: dict = dict(
            region=config.resolved_region() or "us-east-1",
            connect_timeout=config.connect_timeout_s,
            request_timeout=config.request_timeout_s,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=config.max_attempts),
        )
        endpoint = key[2]
        if endpoint:
            parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
        credentials = None
        if config.profile:
            # The AWS SDK inside Arrow reads a profile only from AWS_PROFILE; an explicit profile's
            # credentials are resolved by botocore (static keys, assumed roles, SSO) and passed on.
            import botocore.session

            credentials = botocore.session.Session(profile=config.profile).get_credentials()
            if credentials is None:
                raise StorageError(f"the AWS profile {config.profile!r} has no credentials", permanent=True)
            frozen = credentials.get_frozen_credentials()
            kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
        filesystem = pafs.S3FileSystem(**kwargs)
        _FILESYSTEMS[key] = (filesystem, credentials)
        return filesystem


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def resolve(uri: str, config: StorageConfig = StorageConfig()) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for `s3://bucket/key` or a local path / `file://` URI."""
    if is_s3(uri):
        return config.s3(), uri.split("://", 1)[1]
    if uri.startswith("file://"):
        uri = urllib.parse.urlparse(uri).path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def to_uri(uri_like: str, path: str) -> str:
    """The URI form of a path listed from the filesystem of `uri_like`."""
    return f"s3://{path}" if is_s3(uri_like) else path


def list_files(uri: str, config: StorageConfig = StorageConfig()) -> list[str]:
    """Files under a prefix/directory, matching a glob, or the single file named; sorted URIs.

    Hidden and underscore-prefixed names (`.DS_Store`, `_SUCCESS`) are skipped in listings, as Ray
    Data and Spark do. A pattern or prefix that matches nothing raises FileNotFoundError: an empty
    input is almost always a typo, not an empty night.
    """
    fs, path = resolve(uri, config)
    has_glob = any(c in path for c in _GLOB_CHARS)
    if has_glob:
        base = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        found = [i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [to_uri(uri, info.path)]
        infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
        found = [i.path for i in infos if i.type == pafs.FileType.File]
    found = [p for p in found if not any(part.startswith((".", "_")) for part in p.split("/")[-1:])]
    if not found:
        raise FileNotFoundError(f"no input files match {uri}")
    return sorted(to_uri(uri, p) for p in found)


# Arrow's S3 errors: "<context naming the key>: AWS Error <TYPE> [(HTTP status <N>)] during <Op>
# operation: <message>". The type and status are the store's answer; the context holds the object key,
# so only the last such clause is read (a key like "invoice-4031.png" says nothing about the error).
_AWS_ERROR = re.compile(r"AWS Error (?P<type>[A-Z_]+)(?: \(HTTP status (?P<status>\d{3})\))? during \w+ operation")
_NOT_FOUND = {"NO_SUCH_KEY", "NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND", "NO_SUCH_UPLOAD"}
_DENIED = {"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "INVALID_CLIENT_TOKENID",
           "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT"}


def store_error_code(exc: BaseException) -> tuple[str, int | None] | None:
    """(AWS error type, HTTP status or None) of an Arrow S3 error, or None for other errors."""
    found = list(_AWS_ERROR.finditer(str(exc)))
    if not found:
        return None
    last = found[-1]
    return last["type"], int(last["status"]) if last["status"] else None


def _classify(exc: BaseException, uri: str) -> StorageError:
    text = str(exc)
    code = store_error_code(exc)
    error_type, status = code if code else (None, None)
    if isinstance(exc, FileNotFoundError) or error_type in _NOT_FOUND or status == 404:
        return StorageError(f"object not found: {uri} (deleted or wrong key?)", permanent=True)
    if error_type in _DENIED or status == 403:
        return StorageError(f"access denied reading {uri}: check the credentials' permissions",
                            permanent=True)
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{uri} is a directory, not a file", permanent=True)
    if isinstance(exc, PermissionError):
        return StorageError(f"permission denied reading {uri}", permanent=True)
    return StorageError(f"could not read {uri} after retries: {text.splitlines()[0] if text else type(exc).__name__}",
                        permanent=False)


def read_bytes(uri: str, config: StorageConfig = StorageConfig(), *, max_bytes: int | None = None) -> bytes:
    """Whole object; raises StorageError (permanent or not) with a message a person can act on."""
    fs, path = resolve(uri, config)
    delay = 0.5
    for attempt in range(1, config.read_attempts + 1):
        try:
            with fs.open_input_file(path) as handle:
                size = handle.size()
                if max_bytes is not None and size > max_bytes:
                    raise StorageError(
                        f"{uri} is {size / 2**20:.0f} MiB, over the input size limit of "
                        f"{max_bytes / 2**20:.0f} MiB", permanent=True)
                return handle.read()
        except StorageError:
            raise
        except OSError as exc:
            error = _classify(exc, uri)
            if error.permanent or attempt == config.read_attempts:
                raise error from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
