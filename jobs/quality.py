"""Output quality per segment: why generation ended, whether the output is degenerate, and which of
several attempts to keep.

Flags (a segment's `flags` column, a list of strings; the source row holds their union):

* `truncated`    - generation ended at the token limit (`finish_reason == "length"`): the page or
                   chunk was cut off. Raise `--max-new-tokens` if pages are long; loops end here too.
* `repetitive`   - the output's tail repeats one n-gram: for some period n <= REPEAT_MAX_NGRAM tokens,
                   the last W = max(REPEAT_MIN_TOKENS, REPEAT_MIN_COPIES * n) generated tokens (a
                   trailing stop token excluded) equal the token n places earlier at >=
                   REPEAT_MIN_MATCH of their positions: a loop, tolerant of an odd token in it (a
                   table ending in many identical rows can trip it too).
* `invalid_json` - with a JSON schema: the output is not JSON, or does not validate against it.

Token ids, not text, are checked: it is what the model loops on, and it needs no normalisation.

`finish_reason` is derived, because ray.data.llm's engine stage (`vLLMOutputData`) does not carry
vLLM's: vLLM ends a request with `stop` when it emits a stop token (the tokenizer's EOS or the
generation config's `eos_token_id`s; the token is kept in `token_ids`, verified on vLLM 0.29) and with
`length` when it reaches `max_tokens` or the context length. So: last token a stop token -> `stop`;
else as many tokens as allowed (or the context full) -> `length`; else `stop` (a stop string).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence

FINISH_STOP, FINISH_LENGTH = "stop", "length"
TRUNCATED, REPETITIVE, INVALID_JSON = "truncated", "repetitive", "invalid_json"
# Flags that make a segment worth another attempt (`--retries`), most severe first.
RETRY_FLAGS = (INVALID_JSON, REPETITIVE, TRUNCATED)

REPEAT_MAX_NGRAM = 64
REPEAT_MIN_COPIES = 3
REPEAT_MIN_TOKENS = 32
REPEAT_MIN_MATCH = 0.9

# Retry round k (1..N) samples at temperature min(RETRY_TEMPERATURE_STEP * k, RETRY_TEMPERATURE_MAX)
# with a seed fixed per (run seed, source, segment, round): greedy decoding would repeat the same
# output, a rising temperature leaves a loop, and the seed keeps a re-run reproducible (olmOCR
# re-runs a page at rising temperature the same way).
RETRY_TEMPERATURE_STEP = 0.2
RETRY_TEMPERATURE_MAX = 1.0


def checkpoint_stop_ids(model: str | pathlib.Path) -> frozenset[int]:
    """The token ids vLLM stops on for a local checkpoint: the tokenizer's EOS and the generation
    config's `eos_token_id`s. Empty when the model is not a local directory (then `stop` vs
    `length` falls back to counting tokens)."""
    root = pathlib.Path(model)
    ids: set[int] = set()

    def add(value) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))

    for name in ("generation_config.json", "config.json"):
        path = root / name
        if path.is_file():
            config = json.loads(path.read_text())
            add(config.get("eos_token_id"))
            add((config.get("text_config") or {}).get("eos_token_id"))
    tok_config, tok_file = root / "tokenizer_config.json", root / "tokenizer.json"
    if tok_config.is_file() and tok_file.is_file():
        eos = json.loads(tok_config.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        for token in json.loads(tok_file.read_text()).get("added_tokens", []):
            if token.get("content") == eos:
                ids.add(int(token["id"]))
    return frozenset(ids)


def finish_reason(token_ids: Sequence[int], *, max_tokens: int, stop_ids: Iterable[int] = (),
                  prompt_tokens: int = 0, max_model_len: int | None = None) -> str:
    """`stop` or `length` for one generation (see the module docstring)."""
    if token_ids and int(token_ids[-1]) in set(stop_ids):
        return FINISH_STOP
    if len(token_ids) >= max_tokens:
        return FINISH_LENGTH
    if max_model_len is not None and prompt_tokens + len(token_ids) >= max_model_len:
        return FINISH_LENGTH
    return FINISH_STOP


def repeated_tail(token_ids: Sequence[int], *, stop_ids: Iterable[int] = (), max_ngram: int = REPEAT_MAX_NGRAM,
                  min_copies: int = REPEAT_MIN_COPIES, min_tokens: int = REPEAT_MIN_TOKENS,
                  min_match: float = REPEAT_MIN_MATCH) -> tuple[int, float] | None:
    """(period n, share of matching positions) of the shortest period the output's tail repeats
    past the threshold (see the module docstring), else None. A loop cut mid-copy still counts."""
    import numpy as np

    tokens = np.asarray(token_ids, dtype=np.int64)
    if tokens.size and int(tokens[-1]) in set(stop_ids):
        tokens = tokens[:-1]
    for n in range(1, max_ngram + 1):
        window = max(min_tokens, min_copies * n)
        if window > tokens.size:
            break
        tail = tokens[-window:]
        share = float(np.mean(tail[n:] == tail[:-n]))
        if share >= min_match:
            return n, round(share, 3)
    return None


def generation_flags(token_ids: Sequence[int], finish: str, stop_ids: Iterable[int] = ()) -> list[str]:
    """Flags of one model output (before any JSON check)."""
    flags = []
    if finish == FINISH_LENGTH:
        flags.append(TRUNCATED)
    if repeated_tail(token_ids, stop_ids=stop_ids) is not None:
        flags.append(REPETITIVE)
    return flags


def needs_retry(flags: Iterable[str]) -> bool:
    return any(f in RETRY_FLAGS for f in flags)


def badness(status: str, flags: Iterable[str]) -> int:
    """Rank of an attempt, lower is better: clean < truncated < repetitive < invalid JSON < failed."""
    if status != "ok" and INVALID_JSON not in flags:
        return len(RETRY_FLAGS) + 1  # an engine error: any real output is better
    present = set(flags)
    return max((len(RETRY_FLAGS) - i for i, f in enumerate(RETRY_FLAGS) if f in present), default=0)


def retry_sampling(round_index: int, *, seed: int, source_id: str, segment_index: int) -> dict:
    """Sampling parameters of retry round `round_index` (>= 1) for one segment."""
    key = f"{seed}\x1f{source_id}\x1f{segment_index}\x1f{round_index}".encode()
    return {
        "temperature": min(RETRY_TEMPERATURE_STEP * round_index, RETRY_TEMPERATURE_MAX),
        "seed": int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF,
    }


# -- JSON ------------------------------------------------------------------------------------------


def _validator(schema_text: str):
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


_VALIDATORS: dict[str, object] = {}


def schema_error(schema_text: str) -> str | None:
    """Why a JSON schema cannot be used (not JSON, not a valid schema), or None."""
    try:
        validator(schema_text)
    except Exception as exc:  # noqa: BLE001 - json and jsonschema errors
        return f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    return None


def validator(schema_text: str):
    """A cached jsonschema validator (a nightly job has one schema or a handful)."""
    found = _VALIDATORS.get(schema_text)
    if found is None:
        if len(_VALIDATORS) > 256:
            _VALIDATORS.clear()
        found = _VALIDATORS[schema_text] = _validator(schema_text)
    return found


def check_json(text: str, schema_text: str) -> tuple[str | None, str | None]:
    """(compact JSON, None) when `text` is one JSON value valid against the schema, else
    (None, an error quoting the parse or validation failure)."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        return None, f"the output is not valid JSON ({exc}): {shown!r}"
    error = jsonschema.exceptions.best_match(validator(schema_text).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, f"the output does not validate against the JSON schema at {where}: {error.message}"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), None


