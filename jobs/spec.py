"""The batch job's configuration: what `python -m jobs.run` options, YAML specs and notebooks produce.

    JobSpec(inputs=["s3://scans/2026-11-22/"], output={"uri": "s3://results/ocr"},
            engine={"model": "/models/gemma-4-12B-it", "image_tokens": 1120}, run={"actors": (1, 4)})

Sections: `engine`, `pages`, `audio` and `storage` are the endpoint's types too (model.config);
`parquet` (input columns), `output` (what each input becomes, and where) and `run` (identity,
resources, reliability) are the job's own. Validation is pure; `resolve()` does the I/O once, where the
job starts: it reads the JSON schema file, checks the audio settings against the checkpoint, and fixes
the run date and run id. `run_job` also checks the engine arguments against the installed vLLM.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import pathlib
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.sources import ParquetColumns
from connectors.storage import StorageConfig
from jobs import quality
from model.config import AudioConfig, PagesConfig
from model.engine import EngineConfig

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class JobEngine(EngineConfig):
    """engine: the vLLM engine (checkpoint, device, precision, memory, multimodal limits, concurrency)"""

    # The job sends one page or one audio chunk per request: the engine reserves for no more.
    max_images_per_prompt: int = Field(1, ge=0, description=EngineConfig.model_fields["max_images_per_prompt"].description)
    max_audios_per_prompt: int = Field(1, ge=0, description=EngineConfig.model_fields["max_audios_per_prompt"].description)


class JobPages(PagesConfig):
    """pages: images and documents"""

    pdf_dpi: float = Field(300.0, gt=0, le=1200,
                           description="highest PDF render DPI (pages render at the model's size, at most this)")
    max_pages: int = Field(10_000, ge=1, description="pages per PDF/TIFF; more is an error row")
    pdf_text: Literal["ignore", "anchor", "prefer"] = Field(
        "ignore", description="a PDF page's own text layer: ignore (the model reads every page), anchor (given to "
        "the model as context), prefer (a usable layer is the page's text; with a JSON schema it acts as anchor)")


class OutputConfig(BaseModel):
    """output: what each input becomes, and where it is written"""

    model_config = _FROZEN

    uri: str = Field(description="output root (local path or s3://bucket/prefix)", json_schema_extra={"flag": "--output"})
    task: str = Field("auto", description="auto | markdown (= document) | text | transcribe | an instruction "
                      "(auto: documents -> markdown, audio -> transcribe, or what the checkpoint declares)")
    max_new_tokens: int = Field(512, ge=1, description="new tokens per page or audio chunk")
    json_schema: str | dict | None = Field(
        None, description="decode each page/chunk under this JSON schema (a file, s3:// object or inline JSON) "
        "and validate it; results in the json columns", json_schema_extra={"metavar": "FILE|JSON"})
    retries: int = Field(0, ge=0, description="re-run a truncated/repetitive/invalid-JSON segment up to N times at "
                         "a raised temperature with a fixed seed, keeping the best attempt (0: flag only)")
    strict: bool = Field(False, description="a source whose segments stay truncated/repetitive after the retries "
                         "is an error row, not an ok row with the flags")
    subtitles: Literal["srt", "vtt"] | None = Field(None, description="also write a subtitle file per recording")

    @field_validator("json_schema")
    @classmethod
    def _inline_schema(cls, value):
        """Inline schemas are checked here; a file is read and checked by `JobSpec.resolve()`."""
        if isinstance(value, dict) or (isinstance(value, str) and value.lstrip().startswith("{")):
            try:
                return quality.canonical_schema(value)
            except ValueError as exc:
                raise ValueError(f"json_schema: {exc}") from None
        return value


_RUN_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class RunConfig(BaseModel):
    """run: identity, resources and reliability of the run"""

    model_config = _FROZEN

    run_id: str | None = Field(None, description="same run id + same output = resume (default: derived from the "
                               "run date, the inputs and what is computed)")
    run_date: str | None = Field(None, description="YYYY-MM-DD output partition (default: today, UTC)")
    actors: tuple[int, int] = Field((1, 1), description="inference actor pool size",
                                    json_schema_extra={"metavar": "MIN[,MAX]"})
    batch_size: int = Field(16, ge=1, description="rows per inference batch")
    max_concurrent_batches: int | None = Field(
        None, ge=1, description="batches in flight per inference actor (default: enough to cover max_num_seqs)")
    gpus_per_actor: float | None = Field(None, ge=0, description="default: tensor_parallel_size on GPU, 0 on CPU")
    cpus_per_decode_task: float | None = Field(None, gt=0, description="CPUs per decode task (default: 1 on GPU "
                                               "clusters, 0.5 on CPU machines)")
    error_threshold: float = Field(0.1, description="largest share of error rows before exit 3")
    max_attempts: int = Field(3, ge=1, description="attempts of the stream from the work area after a lost node "
                              "or a stalled engine")
    stall_timeout_s: float = Field(900.0, gt=0, description="no progress anywhere in the pipeline for this long "
                                   "= the engine stalled", json_schema_extra={"flag": "--stall-timeout"})

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, value):
        if value is not None and not _RUN_ID.match(value):
            raise ValueError("run_id may contain letters, digits, '-' and '_' only")
        return value

    @field_validator("error_threshold")
    @classmethod
    def _share(cls, value):
        if not 0 <= value <= 1:
            raise ValueError("error_threshold must be between 0 and 1")
        return value

    @field_validator("run_date")
    @classmethod
    def _run_date(cls, value):
        if value is not None:
            dt.date.fromisoformat(value)  # ValueError names the bad value
        return value

    @field_validator("actors", mode="before")
    @classmethod
    def _pool(cls, value):
        if isinstance(value, str):
            lo, _, hi = value.partition(",")
            return int(lo), int(hi or lo)
        if isinstance(value, int):
            return value, value
        return value

    @field_validator("actors")
    @classmethod
    def _pool_order(cls, value):
        if not 1 <= value[0] <= value[1]:
            raise ValueError("actor pool needs 1 <= MIN <= MAX")
        return value

    def concurrent_batches(self, max_num_seqs: int) -> int:
        """Batches in flight per inference actor: the rows must cover what the engine admits
        (ray.data.llm admits 1.1 x max_num_seqs into the engine)."""
        if self.max_concurrent_batches is not None:
            return self.max_concurrent_batches
        return max(1, math.ceil(1.1 * max_num_seqs / self.batch_size))


class JobSpec(BaseModel):
    """A batch job."""

    model_config = _FROZEN

    inputs: list[str] = Field(
        min_length=1, description="s3://bucket/prefix/, s3://bucket/**.pdf, a local dir/glob, or a Parquet file",
        json_schema_extra={"flag": "--input", "repeat": True, "metavar": "URI"})
    output: OutputConfig
    engine: JobEngine
    pages: JobPages = JobPages()
    audio: AudioConfig = AudioConfig()
    parquet: ParquetColumns = ParquetColumns()
    storage: StorageConfig = StorageConfig()
    run: RunConfig = RunConfig()

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_input(cls, value):
        return [value] if isinstance(value, str) else value

    # -- where the job starts ------------------------------------------------------------------
    def resolve(self) -> JobSpec:
        """This spec with what needs I/O settled, once: the JSON schema read from its file (s3:// or
        local) and kept inline, the audio settings checked against the checkpoint's window, the run
        date and run id fixed. Raises ValueError naming the setting to change. Resolving a resolved
        spec changes nothing. (No vLLM import here: `jobs.run` resolves before its log file takes
        the console, and a notebook submitting a job may not have vLLM.)"""
        output = self.output
        if isinstance(output.json_schema, str) and not output.json_schema.lstrip().startswith("{"):
            from connectors.storage import read_bytes

            try:
                text = read_bytes(output.json_schema, self.storage, max_bytes=1 << 20).decode("utf-8")
                schema = quality.canonical_schema(text)
            except Exception as exc:  # noqa: BLE001 - missing file, bad encoding, not a schema
                raise ValueError(f"json_schema: cannot use {output.json_schema!r}: {exc}") from None
            output = output.model_copy(update={"json_schema": schema})
        try:
            self.audio.to_segmentation().max_samples(self.engine.checkpoint_audio().frames)
        except ValueError as exc:
            raise ValueError(f"audio: {exc}") from None
        run = self.run
        if run.run_date is None:
            run = run.model_copy(update={"run_date": dt.datetime.now(dt.timezone.utc).date().isoformat()})
        resolved = self.model_copy(update={"output": output, "run": run})
        if run.run_id is None:
            resolved = resolved.model_copy(
                update={"run": run.model_copy(update={"run_id": resolved.default_run_id()})})
        return resolved

    def default_run_id(self) -> str:
        """Same date + same inputs + same task/model settings -> same id, so re-running the same
        nightly command resumes (or is a no-op) instead of starting a second run."""
        fields = [sorted(self.inputs), self.output.task, pathlib.PurePath(self.engine.model).name,
                  self.engine.image_tokens, self.pages.pdf_dpi, self.output.max_new_tokens, self.audio.chunk_s,
                  self.audio.overlap_s]
        # Settings that change what is computed, only when set (ids of earlier runs stay the same;
        # chunk_s None, the checkpoint's window, already tells VAD runs from the fixed-window ones).
        if (self.audio.segmentation, self.audio.pack) != ("vad", None):
            fields.append(["audio", self.audio.segmentation, self.audio.pack])
        if self.output.json_schema is not None:
            fields.append(["json_schema", self.output.json_schema])
        if self.pages.pdf_text != "ignore":
            fields.append(["pdf_text", self.pages.pdf_text])
        key = json.dumps(fields)
        return f"{self.run.run_date.replace('-', '')}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    # -- derived settings --------------------------------------------------------------------------
    def media_limits(self):
        """Bounds for decoding one input (model.inputs.media.MediaLimits)."""
        from model.inputs.media import MediaLimits

        return MediaLimits(pdf_dpi=self.pages.pdf_dpi, max_pages=self.pages.max_pages,
                           max_image_pixels=self.pages.max_image_pixels, max_audio_seconds=self.audio.max_audio_seconds)

    # -- YAML --------------------------------------------------------------------------------------
    @staticmethod
    def yaml_dict(path: str | pathlib.Path) -> dict[str, Any]:
        data = yaml.safe_load(pathlib.Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a job spec must be a mapping of section: settings")
        return data

    @classmethod
    def from_yaml(cls, path: str | pathlib.Path) -> JobSpec:
        return cls.model_validate(cls.yaml_dict(path))
