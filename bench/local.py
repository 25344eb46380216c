"""What the pipeline benchmarks do first on a local machine: vLLM CPU and Ray defaults in the
environment (before either is imported), the checkpoint (the tiny one is built when missing), and a
fresh work folder."""

from __future__ import annotations

import os
import pathlib
import tempfile

CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def prepare(model: str, prefix: str) -> tuple[str, pathlib.Path]:
    """(absolute checkpoint path, new temporary folder named `prefix`...); environment values already
    set win over the defaults."""
    for name, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from jobs.demo import ensure_model

    return str(ensure_model(pathlib.Path(model)).resolve()), pathlib.Path(tempfile.mkdtemp(prefix=prefix))
