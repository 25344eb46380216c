"""Chat completions through the real endpoint: images, audio, both, streaming, usage, S3 and allowlisted
http media, the project's model class in the replica, and token parity with a direct vLLM engine."""

from __future__ import annotations

import base64

import pytest

from tests.serving.conftest import KEY_B, png_bytes, wav_bytes


def _image_part(png: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}


def _audio_part(wav: bytes) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}


def _ask(endpoint, content, **kwargs):
    return endpoint.client().chat.completions.create(
        model=endpoint.model_id,
        messages=[{"role": "user", "content": content}],
        max_tokens=kwargs.pop("max_tokens", 12),
        temperature=0,
        extra_body={"return_token_ids": True},
        **kwargs,
    )


def test_models_and_health(endpoint):
    import requests

    models = endpoint.client().models.list()
    assert [m.id for m in models.data] == [endpoint.model_id]
    health = requests.get(endpoint.base_url + "/health", timeout=30)  # no key needed for probes
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_chat_text_usage(endpoint):
    r = _ask(endpoint, "Hello, what is on the page?")
    choice = r.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert r.usage.completion_tokens == len(choice.token_ids) > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_image(endpoint):
    r = _ask(endpoint, [_image_part(png_bytes()), {"type": "text", "text": "Read the document."}])
    text_only = _ask(endpoint, [{"type": "text", "text": "Read the document."}])
    # The image's soft tokens are in the prompt (a 64x48 image is at least one 48 px patch + markers).
    assert r.usage.prompt_tokens >= text_only.usage.prompt_tokens + 3
    assert r.usage.completion_tokens > 0


def test_chat_audio_any_rate_and_channels(endpoint):
    # 2 s at 8 kHz stereo: the ingress decodes and resamples to 16 kHz mono (model.inputs.media).
    two_s = _ask(endpoint, [_audio_part(wav_bytes(2.0, sr=8000, channels=2)), {"type": "text", "text": "Transcribe."}])
    one_s = _ask(endpoint, [_audio_part(wav_bytes(1.0)), {"type": "text", "text": "Transcribe."}])
    # One soft token per 40 ms frame: 2 s -> 50, 1 s -> 25, whatever the source rate and channels.
    assert two_s.usage.prompt_tokens - one_s.usage.prompt_tokens == 25
    assert two_s.usage.completion_tokens > 0


def test_chat_image_and_audio(endpoint):
    r = _ask(
        endpoint,
        [_image_part(png_bytes(seed=1)), _audio_part(wav_bytes(1.0)), {"type": "text", "text": "Describe both."}],
    )
    assert r.usage.completion_tokens > 0


def test_replica_runs_the_projects_exact_audio_class(endpoint):
    """The project's class counts ceil(samples / 640) audio tokens; upstream vLLM drops a partial last
    frame of 1..160 samples. 6400 samples = 10 frames; 6500 samples = 11 frames only in the project's
    class, so a difference of exactly one prompt token proves the plugin's class serves the request."""
    prompt = {"type": "text", "text": "Transcribe."}
    ten = _ask(endpoint, [_audio_part(wav_bytes(0, samples=6400)), prompt], max_tokens=1)
    eleven = _ask(endpoint, [_audio_part(wav_bytes(0, samples=6500)), prompt], max_tokens=1)
    assert eleven.usage.prompt_tokens - ten.usage.prompt_tokens == 1


