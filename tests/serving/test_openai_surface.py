"""The OpenAI request options people's tools send, through the real endpoint with the `openai` client:
response_format (json_object, json_schema), seed, stop, n, logprobs / top_logprobs,
max_completion_tokens, and /v1/models' context length."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.schemas import bounded_object

PROMPT = [{"role": "user", "content": "Read the invoice and answer."}]


def _create(endpoint, **kwargs):
    kwargs.setdefault("max_completion_tokens", 16)
    return endpoint.client().chat.completions.create(model=endpoint.model_id, messages=PROMPT, **kwargs)


def test_models_report_the_context_length(endpoint):
    from tests.serving.conftest import MAX_MODEL_LEN

    (card,) = endpoint.client().models.list().data
    assert card.id == endpoint.model_id and card.object == "model" and card.created > 0
    assert card.model_extra["max_model_len"] == MAX_MODEL_LEN
    assert endpoint.client().models.retrieve(endpoint.model_id).model_extra["max_model_len"] == card.model_extra["max_model_len"]


def test_max_completion_tokens_bounds_the_answer(endpoint):
    r = _create(endpoint, max_completion_tokens=5, temperature=0, extra_body={"min_tokens": 5})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_stop_string_ends_the_answer_before_it(endpoint):
    full = _create(endpoint, temperature=0).choices[0].message.content
    # A stop string that first occurs a few characters in: the answer is everything before it.
    at = next(i for i in range(2, len(full) - 2) if full.find(full[i:i + 2]) == i and full[i:i + 2].strip())
    stopped = _create(endpoint, temperature=0, stop=[full[at:at + 2]]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == full[:at]


def test_seed_makes_sampling_repeatable(endpoint):
    def sample(seed):
        return _create(endpoint, temperature=1.0, seed=seed).choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_n_choices(endpoint):
    r = _create(endpoint, n=3, temperature=1.0, seed=7, max_completion_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 24  # 3 x 8, counted over all choices
    with pytest.raises(openai.BadRequestError):
        _create(endpoint, n=9)


def test_logprobs_and_top_logprobs(endpoint):
    r = _create(endpoint, temperature=0, logprobs=True, top_logprobs=3, max_completion_tokens=6)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        best = max(t.logprob for t in entry.top_logprobs)
        assert entry.logprob == pytest.approx(best, abs=1e-4)  # greedy picks the most likely token
        assert entry.logprob <= 0
    with pytest.raises(openai.BadRequestError):
        _create(endpoint, logprobs=True, top_logprobs=21)


def test_response_format_json_schema(endpoint):
    schema = bounded_object("invoice", "^[A-Z0-9]{1,6}$")
    r = _create(endpoint, temperature=0, max_completion_tokens=48,
                response_format={"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_response_format_json_object(endpoint):
    """Any JSON object: the grammar holds from the first token (an unguided random model never starts
    with '{'); a closed answer parses as an object."""
    r = _create(endpoint, temperature=0, max_completion_tokens=48, response_format={"type": "json_object"})
    choice = r.choices[0]
    assert choice.message.content.startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
