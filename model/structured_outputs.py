"""Guided decoding (vLLM structured outputs) for the batch job and the endpoint: the engine setting
both use, and the check that a JSON schema can be run, done before any engine sees the schema.

The engine runs vLLM's `guidance` backend (llguidance) with `disable_any_whitespace`:

* Whitespace must be off at engine level: vLLM 0.29 ignores the per-request option, and with it on a
  grammar lets the model pad JSON with whitespace until the token limit.
* vLLM 0.29 refuses `disable_any_whitespace` with its `auto` backend ("only supported for xgrammar
  and guidance backends", `StructuredOutputsConfig`), and an engine compiles every request with the
  backend of its first guided request (`StructuredOutputManager.grammar_init`: one backend per
  engine), so `auto`'s per-request routing (xgrammar, else guidance) cannot be had either way.
* `guidance` runs what `auto` routes to xgrammar and what xgrammar refuses (a `pattern` or `format`
  with `minLength`/`maxLength`, `multipleOf`, `patternProperties`, formats outside xgrammar's list),
  and refuses by name what it cannot enforce (`uniqueItems`, `contains`, `propertyNames`,
  `if`/`then`, `not`, `format: uri-reference`, look-around patterns) where xgrammar would accept
  several of those and silently not enforce them.

`check_schema` runs vLLM's own validation for that backend (`validate_guidance_grammar`, the check
the engine runs when a request arrives) and words its refusal for a person, naming the keyword.

Private vLLM API, checked against vLLM 0.29.0 (llguidance 1.7.6): `vllm.sampling_params.
StructuredOutputsParams` and `vllm.v1.structured_output.backend_guidance.validate_guidance_grammar`.
If either moves, `check_schema` fails with ImportError/TypeError on its first schema (the unit tests
in tests/jobs/test_structured_outputs.py call it), not silently.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping

BACKEND = "guidance"
# vLLM's `structured_outputs_config` engine argument, for every engine that answers guided requests.
ENGINE_CONFIG = {"backend": BACKEND, "disable_any_whitespace": True}


class UnsupportedSchema(ValueError):
    """A JSON schema guided decoding cannot run; the message names the keyword and what to do."""


def schema_text(schema: str | Mapping) -> str:
    """A schema (JSON text or a mapping) as compact JSON text."""
    value = json.loads(schema) if isinstance(schema, str) else schema
    return json.dumps(value, separators=(",", ":"))


def check_schema(schema: str | Mapping) -> None:
    """Raise UnsupportedSchema when the engine's guided decoding cannot run `schema`."""
    problem = schema_problem(schema_text(schema))
    if problem is not None:
        raise UnsupportedSchema(problem)


_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")
_UNKNOWN_FORMAT = re.compile(r"Unknown format: (\S+)")


@functools.lru_cache(maxsize=256)
def schema_problem(text: str) -> str | None:
    """Why guided decoding cannot run the schema (compact JSON text), or None. Cached: a job has one
    schema or a handful, a Parquet table one per row."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output.backend_guidance import validate_guidance_grammar

    params = SamplingParams(structured_outputs=StructuredOutputsParams(json=text))
    try:
        validate_guidance_grammar(params, tokenizer=None)
    except (VLLMValidationError, ValueError) as exc:
        return _worded(str(exc))
    return None


def _worded(error: str) -> str:
    detail = " ".join(error.split())
    keys = _UNIMPLEMENTED.search(error)
    if keys:
        names = [k.strip().strip('"') for k in keys.group(1).split(",")]
        quoted = ", ".join(f"'{n}'" for n in names)
        return (f"the JSON schema keyword{'s' if len(names) > 1 else ''} {quoted} cannot be enforced by guided "
                f"decoding (vLLM's guidance backend); remove {'them' if len(names) > 1 else 'it'} or express "
                f"the constraint another way")
    fmt = _UNKNOWN_FORMAT.search(error)
    if fmt:
        return (f"the JSON schema keyword 'format' with value '{fmt.group(1).strip(chr(34))}' is not known to "
                f"guided decoding (vLLM's guidance backend); remove the format or describe the string with a "
                f"pattern")
    if "regex parse error" in error or "look-around" in error or "backreference" in error:
        return (f"a pattern in the JSON schema cannot be compiled for guided decoding ({detail}); rewrite it "
                f"without look-around or backreferences")
    return f"guided decoding cannot run the JSON schema ({detail})"