def test_streaming_matches_non_streaming(endpoint):
    content = [_image_part(png_bytes(seed=2)), {"type": "text", "text": "Read it."}]
    full = _ask(endpoint, content, max_tokens=16)
    stream = endpoint.client().chat.completions.create(
        model=endpoint.model_id,
        messages=[{"role": "user", "content": content}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(pieces) > 1
    assert "".join(pieces) == full.choices[0].message.content
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_s3_media(endpoint):
    url = f"s3://{endpoint.s3_bucket}/scans/page.png"
    from_s3 = _ask(endpoint, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Read."}])
    inline = _ask(endpoint, [_image_part(png_bytes(seed=5)), {"type": "text", "text": "Read."}])
    assert from_s3.choices[0].token_ids == inline.choices[0].token_ids


def test_allowlisted_http_media(endpoint):
    url = f"http://localhost:{endpoint.media_port}/page.png"
    fetched = _ask(endpoint, [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Read."}])
    inline = _ask(endpoint, [_image_part(png_bytes(seed=3)), {"type": "text", "text": "Read."}])
    assert fetched.choices[0].token_ids == inline.choices[0].token_ids


def test_second_key_works(endpoint):
    r = endpoint.client(KEY_B).chat.completions.create(
        model=endpoint.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
    )
    assert r.usage.completion_tokens > 0


@pytest.fixture(scope="module")
def direct_llm(endpoint):
    """A direct vLLM engine with the same EngineConfig the endpoint renders (the reference)."""
    from serving.config import ServingConfig
    from tests.engines import running_engine
    from tests.serving.conftest import MAX_MODEL_LEN, TEST_LIMITS

    settings = ServingConfig(engine={"model": str(endpoint.checkpoint), "device": "cpu", "max_model_len": MAX_MODEL_LEN},
                             **TEST_LIMITS).engine
    with running_engine(settings) as llm:
        yield llm


def test_token_ids_equal_direct_vllm(endpoint, direct_llm):
    """Same input file bytes and prompt: the endpoint's answer equals a direct vLLM chat call on the
    same decoded media (model.inputs.media) and messages (model.inputs.prompts), token for token."""
    from vllm import SamplingParams

    from model.inputs import media, prompts

    png, wav = png_bytes(96, 64, seed=7), wav_bytes(3.0, sr=22050, seed=7)
    served = _ask(endpoint, [_image_part(png), _audio_part(wav), {"type": "text", "text": "Describe both."}], max_tokens=24)

    messages = prompts.build_messages(
        "Describe both.", images=media.decode_images(png), audios=[media.decode_audio(wav)]
    )
    out = direct_llm.chat(messages, SamplingParams(temperature=0, max_tokens=24), use_tqdm=False)[0]
    assert list(served.choices[0].token_ids) == list(out.outputs[0].token_ids)
    assert served.usage.prompt_tokens == len(out.prompt_token_ids)


def test_server_timing_names_the_hops(endpoint):
    """Every admitted request reports its hops in the ingress (serving/timing.py): the LLM server call
    is inside the ingress total, and a media part's vetting is measured."""
    from serving.timing import parse_header

    raw = endpoint.client().chat.completions.with_raw_response.create(
        model=endpoint.model_id, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": [_image_part(png_bytes()), {"type": "text", "text": "Read."}]}],
    )
    steps = parse_header(raw.headers["server-timing"])
    assert set(steps) == {"guard", "parse", "vet", "llm", "ingress"}
    assert 0 < steps["llm"] < steps["ingress"]
    assert raw.parse().usage.completion_tokens > 0


def test_large_and_mixed_images_equal_direct_vllm(endpoint, direct_llm):
    """An image over the model's target size is resized in the ingress with the image processor's own
    functions (model.inputs.pages) and sent with do_resize=False; mixed with a small one, both are
    brought to their target size there. Either way the tokens equal a direct vLLM call that is given
    the full-size images and resizes them itself."""
    from vllm import SamplingParams

    from model.inputs import media, prompts

    big, small = png_bytes(1100, 800, seed=11), png_bytes(80, 60, seed=12)
    for images in ([big], [small, big]):
        served = _ask(endpoint, [*(_image_part(i) for i in images), {"type": "text", "text": "Read."}], max_tokens=12)
        decoded = [page for i in images for page in media.decode_images(i)]
        out = direct_llm.chat(prompts.build_messages("Read.", images=decoded),
                              SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
        assert list(served.choices[0].token_ids) == list(out.outputs[0].token_ids)
        assert served.usage.prompt_tokens == len(out.prompt_token_ids)
