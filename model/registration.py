"""vLLM plugin entry point: registers the project's Gemma 4 Unified class in every vLLM process.

Declared in pyproject.toml under `[project.entry-points."vllm.general_plugins"]`. vLLM calls
`register()` in the front end, the engine core, every worker, and Ray workers, so a checkpoint that
names `ARCHITECTURE` runs the project's class everywhere without any import by the caller. A
checkpoint that names upstream's architecture is pointed here with
`hf_overrides={"architectures": [ARCHITECTURE]}` (see `model.engine.EngineConfig`).

Registration is lazy ("module:Class"): importing this module must stay cheap (no torch, no vLLM).
Because `register()` runs in every vLLM process, it also arms, in vLLM's child processes (engine
core, workers), the orphan guard (model/orphan_guard.py: a process whose parent died ends too) and
the one-line error report the batch job quotes when the engine fails (model/engine_report.py).
"""

ARCHITECTURE = "Gemma4UnifiedExactForConditionalGeneration"
UPSTREAM_ARCHITECTURE = "Gemma4UnifiedForConditionalGeneration"
_CLASS_PATH = "model.gemma4_unified:Gemma4UnifiedExactForConditionalGeneration"


def register() -> None:
    from model import engine_report, orphan_guard

    if orphan_guard.guard():
        engine_report.install()
    from vllm import ModelRegistry
    from vllm.model_executor.models import config as model_configs

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _CLASS_PATH)
    # A new architecture name skips vLLM's per-architecture config hook, which picks attention
    # settings for Gemma 4's heterogeneous head sizes on GPU. Use Gemma 4's.
    hooks = model_configs.MODELS_CONFIG_MAP
    if ARCHITECTURE not in hooks and UPSTREAM_ARCHITECTURE in hooks:
        hooks[ARCHITECTURE] = hooks[UPSTREAM_ARCHITECTURE]
