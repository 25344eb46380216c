"""The one engine configuration renders consistent settings for vLLM, ray.data.llm and ray.serve.llm."""

import pytest

from model.engine import EngineConfig


def test_cpu_rendering(tiny_checkpoint):
    s = EngineConfig(model=str(tiny_checkpoint), device="cpu", max_model_len=2048, image_tokens=1120)
    kw = s.vllm_kwargs()
    assert kw["dtype"] == "float32" and kw["enforce_eager"] is True
    assert kw["limit_mm_per_prompt"] == {"image": 4, "audio": 4, "video": 0}
    assert kw["mm_processor_kwargs"] == {"max_soft_tokens": 1120}
    assert "gpu_memory_utilization" not in kw
    assert s.env() == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    ray_kw = s.ray_engine_kwargs()
    assert "model" not in ray_kw and ray_kw["max_model_len"] == 2048


def test_gpu_rendering(tiny_checkpoint):
    s = EngineConfig(model=str(tiny_checkpoint), device="gpu", tensor_parallel_size=2)
    kw = s.vllm_kwargs()
    assert kw["dtype"] == "bfloat16" and kw["enforce_eager"] is False
    assert kw["tensor_parallel_size"] == 2 and kw["gpu_memory_utilization"] == 0.9
    assert s.env() == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "tpu"}, "device\n  Input should be 'auto', 'cpu' or 'gpu'"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"image_tokens": 300}, "image_tokens\n  Input should be 70, 140, 280, 560 or 1120"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="x", **kwargs)


def test_gpu_keeps_vllms_own_concurrency_unless_set(tiny_checkpoint):
    # No cap on GPU: vLLM picks max_num_seqs / max_num_batched_tokens for the hardware.
    kw = EngineConfig(model=str(tiny_checkpoint), device="gpu").vllm_kwargs()
    assert "max_num_seqs" not in kw and "max_num_batched_tokens" not in kw
    s = EngineConfig(model=str(tiny_checkpoint), device="gpu", max_num_seqs=512, max_num_batched_tokens=16384)
    kw = s.ray_engine_kwargs()
    assert (kw["max_num_seqs"], kw["max_num_batched_tokens"]) == (512, 16384)
    # Defaults found for the cluster fill only what the user left unset.
    filled = EngineConfig(model="m", device="gpu", max_num_seqs=96).with_batch_defaults(1024, 16384)
    assert (filled.max_num_seqs, filled.max_num_batched_tokens) == (96, 16384)


def test_cpu_keeps_its_measured_concurrency(tiny_checkpoint):
    s = EngineConfig(model=str(tiny_checkpoint), device="cpu")
    assert s.vllm_kwargs()["max_num_seqs"] == s.resolved_max_num_seqs() == 64
    assert "max_num_batched_tokens" not in s.vllm_kwargs()
    assert EngineConfig(model="m", device="cpu", max_num_seqs=8).vllm_kwargs()["max_num_seqs"] == 8


@pytest.mark.parametrize("field", ["max_num_seqs", "max_num_batched_tokens"])
def test_concurrency_settings_must_be_positive(field):
    with pytest.raises(ValueError, match=field):
        EngineConfig(model="x", **{field: 0})


def test_any_vllm_argument_passes_through_and_gpu_memory_and_kv_cache_dtype_are_settings(tiny_checkpoint):
    s = EngineConfig(model=str(tiny_checkpoint), device="gpu", gpu_memory_utilization=0.75, kv_cache_dtype="fp8",
                     engine_kwargs={"enable_prefix_caching": False, "max_num_seqs": 7})
    kw = s.vllm_kwargs()
    assert (kw["gpu_memory_utilization"], kw["kv_cache_dtype"], kw["enable_prefix_caching"]) == (0.75, "fp8", False)
    assert kw["max_num_seqs"] == 7  # the pass-through is applied last
    assert "kv_cache_dtype" not in EngineConfig(model="m", device="cpu").vllm_kwargs()  # auto: vLLM's own
