"""The vLLM plugin: a process that only names the checkpoint runs the project's class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from model.engine import EngineConfig
from model.registration import ARCHITECTURE, UPSTREAM_ARCHITECTURE

# No project import anywhere in this script: vLLM must find the class through the entry point, in
# the front end and in the spawned engine-core/worker processes alike.
FRESH_PROCESS = textwrap.dedent(
    """
    import json, operator, sys
    from vllm import LLM, SamplingParams

    def main():
        llm = LLM(sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=512)
        # attrgetter pickles by value-free reference (a lambda would not cross the engine's IPC)
        [where] = llm.apply_model(operator.attrgetter("__class__.__module__", "__class__.__name__"))
        out = llm.generate("<bos>hello", SamplingParams(max_tokens=4, temperature=0))[0]
        print("RESULT " + json.dumps({
            "class": ":".join(where),
            "tokens": list(out.outputs[0].token_ids),
        }))

    if __name__ == "__main__":
        main()
    """
)


def test_fresh_process_runs_the_project_class(tiny_checkpoint, tmp_path):
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    env = dict(os.environ, VLLM_ALLOW_INSECURE_SERIALIZATION="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_checkpoint)],
        cwd=tmp_path,  # not the repo: nothing importable by accident from the working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["class"] == f"model.gemma4_unified:{ARCHITECTURE}"
    assert len(result["tokens"]) == 4


def test_upstream_architecture_is_pointed_at_the_project_class(tiny_checkpoint, tmp_path):
    """A checkpoint naming upstream's architecture resolves to ours through hf_overrides."""
    upstream = tmp_path / "upstream_named"
    upstream.mkdir()
    for f in tiny_checkpoint.iterdir():
        (upstream / f.name).symlink_to(f)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["architectures"] = [UPSTREAM_ARCHITECTURE]
    (upstream / "config.json").unlink()
    (upstream / "config.json").write_text(json.dumps(config))

    settings = EngineConfig(model=str(upstream), device="cpu")
    kwargs = settings.vllm_kwargs()
    assert kwargs["hf_overrides"] == {"architectures": [ARCHITECTURE]}

    from vllm.config import ModelConfig
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # what every vLLM process does at start
    resolved = ModelConfig(model=str(upstream), hf_overrides=kwargs["hf_overrides"], dtype="float32")
    assert resolved.architecture == ARCHITECTURE
    plain = ModelConfig(model=str(tiny_checkpoint), dtype="float32")
    assert plain.architecture == ARCHITECTURE
    assert EngineConfig(model=str(tiny_checkpoint), device="cpu").vllm_kwargs().get("hf_overrides") is None


def test_other_architectures_are_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="not a Gemma 4 Unified checkpoint"):
        EngineConfig(model=str(tmp_path)).vllm_kwargs()
