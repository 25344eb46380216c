"""Preflight: before Ray or any engine starts, check what would otherwise fail the run late.

    report = preflight.check(spec, OutputLayout(spec))     # raises PreflightError, or returns timings

Four checks, each in seconds and each naming the location and what the storage answered:

* **JSON schema runnable**: the job's `--json-schema` is one guided decoding can run
  (`model.structured_outputs.check_schema`: vLLM's own validation for the engine's backend); a
  keyword it cannot enforce is named here, once, instead of failing every row at the engine.

* **inputs listable**: every `--input` resolves, and its prefix, directory, glob base or file can
  be looked at with the job's credentials (one HEAD / one-key listing per input on S3, a stat
  locally: cheap whatever the number of sources; the full listing follows).
* **output writable the way the work area is written**: a probe Parquet file is written under
  `<output>/_work/<run_id>/_preflight/` through the same pyarrow filesystem the work area uses.
  On S3 pyarrow writes every object as a multipart upload (even 10 bytes); the probe is
  `PROBE_BYTES` so it takes two parts, exercising CreateMultipartUpload, UploadPart and
  CompleteMultipartUpload. Its footer is read back and the probe deleted (finalize replaces files
  and resume removes cut ones, so deletes must work too). Why: a store that refuses the upload
  (measured: moto 5.2.1 answers every CompleteMultipartUpload with INTERNAL_FAILURE inside a 200,
  which Ray Data retries as transient for minutes) otherwise lets the job start Ray, load the
  engine and run inference before its first work-area write fails.
* **model is a loadable checkpoint**: config.json parses and names a Gemma 4 Unified
  architecture, a tokenizer is there, every weight shard named by the index exists and every
  safetensors header parses with its data all present (a truncated copy fails here, not after the
  engine's start). On an attached cluster a model path the driver cannot see is left to the
  engine (it may be a path on the GPU nodes only).
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import pathlib
import struct
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.storage import resolve
from jobs.exit_codes import ConfigError
from jobs.spec import JobSpec

PROBE_BYTES = 11 * 2**20  # > pyarrow's S3 part size (10 MiB): two parts
PROBE_ATTEMPTS = 3  # SDK attempts per probe request (the job's own writes keep StorageConfig's)
_GLOB_CHARS = set("*?[")
# A local output that fails with one of these names a place this process cannot write (under a file,
# on a read-only or pseudo filesystem, not permitted): fixed in the command (exit 2). Anything else
# (a full disk, a store's refusal) is the storage's failure (exit 1).
_COMMAND_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENOENT, errno.EEXIST, errno.EISDIR}


class PreflightError(RuntimeError):
    """The job cannot succeed as it is; nothing was started (exit 1). `check` says which check."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


class PreflightConfigError(PreflightError, ConfigError):
    """The command names what is not there: an input that does not exist, a local output this process
    cannot write, a model path that is no Gemma 4 Unified checkpoint. A configuration error (exit 2):
    fixed in the command, not the store."""


@dataclasses.dataclass
class PreflightReport:
    schema_s: float
    inputs_s: float
    output_s: float
    model_s: float
    model_checked: bool

    @property
    def total_s(self) -> float:
        return self.schema_s + self.inputs_s + self.output_s + self.model_s

    def line(self) -> str:
        model = "checkpoint ok" if self.model_checked else "not visible here, left to the engine"
        return (f"preflight passed in {self.total_s:.1f} s (inputs listable {self.inputs_s:.1f} s, output "
                f"accepts a multipart write {self.output_s:.1f} s, model {model} {self.model_s:.1f} s)")


def check(spec: JobSpec, work_root: str, *, attached: bool | None = None) -> PreflightReport:
    """All four checks; `work_root` is the run's work-area directory (`<output>/_work/<run_id>`).
    `attached`: the driver is attached to a cluster (default: RAY_ADDRESS is set)."""
    if attached is None:
        attached = bool(os.environ.get("RAY_ADDRESS"))
    started = time.perf_counter()
    check_schema(spec)
    t0 = time.perf_counter()
    for uri in spec.inputs:
        check_input(uri, spec)
    t1 = time.perf_counter()
    check_output(work_root, spec)
    t2 = time.perf_counter()
    checked = check_model(spec.engine.model, attached=attached)
    t3 = time.perf_counter()
    return PreflightReport(schema_s=t0 - started, inputs_s=t1 - t0, output_s=t2 - t1, model_s=t3 - t2, model_checked=checked)


