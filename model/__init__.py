"""Gemma 4 Unified on vLLM: the project's model registration (plugin), engine configuration, CPU support,
and what the batch job and the endpoint share (configuration sections, log file).

Subpackages: `model.inputs` (media, prompts, audio chunks shared by batch and endpoint) and
`model.checkpoints` (the tiny and demo checkpoints the project makes).
"""
