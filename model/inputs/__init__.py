"""What the batch job and the endpoint both feed the model: media decoding, prompts, audio chunks.

No torch or vLLM imports here: these run in cheap CPU workers and in the endpoint's ingress.
"""
