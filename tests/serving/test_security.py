"""Refusals of the real endpoint: keys (401), per-key concurrency (429), body size (413), media limits
and media URL policy (400), malformed requests (4xx in OpenAI's error format, never 5xx)."""

from __future__ import annotations

import base64
import json
import time

import openai
import pytest
import requests

from tests.serving.conftest import KEY_A, KEY_B, TEST_LIMITS, png_bytes, wav_bytes


def _post(endpoint, body, key=KEY_A, path="/v1/chat/completions", **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    headers.update(kwargs.pop("headers", {}))
    return requests.post(endpoint.base_url + path, data=body, headers=headers, timeout=120, **kwargs)


def _chat(endpoint, content, **extra):
    return {"model": endpoint.model_id, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


def _assert_openai_error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    return error["message"]


def _image_url(url):
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Read."}]


# -- 401 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "sk-wrong", KEY_A + "x", KEY_A[:-1], ""])
def test_missing_or_wrong_key_is_401(endpoint, key):
    r = _post(endpoint, _chat(endpoint, "hi"), key=key)
    _assert_openai_error(r, 401)
    r = requests.get(endpoint.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {})
    _assert_openai_error(r, 401)


def test_openai_client_wrong_key_raises_authentication_error(endpoint):
    with pytest.raises(openai.AuthenticationError):
        endpoint.client("sk-nope").models.list()


def test_basic_auth_scheme_is_401(endpoint):
    r = _post(endpoint, _chat(endpoint, "hi"), key=None, headers={"Authorization": "Basic " + KEY_A})
    _assert_openai_error(r, 401)


# -- 413 -------------------------------------------------------------------------------------------


def test_body_over_limit_is_413(endpoint):
    big = "x" * (TEST_LIMITS["limits"]["max_body_bytes"] + 1)
    r = _post(endpoint, _chat(endpoint, big))
    _assert_openai_error(r, 413)


def test_chunked_body_over_limit_is_413(endpoint):
    def chunks():  # no Content-Length: the guard counts while reading
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    r = _post(endpoint, chunks(), headers={"Content-Type": "application/json"})
    _assert_openai_error(r, 413)


def test_413_needs_no_key_check_first(endpoint):
    # An oversized body is refused from its declared size before anything else is read.
    r = _post(endpoint, "x" * (TEST_LIMITS["limits"]["max_body_bytes"] + 10), key=None)
    assert r.status_code == 413


# -- 400: limits -------------------------------------------------------------------------------------


def _data_png(**kwargs):
    return "data:image/png;base64," + base64.b64encode(png_bytes(**kwargs)).decode()


def test_too_many_images_is_400(endpoint):
    content = [{"type": "image_url", "image_url": {"url": _data_png(seed=i)}} for i in range(3)]
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, content + [{"type": "text", "text": "x"}])), 400)
    assert "3 images" in msg and "limit is 2" in msg


def test_too_many_pixels_is_400(endpoint):
    from jobs.samples import png_bomb

    url = "data:image/png;base64," + base64.b64encode(png_bomb(1200, 1000)).decode()
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, _image_url(url))), 400)
    assert "1200x1000" in msg and "MP" in msg


def test_decompression_bomb_is_400(endpoint):
    from jobs.samples import png_bomb

    bomb = png_bomb(30000, 30000)  # 900 MP in a few hundred KB
    url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    _assert_openai_error(_post(endpoint, _chat(endpoint, _image_url(url))), 400)


def test_audio_over_chat_window_is_400(endpoint):
    audio = base64.b64encode(wav_bytes(31.0, sr=8000)).decode()
    content = [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, content)), 400)
    assert "31.0 s" in msg and "/v1/audio/transcriptions" in msg


