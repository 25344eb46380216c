"""Gemma 4 Unified on vLLM: the project's model registration (plugin), engine settings, CPU support.

Subpackages: `model.inputs` (media, prompts, audio chunks shared by batch and endpoint) and
`model.checkpoints` (the tiny and demo checkpoints the project makes).
"""

from model import _moved

_moved.install()
