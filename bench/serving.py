"""Benchmark: the Ray Serve endpoint vs vLLM's own OpenAI server, same checkpoint, same run.

    python -m bench.serving [--model PATH] [--concurrency 1,8,32] [--requests-per-level N] [--max-tokens 16]

Starts both servers, then measures them alternately at each level (A B, then B A; median of the
rounds), so background load on a shared machine hits both alike. Sends the same chat requests (a 64x48 PNG + a short instruction, greedy, `max_tokens` new tokens) at each
concurrency level with the `openai` async client, and reports p50/p95 latency and requests/s, plus
the ratios endpoint / vLLM. The endpoint runs as users run it (`python -m serving.app`, API key on,
media vetting on); vLLM's server gets the same engine arguments from `model.engine.EngineSettings`.
Engine start time is reported apart. Without --model a tiny random checkpoint is built.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

API_KEY = "sk-bench-0000000000000000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png() -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wait_ready(url: str, proc: subprocess.Popen, headers: dict, timeout: float = 900) -> float:
    import requests

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url, headers=headers, timeout=5).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # both servers shut down gracefully on SIGTERM
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def _level(base_url: str, model: str, concurrency: int, total: int, max_tokens: int, image: str) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=600)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "text", "text": "Read the document."},
    ]}]
    latencies: list[float] = []
    errors = 0
    queue = list(range(total))

    async def worker():
        nonlocal errors
        while queue:
            queue.pop()
            t0 = time.perf_counter()
            try:
                await client.chat.completions.create(
                    model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                    extra_body={"min_tokens": max_tokens},  # equal work per request on both servers
                )
                latencies.append(time.perf_counter() - t0)
            except openai.APIError:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "concurrency": concurrency, "requests": total, "errors": errors,
        "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
        "rps": len(latencies) / wall,
    }


def _vllm_cli_args(settings) -> list[str]:
    """EngineSettings.vllm_kwargs() as `vllm serve` flags (the same engine the endpoint builds)."""
    args: list[str] = []
    for key, value in settings.vllm_kwargs().items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (dict, list)):
            args += [flag, json.dumps(value)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def _start_endpoint(model, model_id, args, levels, env, work) -> tuple[subprocess.Popen, str]:
    keys = work / "keys.txt"
    keys.write_text(API_KEY + "\n")
    port = _free_port()
    cmd = [sys.executable, "-m", "serving.app", "--model", model, "--model-id", model_id, "--port", str(port),
           "--api-keys-file", str(keys), "--max-concurrent-per-key", str(max(levels) * 2),
           "--max-model-len", str(args.max_model_len), "--device", args.device,
           "--max-ongoing-requests", str(max(64, max(levels) * 2))]
    print("endpoint:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=open(work / "endpoint.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _start_vllm(settings, model_id, env, work) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *_vllm_cli_args(settings),
           "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY]
    print("vllm:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=open(work / "vllm.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: build the tiny checkpoint)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-level", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level (median is reported)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json-out", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]

    from model.engine import EngineSettings

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model = args.model
    if not model:
        from model.checkpoints.tiny import build

        model = str(build(work / "tiny"))
    settings = EngineSettings(model=model, device=args.device, max_model_len=args.max_model_len)
    env = {**os.environ, **settings.env(), "RAY_USAGE_STATS_ENABLED": "0"}
    model_id = "bench-model"
    report: dict = {"model": model, "device": settings.resolved_device(), "max_tokens": args.max_tokens,
                    "endpoint": [], "vllm": []}

    # Both servers stay up and are measured alternately (A B, B A, ...) at each level, so that load
    # from anything else on the machine hits both alike. An idle engine does not compute.
    procs = []
    try:
        t0 = time.monotonic()
        ours, ours_url = _start_endpoint(model, model_id, args, levels, env, work)
        procs.append(ours)
        report["endpoint_start_s"] = _wait_ready(ours_url + "/health", ours, {})
        print(f"  endpoint ready in {report['endpoint_start_s']:.0f} s", flush=True)
        theirs, theirs_url = _start_vllm(settings, model_id, env, work)
        procs.append(theirs)
        report["vllm_start_s"] = _wait_ready(theirs_url + "/v1/models", theirs, {"Authorization": f"Bearer {API_KEY}"})
        print(f"  vLLM server ready in {report['vllm_start_s']:.0f} s", flush=True)
        image = _png()
        servers = {"endpoint": ours_url + "/v1", "vllm": theirs_url + "/v1"}
        for url in servers.values():  # warm-up: first multimodal request pays one-time setup
            asyncio.run(_level(url, model_id, 1, 2, args.max_tokens, image))
        for c in levels:
            runs: dict[str, list[dict]] = {"endpoint": [], "vllm": []}
            for r in range(args.rounds):
                order = ["endpoint", "vllm"] if r % 2 == 0 else ["vllm", "endpoint"]
                for name in order:
                    result = asyncio.run(_level(servers[name], model_id, c, max(args.requests_per_level, c * 2),
                                                args.max_tokens, image))
                    runs[name].append(result)
                    print(f"    {name:8s}", json.dumps(result), flush=True)
            for name, results in runs.items():
                best = sorted(results, key=lambda x: x["rps"])[len(results) // 2]  # median by throughput
                report[name].append(best)
    finally:
        for proc in procs:
            _stop(proc)
    print(f"total {time.monotonic() - t0:.0f} s")

    print("\nconcurrency | endpoint p50/p95 s, req/s | vLLM p50/p95 s, req/s | req/s ratio | p50 ratio")
    report["ratios"] = []
    for ours_r, theirs_r in zip(report["endpoint"], report["vllm"]):
        ratio = {"concurrency": ours_r["concurrency"], "rps_ratio": ours_r["rps"] / theirs_r["rps"],
                 "p50_ratio": ours_r["p50_s"] / theirs_r["p50_s"]}
        report["ratios"].append(ratio)
        print(f"{ours_r['concurrency']:>11} | {ours_r['p50_s']:.3f}/{ours_r['p95_s']:.3f}, {ours_r['rps']:.2f} | "
              f"{theirs_r['p50_s']:.3f}/{theirs_r['p95_s']:.3f}, {theirs_r['rps']:.2f} | "
              f"{ratio['rps_ratio']:.2f}x | {ratio['p50_ratio']:.2f}x")
    print(f"engine start: endpoint {report['endpoint_start_s']:.0f} s, vLLM server {report['vllm_start_s']:.0f} s")
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
