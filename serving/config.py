"""Typed settings of the online endpoint: engine, scaling, security limits, media policy.

One pydantic model, `ServingConfig`, is what the CLI (`python -m serving.app`), the Serve app builder
(`serve run serving.app:build_app key=value ...`, Serve config files, the KubeRay RayService) and the
tests all fill in. Engine settings are *not* duplicated here: `engine_settings()` renders them into
`model.engine.EngineSettings`, the project's one engine builder shared with the batch pipeline.

Secrets never live in this object: it holds the *path* of an API-key file and the *name* of an
environment variable; the ingress replica reads the keys itself at start. That keeps keys out of the
Serve controller's stored application config, `serve status` output and logs.
"""

from __future__ import annotations

import pathlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.engine import EngineSettings


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # -- model / engine (rendered through model.engine.EngineSettings) ------------------------
    model: str = Field(description="Checkpoint directory (HF layout).")
    model_id: str | None = Field(None, description="Name clients send as `model`; default: directory name.")
    device: Literal["auto", "cpu", "gpu"] = "auto"
    max_model_len: int = 8192
    max_images_per_prompt: int = 4
    max_audios_per_prompt: int = 4
    max_soft_tokens: int | None = None
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = Field(
        None, description="Running sequences per engine. None: vLLM's own default for the GPU; 64 on CPU.")
    max_num_batched_tokens: int | None = Field(None, description="Tokens per engine step. None: vLLM's default.")
    cpu_kv_cache_gib: int = 1

    # -- HTTP ----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"

    # -- scaling / lifecycle (Ray Serve deployment options) -------------------------------------
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 16
    max_ongoing_requests: int = 64
    max_queued_requests: int = Field(
        256,
        description="Requests each ingress replica may queue for the LLM servers once every replica has "
        "max_ongoing_requests in flight; beyond that 503 + Retry-After (the openai client retries). -1: unbounded.",
    )
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.1  # the ingress only parses and forwards; a fraction of a core
    llm_replica_num_cpus: float | None = Field(
        None,
        description="Logical CPUs of the LLMServer replica actor (the engine worker has its own bundle). "
        "None: 0.1 on CPU machines, Ray's default (1) on GPU.",
    )
    ray_fast_paths: bool = Field(
        True,
        description="When `python -m serving.app` starts its own Ray: HAProxy direct ingress and Serve's "
        "throughput-optimized mode (serving/ray_settings.py). On an existing cluster set them on the nodes.",
    )
    stream_batching_interval_ms: float = Field(
        10.0,
        description="The LLM server sends a stream's chunks on to the ingress at most once per interval "
        "(ray.serve.llm's stream_batching_interval_ms; Ray's default is 50). 0: every chunk on its own.",
    )
    stream_first_chunk_immediately: bool = Field(
        True,
        description="Send a stream's first chunk as soon as it exists, then batch (serving/llm_server.py); "
        "False: ray.serve.llm's batcher, which holds the first chunk for one interval.",
    )
    llm_access_log: bool = Field(
        False, description="Ray Serve's access log line per call in the model server (the ingress logs every request)."
    )
    per_request_metrics: bool = Field(
        False,
        description="vLLM's per-request engine timings (queue, first token, generation) in each response's "
        "`metrics` field (vLLM's --enable-per-request-metrics); bench/serving.py --hops reads them.",
    )
    graceful_shutdown_timeout_s: float = 30.0
    graceful_shutdown_wait_loop_s: float = 2.0

    # -- authentication and per-key limits -----------------------------------------------------
    api_keys_file: str | None = Field(None, description="File with one key per line ('#' comments).")
    api_keys_env: str = Field("SERVING_API_KEYS", description="Env var with comma-separated keys.")
    allow_unauthenticated: bool = Field(
        False, description="Serve without keys (development only); otherwise no keys -> refuse to start."
    )
    max_concurrent_per_key: int = Field(8, description="In-flight requests per key per ingress replica; 429 above.")
    requests_per_minute_per_key: int | None = Field(None, description="Token-bucket rate per key; None = off.")

    # -- request limits (400/413) --------------------------------------------------------------
    max_body_bytes: int = 32 * 1024 * 1024
    max_images_per_request: int | None = Field(None, description="Default: max_images_per_prompt.")
    max_image_pixels: int = 40_000_000
    max_audios_per_request: int | None = Field(None, description="Default: max_audios_per_prompt.")
    max_chat_audio_seconds: float = Field(30.0, description="Per clip in chat; the model window is 30 s.")
    max_transcription_seconds: float = 4 * 3600.0
    max_transcription_concurrency: int = Field(8, description="Chunks of one transcription in flight at once.")
    # Same defaults as the batch pipeline (jobs.spec.JobSpec), so both transcribe a file identically
    # (model.inputs.audio_chunks): VAD cuts at pauses; pack/chunk None: what the checkpoint declares.
    transcription_segmentation: Literal["vad", "fixed"] = "vad"
    transcription_pack: Literal["window", "utterance"] | None = None
    transcription_chunk_s: float | None = Field(None, description="Longest chunk; default: the model's window.")
    transcription_overlap_s: float = Field(2.0, description="Overlap of fixed windows.")
    transcription_max_tokens: int = 512

    # -- media URL policy ----------------------------------------------------------------------
    allowed_media_domains: list[str] = Field(
        default_factory=list, description="http(s) hosts media may be fetched from; empty = http(s) off."
    )
    allow_s3_media: bool = True
    media_fetch_timeout_s: float = 20.0

    @field_validator("allowed_media_domains", mode="before")
    @classmethod
    def _split_domains(cls, value):
        if isinstance(value, str):
            value = [d for d in value.split(",")]
        return [d.strip().lower() for d in value if d and d.strip()]

    @field_validator("api_keys_file")
    @classmethod
    def _absolute_keys_file(cls, value):
        # Replicas may run with another working directory: store an absolute path.
        return str(pathlib.Path(value).expanduser().resolve()) if value else value

    # -- derived -------------------------------------------------------------------------------
    @property
    def served_model_id(self) -> str:
        return self.model_id or pathlib.Path(self.model).name

    @property
    def images_per_request(self) -> int:
        return self.max_images_per_request or self.max_images_per_prompt

    @property
    def audios_per_request(self) -> int:
        return self.max_audios_per_request or self.max_audios_per_prompt

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            model=str(pathlib.Path(self.model).expanduser().resolve()),
            device=self.device,
            max_model_len=self.max_model_len,
            max_images_per_prompt=self.max_images_per_prompt,
            max_audios_per_prompt=self.max_audios_per_prompt,
            max_soft_tokens=self.max_soft_tokens,
            tensor_parallel_size=self.tensor_parallel_size,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            cpu_kv_cache_gib=self.cpu_kv_cache_gib,
        )
