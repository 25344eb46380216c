"""Object storage and local files behind one pyarrow filesystem interface.

`StorageConfig` says how to reach S3-compatible stores (on-prem MinIO/Ceph are the normal case) and
holds no secrets: credentials always come from the standard AWS chain of the process that uses the
filesystem (environment, `~/.aws` profiles, instance metadata), so the config can be shipped to Ray
workers and written into summaries. The endpoint comes from `AWS_ENDPOINT_URL_S3` /
`AWS_ENDPOINT_URL` or the profile's `endpoint_url`, as boto3 and the AWS CLI resolve it.

Transient S3 failures (5xx, SlowDown, throttling, dropped connections) are retried by the AWS SDK's
standard retry strategy inside pyarrow; `read_bytes` adds a few attempts with backoff on top for
errors the SDK surfaces as plain OSErrors (e.g. a connection reset while streaming the body).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
import time
import urllib.parse

import pyarrow.fs as pafs

_GLOB_CHARS = set("*?[")


class StorageError(OSError):
    """An object that cannot be read; `permanent` says whether retrying can help."""

    def __init__(self, message: str, *, permanent: bool):
        super().__init__(message)
        self.permanent = permanent


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str | None = None  # None: resolve from AWS settings in the process using it
    region: str | None = None
    profile: str | None = None
    max_attempts: int = 8  # AWS SDK standard retry strategy (exponential backoff with jitter)
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    read_attempts: int = 3  # extra attempts around a whole object read

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return self.endpoint_url
        for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(var):
                return os.environ[var]
        try:  # profile setting `endpoint_url` (botocore >= 1.31), as the AWS CLI reads it
            import botocore.session

            session = botocore.session.Session(profile=self.profile or os.environ.get("AWS_PROFILE"))
            config = session.get_scoped_config()
            return config.get("endpoint_url") or (config.get("s3") or {}).get("endpoint_url")
        except Exception:  # noqa: BLE001 - no profile file / unknown profile: plain AWS endpoint
            return None

    def resolved_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")

    def s3(self) -> pafs.S3FileSystem:
        return _s3_filesystem(self, os.environ.get("AWS_PROFILE"), self.resolved_endpoint())


@functools.lru_cache(maxsize=8)
def _s3_filesystem(config: StorageConfig, _profile: str | None, endpoint: str | None) -> pafs.S3FileSystem:
    kwargs: dict = dict(
        region=config.resolved_region() or "us-east-1",
        connect_timeout=config.connect_timeout_s,
        request_timeout=config.request_timeout_s,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=config.max_attempts),
    )
    if endpoint:
        parsed = urllib.parse.urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
    return pafs.S3FileSystem(**kwargs)


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


def _classify(exc: BaseException, uri: str) -> StorageError:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, FileNotFoundError) or "nosuchkey" in low or "not found" in low or "404" in low:
        return StorageError(f"object not found: {uri} (deleted or wrong key?)", permanent=True)
    if "access_denied" in low or "accessdenied" in low or "forbidden" in low or "403" in low:
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
