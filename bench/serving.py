"""Benchmark: the Ray Serve endpoint vs vLLM's own OpenAI server, same checkpoint, same run.

    python -m bench.serving [--model PATH] [--variants shipped,ray-defaults] [--concurrency 1,8,32]
                            [--requests-per-level N] [--rounds R] [--max-tokens 8] [--vllm-client]

Starts vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`, engine flags rendered from
`EngineConfig.vllm_kwargs()`) once, then each endpoint variant in turn as users run it
(`python -m serving.app`, API key on, per-key limits and media policy on), and measures the two
alternately: at each level, rounds of A B then B A, each block preceded by a quiet gap.

Why the gap: vLLM's idle engine processes keep busy-polling their shared-memory queues for 1 s after
their last step (`SpinCondition`, busy_loop_s=1, with sched_yield) and its worker's main thread is
pinned to core 0 in both servers. Requests that alternate one by one between two engines on a 2-core
machine therefore run each engine next to the other one's spinning threads, and both slow down by
2-4x (measured: docs/endpoint.md). Production does not co-locate two engines; a gap of 2 s (> 1 s)
plus two warm-up requests measures each server as it runs alone, while alternating blocks still
spread background load over both.

Per level the same requests go to both servers with the `openai` client: c=1 a text request and a
small-image request (64x48 PNG + instruction), higher levels the image request; greedy, exactly
`--max-tokens` new tokens (`min_tokens` = `max_tokens`). Reported: p50/p95 latency, requests/s,
ratios endpoint / vLLM, and at c=1 the per-hop breakdown from the endpoint's `Server-Timing` header
(serving/timing.py) and vLLM's per-request engine timings (`--enable-per-request-metrics`, the same
flag on both servers): HTTP front (proxy or HAProxy, client, network), guard, parse, media vetting,
LLM server (deployment handle + vLLM's OpenAI layer), engine (queue + prefill + decode). Every block
also reports each server's CPU milliseconds per request by process role (psutil over the server's
process tree: engine worker, engine core, LLM server replica, ingress replica, HTTP front, the rest of
Ray; vLLM's API server): on a machine with few cores that is what bounds requests/s.

Variants (`--variants`): `shipped` (defaults of `python -m serving.app`: HAProxy direct ingress,
Serve's throughput mode, first stream chunk at once then 10 ms batching), `ray-defaults` (Ray Serve's
own defaults: Python proxy, user code in a thread, ray.serve.llm's 50 ms stream batcher: the endpoint
before this change), `no-throughput-mode` (HAProxy only), `ray-batcher-50ms` (shipped but the
library's batcher at 50 ms), `stream-0ms` (shipped, every chunk sent on its own).

`--vllm-client` adds vLLM's own load client (`bench/vllm_client.py`: openai-chat backend, random-mm
images, key as a header, streaming) at every level against both servers: TTFT / TPOT / throughput.
Without --model a tiny random checkpoint is built.
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
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

API_KEY = "sk-bench-0000000000000000"

VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "shipped": ({}, []),
    "ray-defaults": ({"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
                     ["--ray-fast-paths", "false", "--stream-batching-interval-ms", "50",
                      "--stream-first-chunk-immediately", "false"]),
    "no-throughput-mode": ({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}, []),
    "ray-batcher-50ms": ({}, ["--stream-batching-interval-ms", "50", "--stream-first-chunk-immediately", "false"]),
    "stream-0ms": ({}, ["--stream-batching-interval-ms", "0"]),
}


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


def _messages(kind: str, image: str) -> list[dict]:
    if kind == "text":
        return [{"role": "user", "content": "Hello, what is on the page?"}]
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                         {"type": "text", "text": "Read the document."}]}]


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


def _stop(proc: subprocess.Popen) -> float:
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # both servers shut down gracefully on SIGTERM
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - started


def _engine_ms(body: dict) -> float | None:
    metrics = body.get("metrics") or {}
    parts = [metrics.get(k) for k in ("queue_time_ms", "time_to_first_token_ms", "generation_time_ms")]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


async def _level(base_url: str, model: str, kind: str, concurrency: int, total: int, max_tokens: int,
                 image: str) -> dict:
    """`total` requests at `concurrency`; latencies, requests/s and per-request hop timings."""
    import openai

    from serving.timing import parse_header

    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=600)
    messages = _messages(kind, image)
    samples: list[dict] = []
    errors = 0
    remaining = total

    async def worker():
        nonlocal errors, remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                    extra_body={"min_tokens": max_tokens},  # equal work per request on both servers
                )
                body = raw.http_response.json()
                sample = {"total": (time.perf_counter() - t0) * 1000, **parse_header(raw.headers.get("server-timing", ""))}
                engine = _engine_ms(body)
                if engine is not None:
                    sample["engine"] = engine
                samples.append(sample)
            except openai.APIError:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    lat = np.array([s["total"] for s in samples] or [float("nan")]) / 1000
    return {
        "kind": kind, "concurrency": concurrency, "requests": total, "errors": errors,
        "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
        "rps": len(samples) / wall, "samples": samples,
    }


def hops(samples: list[dict]) -> dict[str, float]:
    """Median per hop (ms) over requests; LLM server = the handle call minus the engine's own time."""
    rows: dict[str, list[float]] = {}

    def put(name, value):
        rows.setdefault(name, []).append(value)

    for s in samples:
        put("total", s["total"])
        engine = s.get("engine")
        if "ingress" in s:  # the endpoint
            put("http_front", s["total"] - s["ingress"])
            for step in ("guard", "parse", "vet"):
                put(step, s.get(step, 0.0))
            if engine is not None:
                put("llm_server", s["llm"] - engine)
            put("ingress_other", s["ingress"] - sum(s.get(k, 0.0) for k in ("guard", "parse", "vet", "llm")))
        elif engine is not None:  # vLLM's server: its HTTP layer and OpenAI layer are one process
            put("http_and_openai_layer", s["total"] - engine)
        if engine is not None:
            put("engine", engine)
    return {k: round(statistics.median(v), 2) for k, v in rows.items()}