def _answer(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


# -- JSON schema ----------------------------------------------------------------------------------


def check_schema(spec: JobSpec) -> None:
    """The job's JSON schema can be run by guided decoding (a Parquet row's own schema is checked
    with its row: a schema nothing can run is that row's error)."""
    text = spec.output.json_schema  # resolved: canonical JSON text
    if text is None:
        return
    from model.structured_outputs import UnsupportedSchema, check_schema as check

    try:
        check(text)
    except UnsupportedSchema as exc:
        raise PreflightConfigError("schema", f"--json-schema: {exc}") from None


# -- inputs ---------------------------------------------------------------------------------------


def check_input(uri: str, spec: JobSpec) -> None:
    try:
        fs, path = resolve(uri, spec.storage)
    except Exception as exc:  # noqa: BLE001 - e.g. an endpoint URL pyarrow cannot parse
        raise PreflightError("inputs", f"input {uri} cannot be opened: {_answer(exc)}") from None
    if any(c in path for c in _GLOB_CHARS):
        path = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)].rsplit("/", 1)[0]
    try:
        # S3: a HEAD, then a one-key listing when it is a prefix (pyarrow's directory test).
        info = fs.get_file_info(path.rstrip("/") or path)
    except Exception as exc:  # noqa: BLE001 - the storage's answer is the message
        raise PreflightError("inputs", f"input {uri} is not listable: {_answer(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise PreflightConfigError("inputs", f"no input files match {uri}: no such file, directory or prefix ({path})")


# -- output ---------------------------------------------------------------------------------------


def _probe_table() -> pa.Table:
    # Random bytes do not compress: the file is as large as the column, so it needs two parts.
    return pa.table({"probe": pa.array([os.urandom(PROBE_BYTES)], pa.binary())})


def check_output(work_root: str, spec: JobSpec) -> None:
    probe_uri = f"{work_root.rstrip('/')}/_preflight/probe-{uuid.uuid4().hex[:12]}.parquet"
    # The work area's filesystem with fewer SDK attempts: a store that refuses uploads answers
    # the same every time, and the job's 8 attempts with backoff take a minute to say so.
    storage = spec.storage.model_copy(update={"max_attempts": min(spec.storage.max_attempts, PROBE_ATTEMPTS)})
    fs, path = resolve(probe_uri, storage)
    local = isinstance(fs, pafs.LocalFileSystem)
    try:
        if local:  # object stores need no directories (and would get marker objects)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:  # what Ray Data's write_parquet does per file
            pq.write_table(_probe_table(), out)
    except Exception as exc:  # noqa: BLE001 - the storage's answer is the message
        _delete_quietly(fs, path)  # a store may keep an upload it answered as failed
        if local and getattr(exc, "errno", None) in _COMMAND_ERRNOS:
            raise PreflightConfigError(
                "output", f"the output {spec.output.uri} is not writable here: writing {probe_uri} failed: "
                f"{_answer(exc)}") from None
        raise PreflightError(
            "output", f"the output {spec.output.uri} refuses writes: a {PROBE_BYTES // 2**20} MiB probe "
            f"written to {probe_uri} the way the work area is written (multipart upload on S3) failed: "
            f"{_answer(exc)}") from None
    try:
        with fs.open_input_file(path) as handle:
            rows = pq.read_metadata(handle).num_rows
        if rows != 1:
            raise OSError(f"the probe reads back with {rows} rows, not 1")
    except Exception as exc:  # noqa: BLE001
        raise PreflightError("output", f"the output {spec.output.uri} accepted a write to {probe_uri} but "
                                       f"does not read it back: {_answer(exc)}") from None
    try:
        fs.delete_file(path)
    except Exception as exc:  # noqa: BLE001
        raise PreflightError("output", f"the output {spec.output.uri} refuses deletes (resume and finalize "
                                       f"replace files): deleting {probe_uri} failed: {_answer(exc)}") from None
    if local:
        try:
            os.rmdir(path.rsplit("/", 1)[0])
        except OSError:
            pass  # another run's probe is in there


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except Exception:  # noqa: BLE001 - best effort: the write's failure is what gets reported
        pass


# -- model ----------------------------------------------------------------------------------------


def check_model(model: str, *, attached: bool = False) -> bool:
    """Check a local checkpoint directory; return False where it was left to the engine."""
    root = pathlib.Path(model).expanduser()
    if not root.exists():
        if attached:
            return False  # may exist on the GPU nodes only; the engine reports it when it starts
        raise PreflightConfigError("model", f"model path {model} does not exist")
    if not root.is_dir():
        raise PreflightConfigError("model", f"model path {model} is not a checkpoint directory")
    config_path = root / "config.json"
    try:
        json.loads(config_path.read_text())
    except FileNotFoundError:
        raise PreflightConfigError("model", f"{model} is not a Hugging Face checkpoint: no config.json") from None
    except (OSError, ValueError) as exc:
        raise PreflightError("model", f"{config_path} cannot be read: {_answer(exc)}") from None
    from model.engine import EngineConfig

    try:
        EngineConfig(model=str(root)).architecture_override()  # refuses other architectures
    except ValueError as exc:
        raise PreflightConfigError("model", str(exc)) from None
    if not any((root / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise PreflightError("model", f"{model} has no tokenizer (tokenizer.json or tokenizer.model)")
    for shard in _weight_files(root):
        _check_safetensors(shard)
    return True


def _weight_files(root: pathlib.Path) -> list[pathlib.Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise PreflightError("model", f"{index} cannot be read: {_answer(exc)}") from None
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise PreflightError("model", f"{root}: weight shards named by {index.name} are missing: "
                                          f"{', '.join(missing[:5])}")
        return [root / n for n in names]
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        raise PreflightError("model", f"{root} has no weights (*.safetensors)")
    return shards


def _check_safetensors(path: pathlib.Path) -> None:
    """The header parses and the file holds every byte it declares (the format: an 8-byte
    little-endian header length, a JSON header of name -> {dtype, shape, data_offsets}, the data)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, 100 * 2**20):
                raise ValueError(f"header length {length} does not fit the file ({size} bytes)")
            header = json.load(io.BytesIO(handle.read(length)))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError) as exc:
        raise PreflightError("model", f"weight file {path} is not a readable safetensors file: {_answer(exc)}") from None
    if size < 8 + length + end:
        raise PreflightError("model", f"weight file {path} is truncated: {size} bytes, its header "
                                      f"declares {8 + length + end}")
