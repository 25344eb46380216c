"""The endpoint's configuration: what `python -m serving.app` options, Serve config `args` and tests fill in.

    ServingConfig(engine={"model": "/models/gemma-4-12B-it", "device": "gpu"},
                  auth={"api_keys_file": "/etc/serving/api_keys"}, deployment={"max_replicas": 4})

Sections: `engine`, `pages`, `audio` and `storage` are the batch job's types too (model.config);
`http`, `deployment`, `auth`, `limits` and `media` are the endpoint's own.

Secrets never live in this object: it holds the *path* of an API-key file and the *name* of an
environment variable; the ingress replica reads the keys itself at start. That keeps keys out of the
Serve controller's stored application config, `serve status` output and logs.
"""

from __future__ import annotations

import pathlib

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.storage import StorageConfig
from model.config import AudioConfig, PagesConfig
from model.engine import EngineConfig

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class EndpointPages(PagesConfig):
    """pages: images in chat requests"""

    max_image_pixels: int = Field(40_000_000, ge=1, description="decoded pixels per image; more is a 400")


class HttpConfig(BaseModel):
    """http: where the endpoint listens"""

    model_config = _FROZEN

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    route_prefix: str = Field("/", description="path the OpenAI routes are served under")


class DeploymentConfig(BaseModel):
    """deployment: Ray Serve replicas, scaling, streaming and shutdown"""

    model_config = _FROZEN

    min_replicas: int = Field(1, ge=0, description="LLM server replicas (one engine each); autoscaled between "
                              "min and max when they differ")
    max_replicas: int = Field(1, ge=1, description="see min_replicas")
    target_ongoing_requests: float = Field(16, gt=0, description="requests per replica the autoscaler aims at")
    max_ongoing_requests: int = Field(64, ge=1, description="requests in flight per LLM server replica")
    max_queued_requests: int = Field(
        256, description="requests each ingress replica queues for the LLM servers once every replica has "
        "max_ongoing_requests in flight; beyond that 503 + Retry-After (the openai client retries); -1: unbounded")
    ingress_replicas: int = Field(1, ge=1, description="ingress (guard, media policy) replicas")
    ingress_num_cpus: float = Field(0.1, ge=0, description="the ingress only parses and forwards: a fraction of a core")
    llm_replica_num_cpus: float | None = Field(
        None, ge=0, description="logical CPUs of the LLMServer replica actor (the engine worker has its own "
        "bundle); default: 0.1 on CPU machines, Ray's (1) on GPU")
    ray_fast_paths: bool = Field(
        True, description="when serving.app starts its own Ray: HAProxy direct ingress and Serve's "
        "throughput-optimized mode (serving/ray_settings.py); on an existing cluster set them on the nodes")
    stream_batching_interval_ms: float = Field(
        10.0, ge=0, description="the LLM server sends a stream's chunks to the ingress at most once per interval "
        "(ray.serve.llm's stream_batching_interval_ms; Ray's default is 50); 0: every chunk on its own")
    stream_first_chunk_immediately: bool = Field(
        True, description="send a stream's first chunk as soon as it exists, then batch (serving/ray_llm_internals.py); "
        "false: ray.serve.llm's batcher, which holds the first chunk for one interval")
    llm_access_log: bool = Field(
        False, description="Ray Serve's access log line per call in the model server (the ingress logs every request)")
    per_request_metrics: bool = Field(
        False, description="vLLM's per-request engine timings (queue, first token, generation) in each "
        "response's `metrics` field; bench/serving.py --hops reads them")
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0, description="how long a stopping replica drains "
                                               "requests in flight")
    graceful_shutdown_wait_loop_s: float = Field(2.0, gt=0, description="how often it checks while draining")


class AuthConfig(BaseModel):
    """auth: API keys and per-key limits"""

    model_config = _FROZEN

    api_keys_file: str | None = Field(None, description="file with one key per line ('#' comments)")
    api_keys_env: str = Field("SERVING_API_KEYS", description="environment variable with comma-separated keys")
    allow_unauthenticated: bool = Field(
        False, description="serve without keys (development only); otherwise no keys -> refuse to start")
    max_concurrent_per_key: int = Field(8, ge=1, description="in-flight requests per key per ingress replica; 429 above")
    requests_per_minute_per_key: int | None = Field(None, ge=1, description="token-bucket rate per key (default: off)")

    @field_validator("api_keys_file")
    @classmethod
    def _absolute_keys_file(cls, value):
        # Replicas may run with another working directory: store an absolute path.
        return str(pathlib.Path(value).expanduser().resolve()) if value else value


class RequestLimits(BaseModel):
    """limits: what one request may carry (400/413 beyond)"""

    model_config = _FROZEN

    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1, description="request body; also the largest fetched "
                                "media file (413 / 400 above)")
    max_images_per_request: int | None = Field(None, ge=0, description="default: the engine's max_images_per_prompt")
    max_audios_per_request: int | None = Field(None, ge=0, description="default: the engine's max_audios_per_prompt")
    max_chat_audio_seconds: float = Field(30.0, gt=0, description="per clip in chat; the model's window is 30 s")
    max_transcription_concurrency: int = Field(8, ge=1, description="chunks of one transcription in flight at once")
    transcription_max_tokens: int = Field(512, ge=1, description="new tokens per transcription chunk (default)")


class MediaSources(BaseModel):
    """media: where media URLs in requests may point"""

    model_config = _FROZEN

    allowed_media_domains: list[str] = Field(
        default_factory=list, description="http(s) hosts media may be fetched from, comma-separated; empty: "
        "no http(s) fetches")
    allow_s3_media: bool = Field(True, description="s3:// media URLs, read with the storage settings")
    media_fetch_timeout_s: float = Field(20.0, gt=0, description="per http(s) or s3:// media fetch")

    @field_validator("allowed_media_domains", mode="before")
    @classmethod
    def _split_domains(cls, value):
        if isinstance(value, str):
            value = value.split(",")
        return [d.strip().lower() for d in value if d and d.strip()]


class ServingConfig(BaseModel):
    """The OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_id: str | None = Field(None, description="the name clients send as `model` (default: the checkpoint "
                                 "directory's name)")
    engine: EngineConfig
    http: HttpConfig = HttpConfig()
    deployment: DeploymentConfig = DeploymentConfig()
    auth: AuthConfig = AuthConfig()
    limits: RequestLimits = RequestLimits()
    media: MediaSources = MediaSources()
    pages: EndpointPages = EndpointPages()
    audio: AudioConfig = AudioConfig()
    storage: StorageConfig = StorageConfig()

    @property
    def served_model_id(self) -> str:
        return self.model_id or pathlib.Path(self.engine.model).name

    @property
    def images_per_request(self) -> int:
        limit = self.limits.max_images_per_request
        return self.engine.max_images_per_prompt if limit is None else limit

    @property
    def audios_per_request(self) -> int:
        limit = self.limits.max_audios_per_request
        return self.engine.max_audios_per_prompt if limit is None else limit