@pytest.mark.parametrize(
    "content, needle",
    [
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}], "corrupt"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}], "base64"),
        ([{"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio").decode(), "format": "wav"}}], "audio"),
        ([{"type": "image_embeds", "image_embeds": "AAAA"}], "not supported"),
        ([{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}], "not supported"),
        ([{"type": "input_audio"}], "content part"),
        ([{"type": "image_url", "image_url": {}}], "content part"),
    ],
)
def test_bad_media_is_400(endpoint, content, needle):
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, content)), 400)
    assert needle in msg


# -- 400: media URL policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "etc/hosts",
        "C:\\Windows\\win.ini",
        "ftp://example.com/x.png",
    ],
)
def test_local_and_unsupported_urls_refused(endpoint, url):
    _assert_openai_error(_post(endpoint, _chat(endpoint, _image_url(url))), 400)


def test_internal_http_url_refused(endpoint):
    # The same media server that "localhost" reaches, but 127.0.0.1 is not on the allowlist.
    url = f"http://127.0.0.1:{endpoint.media_port}/page.png"
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, _image_url(url))), 400)
    assert "not allowed" in msg


@pytest.mark.parametrize(
    "url", ["https://example.com/page.png", "http://169.254.169.254/latest/meta-data/", "https://localhost.evil.com/a.png"]
)
def test_non_allowlisted_domains_refused(endpoint, url):
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, _image_url(url))), 400)
    assert "not allowed" in msg


def test_audio_url_follows_the_same_policy(endpoint):
    content = [{"type": "audio_url", "audio_url": {"url": "file:///tmp/a.wav"}}]
    _assert_openai_error(_post(endpoint, _chat(endpoint, content)), 400)


def test_missing_s3_object_is_400(endpoint):
    url = f"s3://{endpoint.s3_bucket}/no/such/object.png"
    msg = _assert_openai_error(_post(endpoint, _chat(endpoint, _image_url(url))), 400)
    assert "not found" in msg


# -- malformed requests: 4xx, never 5xx ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[]",
        "null",
        json.dumps({"model": "gemma-tiny"}),
        json.dumps({"model": "gemma-tiny", "messages": "hello"}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": 5}]}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": "hi"}], "n": 1000}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": ["hi"]}]}),
        json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"model": "gemma-tiny", "messages": [{"role": "user", "content": "x " * 5000}]}),
    ],
)
def test_malformed_chat_is_4xx_json(endpoint, body):
    r = _post(endpoint, body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.json()["error"]["message"]


def test_placeholder_tokens_in_text_do_not_break_the_engine(endpoint):
    text = "<image_soft_token><audio_soft_token><start_of_image> hello"
    r = _post(endpoint, _chat(endpoint, text))
    assert r.status_code < 500, r.text[:300]


def test_unknown_route_and_method(endpoint):
    r = requests.get(endpoint.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_A}"})
    assert r.status_code == 405 and r.json()["error"]["message"]
    r = requests.post(endpoint.base_url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY_A}"}, json={})
    assert r.status_code == 404 and r.json()["error"]["message"]


# -- 429 -------------------------------------------------------------------------------------------


def test_per_key_concurrency_limit_is_429_and_isolated(endpoint):
    limit = TEST_LIMITS["auth"]["max_concurrent_per_key"]
    long_body = _chat(endpoint, "count", max_tokens=3000, min_tokens=3000, stream=True)
    streams = []
    try:
        for _ in range(limit):
            s = _post(endpoint, long_body, stream=True)
            assert s.status_code == 200
            streams.append(s)
        refused = _post(endpoint, _chat(endpoint, "hi"))
        msg = _assert_openai_error(refused, 429)
        assert "concurrent" in msg and refused.headers.get("retry-after")
        with pytest.raises(openai.RateLimitError):
            endpoint.client(KEY_A).models.list()
        # Another team's key is not affected.
        other = _post(endpoint, _chat(endpoint, "hi"), key=KEY_B)
        assert other.status_code == 200, other.text
    finally:
        for s in streams:
            s.close()
    # Slots come back once the streams end (client disconnect cancels the generation).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _post(endpoint, _chat(endpoint, "hi")).status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("per-key slots were not released after the streams closed")