def _vllm_cli_args(settings) -> list[str]:
    """EngineConfig.vllm_kwargs() as `vllm serve` flags (the same engine the endpoint builds)."""
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


def _start_endpoint(model, model_id, args, levels, env, work, variant) -> tuple[subprocess.Popen, str]:
    extra_env, extra_args = VARIANTS[variant]
    keys = work / "keys.txt"
    keys.write_text(API_KEY + "\n")
    port = _free_port()
    cmd = [sys.executable, "-m", "serving.app", "--model", model, "--model-id", model_id, "--port", str(port),
           "--api-keys-file", str(keys), "--max-concurrent-per-key", str(max(levels) * 2),
           "--max-model-len", str(args.max_model_len), "--device", args.device,
           "--max-ongoing-requests", str(max(64, max(levels) * 2)), "--per-request-metrics", "true", *extra_args]
    print(f"endpoint [{variant}]:", " ".join(cmd[1:]), extra_env or "", flush=True)
    proc = subprocess.Popen(cmd, env={**env, **extra_env}, stdout=open(work / f"endpoint-{variant}.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _start_vllm(settings, model_id, env, work) -> tuple[subprocess.Popen, str]:
    from model.structured_outputs import ENGINE_CONFIG

    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *_vllm_cli_args(settings),
           "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY,
           "--enable-per-request-metrics",
           # The endpoint's engine-level guided-decoding settings (serving/app.py); guided requests only.
           "--structured-outputs-config", json.dumps(ENGINE_CONFIG)]
    print("vllm:", " ".join(cmd[1:]), flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=open(work / "vllm.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _role(cmdline: str) -> str:
    """Which part of a server a process is (for CPU accounting)."""
    if "VLLM::Worker" in cmdline:
        return "engine_worker"
    if "VLLM::EngineCore" in cmdline:
        return "engine_core"
    if "ServeReplica" in cmdline:
        return "llm_server" if "LLMServer" in cmdline else "ingress"
    if "haproxy" in cmdline.lower() or "ProxyActor" in cmdline:
        return "http_front"
    if "vllm.entrypoints.openai.api_server" in cmdline:
        return "api_server"  # vLLM's server: HTTP, OpenAI layer and input processing in one process
    return "ray_other"  # controller, raylet, GCS, dashboard, the driver


def _cpu_seconds(proc: subprocess.Popen) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process in a server's tree, with its role."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    try:
        root = psutil.Process(proc.pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in members:
        try:
            times = p.cpu_times()
            out[p.pid] = (_role(" ".join(p.cmdline()) or p.name()), times.user + times.system)
        except psutil.Error:
            pass
    return out


def _cpu_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """CPU milliseconds per request by role between two snapshots."""
    roles: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        start = before.get(pid, (role, 0.0))[1]
        roles[role] = roles.get(role, 0.0) + seconds - start
    per = {role: round(1000 * sec / max(requests, 1), 2) for role, sec in sorted(roles.items(), key=lambda x: -x[1])
           if sec > 0.005}
    per["total"] = round(sum(per.values()), 2)
    return per


def _measure(servers: dict[str, str], model_id: str, args, levels: list[int], image: str,
             procs: dict[str, subprocess.Popen] | None = None) -> dict:
    """Alternating blocks per workload; pooled samples and the median round's requests/s; CPU
    milliseconds per request by process role (`procs`: each server's root process)."""
    workloads = [("text", 1), ("image", 1)] if 1 in levels else []
    workloads += [("image", c) for c in levels if c != 1]
    out: dict[str, dict] = {}
    for kind, c in workloads:
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for name in order:
                time.sleep(args.gap_s)  # the other engine stops spinning (see the module doc)
                asyncio.run(_level(servers[name], model_id, kind, min(c, 4), 2, args.max_tokens, image))  # warm-up
                before = _cpu_seconds(procs[name]) if procs else {}
                result = asyncio.run(_level(servers[name], model_id, kind, c, max(args.requests_per_level, c * 2),
                                            args.max_tokens, image))
                if procs:
                    result["cpu_ms_per_request"] = _cpu_per_request(before, _cpu_seconds(procs[name]), result["requests"])
                runs[name].append(result)
                printable = {k: v for k, v in result.items() if k != "samples"}
                print(f"    {name:8s}", json.dumps(printable), flush=True)
        key = f"{kind}@{c}"
        out[key] = {}
        for name, results in runs.items():
            samples = [s for r in results for s in r["samples"]]
            lat = np.array([s["total"] for s in samples] or [float("nan")]) / 1000
            out[key][name] = {
                "kind": kind, "concurrency": c, "requests": sum(r["requests"] for r in results),
                "errors": sum(r["errors"] for r in results),
                "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
                "rps": sorted(r["rps"] for r in results)[len(results) // 2],
                "rps_rounds": [round(r["rps"], 2) for r in results],
                "hops": hops(samples) if c == 1 else None,
                "cpu_ms_per_request": _median_cpu([r.get("cpu_ms_per_request") for r in results]),
            }
    return out


def _median_cpu(rounds: list[dict | None]) -> dict[str, float] | None:
    rounds = [r for r in rounds if r]
    if not rounds:
        return None
    roles = {role for r in rounds for role in r}
    return {role: round(statistics.median(r.get(role, 0.0) for r in rounds), 2) for role in sorted(roles)}


def _vllm_client(servers: dict[str, str], model_id: str, tokenizer: str, levels: list[int], args) -> dict:
    from bench import vllm_client

    out: dict[str, dict] = {}
    for c in levels:
        out[str(c)] = {}
        order = list(servers) if c % 2 else list(servers)[::-1]
        for name in order:
            time.sleep(args.gap_s)
            n = args.client_prompts or max(32, 4 * c)
            result = vllm_client.run(vllm_client.cli_args(servers[name], model_id, tokenizer, api_key=API_KEY,
                                                          concurrency=c, num_prompts=n, output_len=args.max_tokens))
            out[str(c)][name] = vllm_client.summary(result)
            print(f"    vllm-client {name:8s} c={c}", json.dumps(out[str(c)][name]), flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: build the tiny checkpoint)")
    parser.add_argument("--variants", default="shipped,ray-defaults", help=f"endpoint variants: {', '.join(VARIANTS)}")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests-per-level", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per level")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gap-s", type=float, default=2.0, help="quiet time before each block (see above)")
    parser.add_argument("--vllm-client", action="store_true", help="also run vLLM's benchmark client per level")
    parser.add_argument("--client-prompts", type=int, default=0, help="vLLM client prompts per level (0: max(32, 4c))")
    parser.add_argument("--json-out", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")

    from model.engine import EngineConfig

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model = args.model
    if not model:
        from model.checkpoints.tiny import build

        model = str(build(work / "tiny"))
    settings = EngineConfig(model=model, device=args.device, max_model_len=args.max_model_len)
    env = {**os.environ, **settings.env(), "RAY_USAGE_STATS_ENABLED": "0"}
    model_id = "bench-model"
    report: dict = {"model": model, "device": settings.resolved_device(), "max_tokens": args.max_tokens,
                    "gap_s": args.gap_s, "rounds": args.rounds, "variants": {}}
    image = _png()
    t0 = time.monotonic()
    theirs, theirs_url = _start_vllm(settings, model_id, env, work)
    try:
        report["vllm_start_s"] = _wait_ready(theirs_url + "/v1/models", theirs, {"Authorization": f"Bearer {API_KEY}"})
        print(f"  vLLM server ready in {report['vllm_start_s']:.0f} s", flush=True)
        for variant in variants:
            ours, ours_url = _start_endpoint(model, model_id, args, levels, env, work, variant)
            entry: dict = {}
            try:
                entry["endpoint_start_s"] = _wait_ready(ours_url + "/health", ours, {})
                print(f"  endpoint [{variant}] ready in {entry['endpoint_start_s']:.0f} s", flush=True)
                servers = {"endpoint": ours_url + "/v1", "vllm": theirs_url + "/v1"}
                for url in servers.values():  # first multimodal request pays one-time setup
                    asyncio.run(_level(url, model_id, "image", 1, 2, args.max_tokens, image))
                entry["levels"] = _measure(servers, model_id, args, levels, image,
                                           procs={"endpoint": ours, "vllm": theirs})
                if args.vllm_client:
                    entry["vllm_client"] = _vllm_client({"endpoint": ours_url, "vllm": theirs_url}, model_id, model,
                                                        levels, args)
            finally:
                entry["endpoint_stop_s"] = _stop(ours)
            report["variants"][variant] = entry
    finally:
        _stop(theirs)
    print(f"total {time.monotonic() - t0:.0f} s")
    _print_report(report)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


def _print_report(report: dict) -> None:
    for variant, entry in report["variants"].items():
        print(f"\n== endpoint variant: {variant} (start {entry.get('endpoint_start_s', 0):.0f} s, "
              f"stop {entry.get('endpoint_stop_s', 0):.0f} s; vLLM server start {report['vllm_start_s']:.0f} s)")
        print("workload | endpoint p50/p95 s, req/s | vLLM p50/p95 s, req/s | req/s ratio | p50 diff ms")
        for key, pair in entry.get("levels", {}).items():
            ours, theirs = pair["endpoint"], pair["vllm"]
            print(f"{key:>9} | {ours['p50_s']:.3f}/{ours['p95_s']:.3f}, {ours['rps']:.2f} | "
                  f"{theirs['p50_s']:.3f}/{theirs['p95_s']:.3f}, {theirs['rps']:.2f} | "
                  f"{ours['rps'] / theirs['rps']:.2f}x | {1000 * (ours['p50_s'] - theirs['p50_s']):+.1f}"
                  f"   errors {ours['errors']}/{theirs['errors']}")
        for key, pair in entry.get("levels", {}).items():
            if pair["endpoint"]["hops"]:
                print(f"  hops {key} (median ms): endpoint {pair['endpoint']['hops']}")
                print(f"  {' ' * len(key)}                     vLLM {pair['vllm']['hops']}")
        for key, pair in entry.get("levels", {}).items():
            if pair["endpoint"].get("cpu_ms_per_request"):
                print(f"  CPU ms/request {key}: endpoint {pair['endpoint']['cpu_ms_per_request']}")
                print(f"  {' ' * len(key)}                vLLM {pair['vllm']['cpu_ms_per_request']}")
        for c, pair in entry.get("vllm_client", {}).items():
            for name, figures in pair.items():
                print(f"  vllm-client c={c} {name}: {figures}")


if __name__ == "__main__":
    sys.exit(main())
