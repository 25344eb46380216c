"""The typed job spec: what `python -m jobs.run` flags, YAML files and notebooks all produce."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import pathlib
from typing import Any

import yaml

from connectors.sources import ParquetColumns
from jobs import quality
from connectors.storage import StorageConfig
from model.engine import EngineSettings
from model.inputs.audio_chunks import CheckpointAudio, Segmentation, checkpoint_audio
from model.inputs.media import MediaLimits
from model.inputs.pages import PageGeometry


PDF_TEXT_MODES = ("ignore", "anchor", "prefer")


@dataclasses.dataclass
class JobSpec:
    inputs: list[str]
    output: str
    model: str
    # What to ask: "auto" (documents -> markdown, audio -> transcribe, unless the checkpoint declares
    # otherwise in default_tasks.json), "markdown" (= "document"), "text" (plain text), "transcribe",
    # or any other text as a custom instruction. A Parquet prompt column overrides it.
    task: str = "auto"
    # Soft tokens per page image (70/140/280/560/1120); documents want the large budgets. None: the
    # checkpoint's default.
    image_tokens: int | None = None
    # Highest DPI a PDF page is rendered at: pages are rendered directly at the model's size for the
    # budget (model.inputs.pages), at most this resolution.
    pdf_dpi: float = 300.0
    max_pages: int = 10_000
    max_new_tokens: int = 512
    # Output checks (jobs/quality.py). A segment flagged truncated/repetitive/invalid_json is run
    # again up to `retries` times at a raised temperature with a fixed seed; the best attempt is
    # kept. Off by default: each round costs an engine start and re-decoding its sources, and a page
    # longer than max_new_tokens is truncated again at any temperature (docs/batch.md).
    # `strict`: a source whose segments are still truncated/repetitive after that becomes an error
    # row instead of an ok row carrying the flags.
    retries: int = 0
    strict: bool = False
    # Structured extraction: a JSON schema (inline JSON text, a mapping, or a local/s3 path to a
    # .json file). Each page/chunk is decoded under the schema (vLLM guided decoding) and validated.
    json_schema: str | dict | None = None
    # A PDF page's embedded text layer (model/inputs/pdf_text.py): "ignore" (the model reads every
    # page), "anchor" (the layer goes into the prompt as context), "prefer" (a usable layer is the
    # page's text and the model is skipped for that page; with a JSON schema it acts as "anchor").
    pdf_text: str = "ignore"
    # Long audio (model.inputs.audio_chunks): "vad" cuts at pauses and sends only speech, "fixed"
    # cuts windows of chunk_s with overlap_s of overlap (audio that is not speech). pack: "window"
    # (speech up to chunk_s per call) or "utterance" (one per call); None: what the checkpoint
    # declares. chunk_s None: the checkpoint's audio window (30 s for the real model).
    segmentation: str = "vad"
    pack: str | None = None
    chunk_s: float | None = None
    overlap_s: float = 2.0
    # Also write one subtitle file per recording beside the tables: "srt" or "vtt".
    subtitles: str | None = None
    # Engine placement: GPUs per inference actor (0 on CPU), tensor parallel degree, actor pool.
    device: str = "auto"
    gpus_per_actor: float | None = None  # None: tensor_parallel_size on GPU, 0 on CPU
    tensor_parallel_size: int = 1
    actors_min: int = 1
    actors_max: int = 1
    batch_size: int = 16
    # Engine concurrency. None: vLLM's own defaults for the hardware on GPU (its offline table:
    # 256 running sequences / 8192 batched tokens, 1024 / 16384 on H100-class GPUs), resolved on a GPU
    # worker; CPU_MAX_NUM_SEQS running sequences on CPU.
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    # Batches in flight per inference actor. None: enough rows to cover the engine's capacity,
    # ceil(1.1 * max_num_seqs / batch_size) (ray.data.llm admits 1.1 x max_num_seqs into the engine).
    max_concurrent_batches: int | None = None
    max_model_len: int = 8192
    cpus_per_decode_task: float | None = None  # None: 1 on GPU clusters, 0.5 on CPU machines
    # Fail the job (non-zero exit) when more than this share of sources errored.
    error_threshold: float = 0.1
    # Reliability: the stream is attempted up to max_attempts times from the work area (a lost node
    # or a stalled engine is survived with a fresh engine); no progress anywhere in the pipeline for
    # stall_timeout_s counts as a stall (Ray Data's no-progress guard; generous: a 12B engine's load
    # from network storage or a wait for a GPU node must not trip it).
    max_attempts: int = 3
    stall_timeout_s: float = 900.0
    # Identity of the run: same run_id + same output = resume / idempotent re-run.
    run_id: str | None = None  # None: derived from the run date and the job's inputs and task
    run_date: str | None = None  # YYYY-MM-DD, default today (UTC); the output partition
    parquet: ParquetColumns = dataclasses.field(default_factory=ParquetColumns)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if not self.inputs:
            raise ValueError("at least one input is required")
        if isinstance(self.parquet, dict):
            self.parquet = ParquetColumns(**self.parquet)
        if isinstance(self.storage, dict):
            self.storage = StorageConfig(**self.storage)
        if not 0 <= self.error_threshold <= 1:
            raise ValueError("error_threshold must be between 0 and 1")
        if self.actors_min < 1 or self.actors_max < self.actors_min:
            raise ValueError("actor pool needs 1 <= actors_min <= actors_max")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be > 0 seconds")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        if self.max_concurrent_batches is not None and self.max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be >= 1 (or unset: derived from max_num_seqs)")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        if self.pdf_text not in PDF_TEXT_MODES:
            raise ValueError(f"pdf_text must be one of {', '.join(PDF_TEXT_MODES)}, not {self.pdf_text!r}")
        self.schema_text()  # validates the JSON schema (and reads its file once)
        if self.run_date is None:
            self.run_date = dt.datetime.now(dt.timezone.utc).date().isoformat()
        dt.date.fromisoformat(self.run_date)  # validates the format
        if self.run_id is None:
            self.run_id = self.default_run_id()
        if not self.run_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError("run_id may contain letters, digits, '-' and '_' only")
        if self.subtitles not in (None, "srt", "vtt"):
            raise ValueError(f"subtitles must be srt or vtt, not {self.subtitles!r}")
        self.media_limits()  # validates dpi / pages
        self.audio_segmentation().max_samples(self.checkpoint_audio().frames)  # validates the audio settings
        self.engine_settings()  # validates image_tokens / tensor parallel

    def default_run_id(self) -> str:
        """Same date + same inputs + same task/model settings -> same id, so re-running the same
        nightly command resumes (or is a no-op) instead of starting a second run."""
        fields = [sorted(self.inputs), self.task, pathlib.PurePath(self.model).name,
                  self.image_tokens, self.pdf_dpi, self.max_new_tokens, self.chunk_s, self.overlap_s]
        # Settings that change what is computed, only when set (ids of earlier runs stay the same;
        # chunk_s None, the checkpoint's window, already tells VAD runs from the fixed-window ones).
        if (self.segmentation, self.pack) != ("vad", None):
            fields.append(["audio", self.segmentation, self.pack])
        if self.schema_text() is not None:
            fields.append(["json_schema", self.schema_text()])
        if self.pdf_text != "ignore":
            fields.append(["pdf_text", self.pdf_text])
        key = json.dumps(fields)
        return f"{self.run_date.replace('-', '')}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    # -- derived settings ----------------------------------------------------------------------
    def schema_text(self) -> str | None:
        """The job's JSON schema as compact JSON text (read once from its file), or None."""
        if self.json_schema is None:
            return None
        cached = getattr(self, "_schema_text", None)
        if cached is None:
            value = self.json_schema
            if isinstance(value, str) and not value.lstrip().startswith("{"):
                from connectors.storage import read_bytes

                try:
                    value = read_bytes(value, self.storage, max_bytes=1 << 20).decode("utf-8")
                except Exception as exc:  # noqa: BLE001 - missing file, bad encoding
                    raise ValueError(f"cannot read the JSON schema {self.json_schema!r}: {exc}") from None
            try:
                cached = quality.canonical_schema(value)
            except ValueError as exc:
                raise ValueError(f"json_schema: {exc}") from None
            object.__setattr__(self, "_schema_text", cached)
        return cached

    def media_limits(self) -> MediaLimits:
        return MediaLimits(pdf_dpi=self.pdf_dpi, max_pages=self.max_pages)

    def page_geometry(self) -> PageGeometry:
        """How pages are sized for the model: the checkpoint's image processor settings and the budget."""
        return PageGeometry.from_checkpoint(self.model, self.image_tokens)

    def audio_segmentation(self) -> Segmentation:
        return Segmentation(mode=self.segmentation, pack=self.pack, max_chunk_s=self.chunk_s,  # type: ignore[arg-type]
                            overlap_s=self.overlap_s)

    def checkpoint_audio(self) -> CheckpointAudio:
        return checkpoint_audio(self.model)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            model=self.model,
            device=self.device,  # type: ignore[arg-type]
            max_model_len=self.max_model_len,
            max_images_per_prompt=1,  # one page per request
            max_audios_per_prompt=1,  # one chunk per request
            max_soft_tokens=self.image_tokens,
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            seed=self.seed,
        )

    def concurrent_batches(self, max_num_seqs: int) -> int:
        """Batches in flight per inference actor: the rows must cover what the engine admits."""
        if self.max_concurrent_batches is not None:
            return self.max_concurrent_batches
        return max(1, math.ceil(1.1 * max_num_seqs / self.batch_size))

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown job spec fields: {sorted(unknown)}")
        return cls(**data)

    @staticmethod
    def yaml_dict(path: str | pathlib.Path) -> dict[str, Any]:
        data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a job spec must be a mapping of field: value")
        if "input" in data and "inputs" not in data:
            data["inputs"] = data.pop("input")
        return data

    @classmethod
    def from_yaml(cls, path: str | pathlib.Path) -> JobSpec:
        return cls.from_dict(cls.yaml_dict(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
