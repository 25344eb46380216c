"""Real files and real schemas through the endpoint (the package's one Serve app, tiny checkpoint):
photos stored turned with their EXIF/TIFF orientation are read upright (the same tokens as the upright
file, also when the ingress resizes them), HEIC is accepted, and a response_format schema guided
decoding cannot run is a 400 naming its keyword, while schemas xgrammar refused run."""

from __future__ import annotations

import base64
import json

import jsonschema
import openai
import pytest

from jobs import samples
from tests import realfiles
from tests.schemas import USER_SCHEMAS


def _ask(endpoint, data: bytes, mime: str, **kwargs):
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    return endpoint.client().chat.completions.create(
        model=endpoint.model_id, temperature=0, max_tokens=8, extra_body={"return_token_ids": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": "Read the document."}]}], **kwargs)


@pytest.mark.parametrize("size", [(200, 120), (1100, 800)], ids=["small", "resized"])
def test_turned_photos_give_the_upright_pages_tokens(endpoint, size):
    page = samples.text_page("Turned by the phone, read upright.", size)
    upright = _ask(endpoint, realfiles.encode(page, "PNG"), "image/png")
    turned = {
        "png-3": (realfiles.photo(page, 3, "PNG"), "image/png"),
        "png-6": (realfiles.photo(page, 6, "PNG"), "image/png"),
        "png-8": (realfiles.photo(page, 8, "PNG"), "image/png"),
        "webp-5": (realfiles.photo(page, 5, "WEBP", lossless=True), "image/webp"),
        "tiff-7": (realfiles.tiff_with_orientations([page], [7]), "image/tiff"),
    }
    for name, (data, mime) in turned.items():
        got = _ask(endpoint, data, mime)
        assert list(got.choices[0].token_ids) == list(upright.choices[0].token_ids), name
        assert got.usage.prompt_tokens == upright.usage.prompt_tokens, name


def test_heic_photos_are_accepted_at_their_upright_size(endpoint):
    page = samples.text_page("An iPhone photo of a page.", (200, 120))
    upright = _ask(endpoint, realfiles.encode(page, "PNG"), "image/png")
    got = _ask(endpoint, realfiles.heic(page, 6), "image/heic")
    assert got.usage.prompt_tokens == upright.usage.prompt_tokens and got.usage.completion_tokens > 0


@pytest.mark.parametrize("case", [s for s in USER_SCHEMAS if s.refused], ids=lambda c: c.name)
def test_a_schema_guided_decoding_cannot_run_is_a_400_naming_the_keyword(endpoint, case):
    with pytest.raises(openai.BadRequestError) as info:
        endpoint.client().chat.completions.create(
            model=endpoint.model_id, max_tokens=8, messages=[{"role": "user", "content": "Fill it."}],
            response_format={"type": "json_schema", "json_schema": {"name": case.name, "schema": case.schema}})
    error = info.value.body
    assert error["param"] == "response_format" and f"'{case.refused}'" in error["message"], error


def test_schemas_xgrammar_refused_run(endpoint):
    """A pattern with maxLength, multipleOf, patternProperties: refused by xgrammar, run by guidance."""
    for name in ("invoice_number", "multiple_of", "pattern_properties", "contact_email"):
        schema = next(s.schema for s in USER_SCHEMAS if s.name == name)
        r = endpoint.client().chat.completions.create(
            model=endpoint.model_id, temperature=0, max_completion_tokens=96,
            messages=[{"role": "user", "content": "Fill it."}],
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}})
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (name, choice.message.content)
        cls = jsonschema.validators.validator_for(schema)
        cls(schema, format_checker=cls.FORMAT_CHECKER).validate(json.loads(choice.message.content))