def cut_off(problem: str, max_tokens: int) -> str:
    """`check_json`'s problem for an output that reached the token limit: what to change first."""
    return (f"the output reached the token limit ({max_tokens} new tokens) before the JSON value was complete; "
            f"raise --max-new-tokens or bound the schema (maxLength, maxItems, enum): {problem}")


def canonical_schema(schema: str | Mapping) -> str:
    """A schema (JSON text or a mapping) as compact JSON text, checked to be a valid schema."""
    text = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
    text = json.dumps(json.loads(text), separators=(",", ":"))
    problem = schema_error(text)
    if problem:
        raise ValueError(f"not a usable JSON schema: {problem}")
    return text


# -- run summary -----------------------------------------------------------------------------------


def summary_counts(segments, sources) -> dict:
    """Counts for the run summary from the published tables (pyarrow Tables with at least the
    columns flags, finish_reason, text_source, text_layer, attempts of segments/ and flags of
    sources/): flags per segment and source, finish reasons, text sources, text-layer verdicts,
    retried segments and how many of them ended clean."""
    import pyarrow.compute as pc

    def counts(array) -> dict[str, int]:
        if len(array) == 0:
            return {}
        values = pc.value_counts(array.drop_null() if hasattr(array, "drop_null") else array)
        return {str(v["values"]): int(v["counts"]) for v in values.to_pylist() if v["values"] is not None}

    seg_flags = counts(pc.list_flatten(segments.column("flags")))
    src_flags = counts(pc.list_flatten(sources.column("flags")))
    retried = pc.greater(segments.column("attempts"), 1)
    retried_count = int(pc.sum(retried).as_py() or 0)
    clean = pc.equal(pc.list_value_length(segments.column("flags")), 0)
    recovered = int(pc.sum(pc.and_(retried, clean)).as_py() or 0)
    return {
        "flags": {flag: {"segments": seg_flags.get(flag, 0), "sources": src_flags.get(flag, 0)}
                  for flag in (TRUNCATED, REPETITIVE, INVALID_JSON)},
        "finish_reason": counts(segments.column("finish_reason")),
        "text_source": counts(segments.column("text_source")),
        "text_layer": counts(segments.column("text_layer")),
        "segments_retried": retried_count,
        "segments_recovered_by_retry": recovered,
    }
