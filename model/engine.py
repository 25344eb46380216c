"""One builder for vLLM engine settings, used by the batch pipeline, the endpoint, tests and benches.

`EngineSettings` holds what a deployment decides (checkpoint, dtype, context length, multimodal
limits, device, tensor parallelism) and renders it for each consumer:

* `vllm_kwargs()`      -> keyword arguments for `vllm.LLM(...)` / `AsyncEngineArgs(...)`
* `ray_engine_kwargs()` -> `engine_kwargs` for `ray.data.llm.vLLMEngineProcessorConfig` and
                          `ray.serve.llm.LLMConfig`
* `env()`              -> environment variables the engine process needs (CPU KV cache size etc.)

Device "auto" picks GPU when torch sees one, else CPU. On CPU the engine runs float32 and eager
(the CPU build has no CUDA graphs, and bf16 would break parity with the float32 reference).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Literal

from model.registration import ARCHITECTURE, UPSTREAM_ARCHITECTURE

SCHEDULER_CLS = "model.mm_scheduler.WholeMultimodalItemScheduler"  # no vLLM import here

Device = Literal["auto", "cpu", "gpu"]


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    model: str
    device: Device = "auto"
    dtype: str = "auto"  # "auto": float32 on CPU, bfloat16 on GPU
    max_model_len: int = 8192
    # Items per prompt. A document page is one image; a transcription chunk one audio clip.
    max_images_per_prompt: int = 4
    max_audios_per_prompt: int = 4
    # Default image budget (soft tokens per image); documents want the large budgets.
    max_soft_tokens: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 64
    cpu_kv_cache_gib: int = 1
    seed: int = 0
    enforce_eager: bool | None = None  # None: eager on CPU, CUDA graphs on GPU

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device must be auto, cpu or gpu, not {self.device!r}")
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        if self.max_soft_tokens not in (None, 70, 140, 280, 560, 1120):
            raise ValueError("max_soft_tokens must be one of 70, 140, 280, 560, 1120")

    # -- resolution ---------------------------------------------------------------------------
    def resolved_device(self) -> Literal["cpu", "gpu"]:
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"

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
            max_num_seqs=self.max_num_seqs,
            enforce_eager=cpu if self.enforce_eager is None else self.enforce_eager,
            seed=self.seed,
        )
        if cpu and self.bidirectional_vision() is not False:
            # Bidirectional image attention on CPU (model/cpu_bidirectional.py) needs each image
            # prefilled in one step; vLLM forces the flag on CUDA too, and the scheduler closes
            # the cases vLLM's flag misses (model/mm_scheduler.py).
            kwargs["disable_chunked_mm_input"] = True
            kwargs["scheduler_cls"] = SCHEDULER_CLS
        if not cpu:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_soft_tokens is not None:
            kwargs["mm_processor_kwargs"] = {"max_soft_tokens": self.max_soft_tokens}
        override = self.architecture_override()
        if override:
            kwargs["hf_overrides"] = override
        return kwargs

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
            }
        return {}

    def apply_env(self) -> None:
        import os

        for key, value in self.env().items():
            os.environ.setdefault(key, value)
