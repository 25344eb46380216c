"""The vLLM engine's settings, shared by the batch job and the endpoint, and their renderings.

`EngineConfig` is the `engine` part of both configurations (`jobs.spec.JobSpec`,
`serving.config.ServingConfig`); it renders itself for each consumer:

* `vllm_kwargs()`       -> keyword arguments for `vllm.LLM(...)` / `AsyncEngineArgs(...)`
* `ray_engine_kwargs()` -> `engine_kwargs` for `ray.data.llm.vLLMEngineProcessorConfig` and
                           `ray.serve.llm.LLMConfig`
* `env()`               -> environment variables the engine process needs (CPU KV cache size etc.)

Any other vLLM engine argument goes through `engine_kwargs` unchanged (as in ray.data.llm), applied
last. Device "auto" picks GPU when torch sees one, else CPU. On CPU the engine runs float32 and eager
(the CPU build has no CUDA graphs, and bf16 would break parity with the float32 reference).

Concurrency: `max_num_seqs` / `max_num_batched_tokens` left unset are not passed on GPU, so vLLM
picks its own defaults for the hardware and the caller's usage context (`gpu_batch_defaults` gives
the offline ones, which ray.data.llm does not ask for, see there). On CPU unset means
`CPU_MAX_NUM_SEQS` running sequences (what works on small CPU machines) and vLLM's CPU default for
batched tokens.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.inputs.pages import SUPPORTED_SOFT_TOKENS
from model.registration import ARCHITECTURE, UPSTREAM_ARCHITECTURE

SCHEDULER_CLS = "model.mm_scheduler.WholeMultimodalItemScheduler"  # no vLLM import here

Device = Literal["auto", "cpu", "gpu"]
ImageTokens = Literal[SUPPORTED_SOFT_TOKENS]  # the image processor's budgets (soft tokens per image)

CPU_MAX_NUM_SEQS = 64


class EngineConfig(BaseModel):
    """engine: the vLLM engine (checkpoint, device, precision, memory, multimodal limits, concurrency)"""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(description="checkpoint directory (Hugging Face layout)")
    device: Device = Field("auto", description="auto: GPU when torch sees one, else CPU")
    dtype: str = Field("auto", description="auto: float32 on CPU, bfloat16 on GPU")
    max_model_len: int = Field(8192, ge=1, description="context length: prompt plus new tokens")
    image_tokens: ImageTokens | None = Field(
        None, description="soft tokens per image (documents want 560/1120); default: the checkpoint's")
    max_images_per_prompt: int = Field(4, ge=0, description="images per engine request (a page is one)")
    max_audios_per_prompt: int = Field(4, ge=0, description="audio clips per engine request (a chunk is one)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans")
    gpu_memory_utilization: float = Field(0.90, gt=0, le=1, description="share of each GPU's memory vLLM may use")
    kv_cache_dtype: str = Field("auto", description="vLLM's KV-cache dtype (auto: the model's; fp8, ...)")
    max_num_seqs: int | None = Field(
        None, ge=1, description=f"running sequences per engine (default: vLLM's for the GPU; {CPU_MAX_NUM_SEQS} on CPU)")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="tokens per engine step (default: vLLM's)")
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV cache on CPU (VLLM_CPU_KVCACHE_SPACE)")
    seed: int = Field(0, description="vLLM's seed (the batch job's requests use it too)")
    enforce_eager: bool | None = Field(None, description="default: eager on CPU, CUDA graphs on GPU")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="any other vLLM engine argument, as JSON (applied last)")

    def check_vllm_arguments(self) -> None:
        """Refuse engine_kwargs vLLM does not know and a KV-cache dtype it cannot use. Imports vLLM:
        `run_job` and the endpoint's builder call it where they start, not validation."""
        import dataclasses
        import typing

        try:
            from vllm.config.cache import CacheDType
            from vllm.engine.arg_utils import AsyncEngineArgs
        except ImportError:  # no vLLM in this process: the engine checks them where it starts
            return

        known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
        unknown = sorted(set(self.engine_kwargs) - known)
        if unknown:
            raise ValueError(f"engine_kwargs: {', '.join(unknown)} "
                             f"{'is not a vLLM engine argument' if len(unknown) == 1 else 'are not vLLM engine arguments'}"
                             " (see vLLM's AsyncEngineArgs)")
        if self.kv_cache_dtype not in typing.get_args(CacheDType):
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(typing.get_args(CacheDType))}, "
                             f"not {self.kv_cache_dtype!r}")

    # -- resolution ---------------------------------------------------------------------------
    def resolved_device(self) -> Literal["cpu", "gpu"]:
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"

    def resolved_max_num_seqs(self) -> int | None:
        """Running sequences the engine is configured for (None: vLLM decides, on GPU)."""
        if self.max_num_seqs is not None:
            return self.max_num_seqs
        return CPU_MAX_NUM_SEQS if self.resolved_device() == "cpu" else None

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if self.resolved_device() == "cpu" else "bfloat16"

    def checkpoint_config(self) -> dict | None:
        """The checkpoint's config.json (None when the model is not a local directory)."""
        config = pathlib.Path(self.model) / "config.json"
        return json.loads(config.read_text()) if config.is_file() else None

    def architecture_override(self) -> dict | None:
        """Point checkpoints that name upstream's architecture at the project's class."""
        config = self.checkpoint_config()
        if config is None:
            return {"architectures": [ARCHITECTURE]}
        archs = config.get("architectures") or []
        if archs == [ARCHITECTURE]:
            return None
        if archs and archs != [UPSTREAM_ARCHITECTURE]:
            raise ValueError(f"{self.model} is not a Gemma 4 Unified checkpoint (architectures={archs})")
        return {"architectures": [ARCHITECTURE]}

    def page_geometry(self):
        """How pages are sized for the model: the checkpoint's image processor and `image_tokens`."""
        from model.inputs.pages import PageGeometry

        return PageGeometry.from_checkpoint(self.model, self.image_tokens)

    def checkpoint_audio(self):
        """The checkpoint's audio window and packing (model.inputs.audio_chunks)."""
        from model.inputs.audio_chunks import checkpoint_audio

        return checkpoint_audio(self.model)

    def bidirectional_vision(self) -> bool | None:
        """Whether image tokens attend bidirectionally (None: no local config to read)."""
        config = self.checkpoint_config()
        if config is None:
            return None
        text = config.get("text_config") or {}
        # transformers' default for Gemma 4 Unified is "vision" when the key is absent.
        return text.get("use_bidirectional_attention", "vision") == "vision"

    # -- renderings ---------------------------------------------------------------------------
    def vllm_kwargs(self) -> dict:
        cpu = self.resolved_device() == "cpu"
        kwargs: dict = dict(
            model=self.model,
            dtype=self.resolved_dtype(),
            max_model_len=self.max_model_len,
            limit_mm_per_prompt={
                "image": self.max_images_per_prompt,
                "audio": self.max_audios_per_prompt,
                "video": 0,
            },
            tensor_parallel_size=self.tensor_parallel_size,
            enforce_eager=cpu if self.enforce_eager is None else self.enforce_eager,
            seed=self.seed,
        )
        if self.resolved_max_num_seqs() is not None:
            kwargs["max_num_seqs"] = self.resolved_max_num_seqs()
        if self.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = self.max_num_batched_tokens
        if cpu and self.bidirectional_vision() is not False:
            # Bidirectional image attention on CPU (model/cpu_bidirectional.py) needs each image
            # prefilled in one step; vLLM forces the flag on CUDA too, and the scheduler closes
            # the cases vLLM's flag misses (model/mm_scheduler.py).
            kwargs["disable_chunked_mm_input"] = True
            kwargs["scheduler_cls"] = SCHEDULER_CLS
        if not cpu:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.kv_cache_dtype != "auto":
            kwargs["kv_cache_dtype"] = self.kv_cache_dtype
        if self.image_tokens is not None:
            kwargs["mm_processor_kwargs"] = {"max_soft_tokens": self.image_tokens}  # the processor's name
        override = self.architecture_override()
        if override:
            kwargs["hf_overrides"] = override
        kwargs.update(self.engine_kwargs)
        return kwargs

    def with_batch_defaults(self, max_num_seqs: int, max_num_batched_tokens: int) -> EngineConfig:
        """These settings with the given values wherever the caller left them unset."""
        return self.model_copy(update={
            "max_num_seqs": self.max_num_seqs if self.max_num_seqs is not None else max_num_seqs,
            "max_num_batched_tokens": (self.max_num_batched_tokens if self.max_num_batched_tokens is not None
                                       else max_num_batched_tokens),
        })

    def ray_engine_kwargs(self) -> dict:
        """`engine_kwargs` for ray.data.llm / ray.serve.llm (they take the model separately)."""
        kwargs = self.vllm_kwargs()
        kwargs.pop("model")
        return kwargs

    def env(self) -> dict[str, str]:
        """Environment for engine processes (also goes into Ray runtime_env env_vars)."""
        if self.resolved_device() == "cpu":
            return {
                "VLLM_CPU_KVCACHE_SPACE": str(self.cpu_kv_cache_gib),
                # The default reserves one core for the front end; on small machines use them all.
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                # vLLM's CPU worker runs torch on GNU OpenMP threads bound one per core; by default
                # they spin at every barrier, taking the core from the engine's front end, the
                # scheduler and (in a batch job) the Ray stages that feed it. Sleeping at once
                # measured faster for both the pipeline and a bare `LLM.chat` on 2 cores
                # (docs/benchmarks.md, "Batch pipeline"). On a GPU node the worker does not compute on OpenMP.
                "OMP_WAIT_POLICY": "PASSIVE",
            }
        return {}

    def apply_env(self) -> None:
        import os

        for key, value in self.env().items():
            os.environ.setdefault(key, value)


def gpu_batch_defaults(tensor_parallel_size: int = 1) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM itself picks for offline use (`vllm.LLM`) on the
    GPU of the calling process: 256/8192 below 70 GiB (and on A100s), 1024/16384 on H100/H200-class
    and larger GPUs (vLLM 0.29's table, `EngineArgs.get_batch_defaults`).

    Why ask: ray.data.llm's engine stage builds its engine without a usage context, and vLLM then
    falls back to 128 sequences / 2048 batched tokens whatever the GPU (Ray Serve LLM had the same
    defect, ray#55159). Call it where the engine will run (a GPU worker), not on a CPU-only driver.
    """
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    batched_tokens, seqs = EngineArgs.get_batch_defaults(tensor_parallel_size)
    return int(seqs[UsageContext.LLM_CLASS]), int(batched_tokens[UsageContext.LLM_CLASS])
