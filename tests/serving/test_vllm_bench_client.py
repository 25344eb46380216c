"""vLLM's own load client (`vllm bench serve`: openai-chat backend, random-mm images, streaming, the
API key as a header) against the endpoint: every request completes at concurrency 1, 8 and 32.

A small bound of the full-size run in bench/serving.py --vllm-client (figures in docs/endpoint.md).
The key used has its own limit in the key file (`max_concurrent=64`), as a load-testing team's would.
"""

from __future__ import annotations

import pytest

from bench import vllm_client
from tests.serving.conftest import KEY_LOAD


@pytest.mark.parametrize("concurrency,prompts", [(1, 2), (8, 8), (32, 32)])
def test_vllm_bench_client_completes_every_request(endpoint, concurrency, prompts):
    result = vllm_client.run(vllm_client.cli_args(
        endpoint.base_url, endpoint.model_id, str(endpoint.checkpoint), api_key=KEY_LOAD,
        concurrency=concurrency, num_prompts=prompts, output_len=4,
    ))
    assert (result["completed"], result["failed"]) == (prompts, 0), result["report"][-2000:]
    assert result["total_output_tokens"] == 4 * prompts  # ignore_eos: exactly the requested length
    assert result["median_ttft_ms"] > 0 and result["request_throughput"] > 0
