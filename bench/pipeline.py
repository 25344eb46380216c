"""Benchmark the batch pipeline against the single-engine ceiling and a transformers loop.

    python -m bench.pipeline [--model PATH] [--pages 256] [--clips 0] [--max-new-tokens 16] [--skip hf]

Same fixed-seed items for every contender (rendered text pages at 480x640 and 8 s audio clips):

* pipeline  `jobs.pipeline.run_job` on a local Ray instance (read -> decode -> ray.data.llm -> write,
            then finalize) with the job's default settings. Steady rate from the completion times
            of its engine batches; the start of actors and engine is reported apart. Engine
            occupancy: mean running requests over max_num_seqs in steady state, from the engine's
            own statistics (vLLM's `vllm:num_requests_running` gauge, exported through Ray's
            metrics agent, reported and sampled every 1 s).
* vllm      one `vllm.LLM.chat` call over messages decoded and built beforehand (the ceiling of one
            engine); engine start timed apart.
* hf        transformers `generate`, one item at a time (the plain loop people write first).

Greedy decoding with a fixed number of new tokens so all contenders do equal work (checked).
Prints items/s and the ratios; figures go into README.md ("Batch pipeline", Benchmark). Not a test: timings on a shared
machine are noisy, so compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import time

import numpy as np

from bench import local
from bench.sampling import Sampler


def make_items(directory: pathlib.Path, pages: int, clips: int, seed: int) -> list[pathlib.Path]:
    from jobs import samples

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(pages):
        words = rng.choice(" ".join(samples.SAMPLE_TEXTS).split(), size=40)
        path = directory / f"page{i:03d}.png"
        path.write_bytes(samples.png_page(" ".join(words)))
        paths.append(path)
    for i in range(clips):
        path = directory / f"clip{i:03d}.wav"
        path.write_bytes(samples.wav_bytes(samples.tone(8.0, seed=seed + i)))
        paths.append(path)
    return paths


def build_conversations(paths: list[pathlib.Path]) -> tuple[list[list[dict]], list]:
    """Pre-decoded inputs: chat messages for vLLM and (kind, media) pairs for transformers."""
    from model.inputs import media, prompts

    conversations, decoded_items = [], []
    for path in paths:
        data = path.read_bytes()
        if media.sniff_kind(data, path.name)[0] == "audio":
            audio = media.decode_audio(data)
            conversations.append(prompts.messages_for_item("auto", "audio", audio=audio))
            decoded_items.append(("audio", audio))
        else:
            page = media.decode_images(data)[0]
            conversations.append(prompts.messages_for_item("auto", "document", image=page))
            decoded_items.append(("document", page))
    return conversations, decoded_items


class EngineGauges(Sampler):
    """Samples the engine's own scheduler gauges (vLLM's `vllm:num_requests_running` / `_waiting`,
    exported by ray.data.llm's RayPrometheusStatLogger through Ray's metrics agent) every `interval_s`."""

    NAMES = {"ray_vllm_num_requests_running": "running", "ray_vllm_num_requests_waiting": "waiting"}
    PREFIX = "ray_vllm_num_requests_"

    def __init__(self, port: int, interval_s: float = 0.25):
        super().__init__(interval_s)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.samples: list[tuple[float, float, float]] = []  # (time, running, waiting), summed over engines

    def sample(self) -> None:
        import urllib.request

        try:
            text = urllib.request.urlopen(self.url, timeout=2).read().decode()
        except OSError:
            return
        # The export holds every metric of the session (thousands of lines, vLLM's histograms):
        # prometheus_client's parser took 0.2 core of the driver at two samples a second, on the
        # 2 cores the engine needs (measured with py-spy). Only two gauge lines matter here:
        # `name{labels} value`, summed over engines.
        values = {"running": None, "waiting": None}
        for line in text.splitlines():
            if not line.startswith(self.PREFIX):
                continue
            key = self.NAMES.get(line.split("{", 1)[0].split(" ", 1)[0])
            if key:
                values[key] = (values[key] or 0.0) + float(line.rsplit("}", 1)[-1].split()[0])
        if values["running"] is not None:
            self.samples.append((time.time(), values["running"], values["waiting"] or 0.0))

    def mean_between(self, start: float, end: float) -> dict:
        window = [(r, w) for t, r, w in self.samples if start <= t <= end]
        if not window:
            return {"samples": 0, "running": float("nan"), "waiting": float("nan")}
        return {"samples": len(window), "running": sum(r for r, _ in window) / len(window),
                "waiting": sum(w for _, w in window) / len(window)}


class CpuByProcess(Sampler):
    """Cumulative CPU seconds of this Ray session's processes, grouped by process title (Ray names
    its workers after the operator they run: `ray::MapWorker(MapBatches(ChatTemplateUDF))`; vLLM its
    engine processes `VLLM::EngineCore`, `VLLM::Worker...`), sampled every `interval_s`. The deltas
    over the steady state say where the cores went. A task worker is named `ray::IDLE` between
    tasks, so a pid is counted under the last other title it had in the window. The machine's own
    counters (`psutil.cpu_times`) are sampled too: what the processes do not account for is there."""

    def __init__(self, session_dir: str, interval_s: float = 1.0):
        super().__init__(interval_s)
        self.session_dir = session_dir
        # (time, pid -> (title group, CPU seconds), the machine's psutil.cpu_times())
        self.snapshots: list[tuple[float, dict[int, tuple[str, float]], object]] = []

    def _roots(self):
        import psutil

        me = psutil.Process()
        roots = [me]
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if self.session_dir in cmdline and ("raylet" in cmdline or "gcs_server" in cmdline):
                roots.append(proc)
        return roots

    @staticmethod
    def _group(proc) -> str:
        try:
            title = " ".join(proc.cmdline()) or proc.name()
        except Exception:  # noqa: BLE001 - the process ended
            return "?"
        for prefix in ("ray::", "VLLM::"):
            if title.startswith(prefix):
                return title.split()[0]
        if "raylet" in title or "gcs_server" in title or "dashboard" in title or "log_monitor" in title:
            return "ray system"
        if "bench.pipeline" in title:
            return "driver"
        return title.split()[0].rsplit("/", 1)[-1][:40]

    def sample(self) -> None:
        import psutil

        snapshot: dict[int, tuple[str, float]] = {}
        for root in self._roots():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    snapshot[proc.pid] = (self._group(proc), times.user + times.system)
                except psutil.Error:
                    continue
        self.snapshots.append((time.time(), snapshot, psutil.cpu_times()))

    def _bounds(self, start: float, end: float):
        """The snapshots nearest to two times, or None when they do not span any time."""
        before = min(self.snapshots, key=lambda s: abs(s[0] - start), default=None)
        after = min(self.snapshots, key=lambda s: abs(s[0] - end), default=None)
        if before is None or after is None or after[0] <= before[0]:
            return None
        return before, after

    def cores_between(self, start: float, end: float) -> dict[str, float]:
        """Cores used per process group between two times (CPU seconds / wall seconds)."""
        bounds = self._bounds(start, end)
        if bounds is None:
            return {}
        before, after = bounds
        window = [snap for t, snap, _ in self.snapshots if before[0] <= t <= after[0]]
        out: dict[str, float] = {}
        for pid, (group, cpu) in after[1].items():
            seen = [snap[pid][0] for snap in window if pid in snap and snap[pid][0] not in ("ray::IDLE", "?")]
            group = seen[-1] if seen else group
            used = cpu - before[1].get(pid, (group, 0.0))[1]
            out[group] = out.get(group, 0.0) + used / (after[0] - before[0])
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def machine_between(self, start: float, end: float) -> dict[str, float]:
        """The whole machine's cores by kind (user, nice, system, idle, ...) between two times."""
        bounds = self._bounds(start, end)
        if bounds is None:
            return {}
        (t0, _, first), (t1, _, last) = bounds
        used = {k: (getattr(last, k) - getattr(first, k)) / (t1 - t0) for k in last._fields}
        return {k: round(v, 2) for k, v in used.items() if v > 0.01}


def bench_pipeline(model: str, items_dir: pathlib.Path, n_items: int, max_new_tokens: int,
                   overrides: dict, gauges_on: bool = True) -> dict:
    """One run on a local Ray instance, the job's default settings unless `overrides` says otherwise.

    Steady throughput comes from the completion times of the engine batches (work rows carry
    `written_at`, stamped as each batch leaves the engine): (items after the first batch) /
    (last completion - first completion). That excludes the start of the actors and the engine,
    which is reported apart (`startup_s`: run start to first batch). Occupancy is averaged over the
    steady state: from the first completion until fewer than max_num_seqs items were left unfinished
    (after that the engine cannot be full, whatever the pipeline does)."""
    import pyarrow.parquet as pq
    import ray

    from jobs import ray_internals
    from jobs.pipeline import ensure_ray, run_job
    from jobs.spec import JobSpec

    out = items_dir.parent / "out-pipeline"
    engine = {"model": model, "max_model_len": 4096, **{k: v for k, v in overrides.items() if k == "max_num_seqs"}}
    run = {"run_id": "bench", "error_threshold": 0.0, **{k: v for k, v in overrides.items() if k != "max_num_seqs"}}
    spec = JobSpec(inputs=[str(items_dir)], output={"uri": str(out), "max_new_tokens": max_new_tokens},
                   engine=engine, run=run)
    settings = spec.engine
    max_num_seqs = settings.resolved_max_num_seqs()
    # Ray's metrics agent reports every 10 s by default: too coarse for a run of seconds. Every
    # 200 ms cost the metrics agent a fifth of a core (measured), 1 s costs little and still gives
    # one sample a second.
    # `--no-gauges` leaves Ray's default (what a production run pays) and reports no occupancy.
    ensure_ray(spec, **({"_system_config": {"metrics_report_interval_ms": 1000}} if gauges_on else {}))
    port = ray_internals.metrics_export_port()
    if os.environ.get("BENCH_DATA_STATS"):  # per-operator wall/CPU times in the log (diagnosis)
        ray.data.DataContext.get_current().enable_auto_log_stats = True
    session_dir = ray_internals.session_dir()
    started = time.time()
    gauges = EngineGauges(port, interval_s=1.0)  # never started with --no-gauges: no samples, occupancy nan
    with gauges if gauges_on else contextlib.nullcontext(), CpuByProcess(session_dir, interval_s=2.0) as cpu:
        summary = run_job(spec)
    ray.shutdown()
    assert summary["sources"]["ok"] == n_items, summary["errors_sample"]
    work = pq.read_table(out / "_work" / "bench" / "segments", columns=["written_at"]).column(0).to_pylist()
    done = sorted(work)
    first_batch = sum(1 for t in done if t - done[0] < 0.05)
    span = done[-1] - done[0]
    steady_end = done[max(0, len(done) - max_num_seqs - 1)] if len(done) > max_num_seqs else done[0]
    occupancy = gauges.mean_between(done[0], steady_end)
    inv = summary["this_invocation"]
    return {
        "items_per_s": (len(done) - first_batch) / span if span > 0 else float("nan"),
        "output_tokens": summary["tokens"]["output"],
        "startup_s": done[0] - started,
        "stream_s": inv["stream_s"],
        "finalize_s": inv["finalize_s"],
        "end_to_end_items_per_s": n_items / (time.time() - started),
        "batches_seen": len({round(t, 2) for t in done}),
        "max_num_seqs": max_num_seqs,
        "batch_size": spec.run.batch_size,
        "concurrent_batches": spec.run.concurrent_batches(max_num_seqs),
        "steady_s": steady_end - done[0],
        "mean_running": occupancy["running"],
        "mean_waiting": occupancy["waiting"],
        "occupancy": occupancy["running"] / max_num_seqs,
        "occupancy_samples": occupancy["samples"],
        "cores_in_steady_state": cpu.cores_between(done[0], steady_end),
        "machine_cores_in_steady_state": cpu.machine_between(done[0], steady_end),
    }


def bench_vllm(model: str, conversations, max_new_tokens: int, max_num_seqs: int | None = None) -> dict:
    from vllm import LLM, SamplingParams

    from model.engine import EngineConfig

    settings = EngineConfig(model=model, max_model_len=4096, max_images_per_prompt=1, max_audios_per_prompt=1,
                              max_num_seqs=max_num_seqs)
    settings.apply_env()
    started = time.perf_counter()
    llm = LLM(**settings.vllm_kwargs())
    startup = time.perf_counter() - started
    # The pipeline's sampling (greedy, EOS honoured): same inputs, same tokens, equal work (checked).
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    llm.chat(conversations[:2], params, chat_template_content_format="openai", use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outs = llm.chat(conversations, params, chat_template_content_format="openai", use_tqdm=False)
    elapsed = time.perf_counter() - started
    llm.llm_engine.engine_core.shutdown()
    return {"items_per_s": len(conversations) / elapsed, "startup_s": startup, "elapsed_s": elapsed,
            "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


def bench_hf(model: str, decoded_items, max_new_tokens: int, limit: int) -> dict:
    """The processor is given the same prompt text the chat template renders for vLLM."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from model.inputs import prompts

    started = time.perf_counter()
    processor = AutoProcessor.from_pretrained(model)
    hf = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
    startup = time.perf_counter() - started
    subset = decoded_items[:limit]
    started = time.perf_counter()
    for kind, item in subset:
        placeholder = "<audio_soft_token>" if kind == "audio" else "<image_soft_token>"
        text = (f"<bos><start_of_turn>user\n{placeholder}{prompts.resolve_prompt('auto', kind)}"
                "<end_of_turn>\n<start_of_turn>model\n")
        media_kwargs = {"audio": [item], "sampling_rate": 16_000} if kind == "audio" else {"images": [[item]]}
        inputs = processor(text=[text], return_tensors="pt", **media_kwargs)
        with torch.no_grad():
            out = hf.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                              do_sample=False)
        assert out.shape[1] - inputs["input_ids"].shape[1] == max_new_tokens
    elapsed = time.perf_counter() - started
    return {"items_per_s": len(subset) / elapsed, "startup_s": startup, "elapsed_s": elapsed, "items": len(subset)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".cache/tiny-gemma4-unified")
    p.add_argument("--pages", type=int, default=256)
    p.add_argument("--clips", type=int, default=0,
                   help="8 s audio clips (the pipeline cuts audio at silences, the vllm contender does not: output tokens then differ, which the bench reports)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--hf-items", type=int, default=8, help="items for the (slow) transformers loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, help="pipeline rows per engine call (default: the job's)")
    p.add_argument("--max-concurrent-batches", type=int, help="default: the job's rule")
    p.add_argument("--max-num-seqs", type=int, help="default: the job's (and the same for the vllm contender)")
    p.add_argument("--no-gauges", action="store_true",
                   help="no engine-occupancy sampling and Ray's default metrics interval: the pipeline as a "
                        "production run has it (with 1 s reports Ray's metrics agent took 0.17-0.21 core in steady state)")
    p.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "vllm", "hf"])
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = p.parse_args()

    model, tmp = local.prepare(args.model, prefix="bench-pipeline-")
    paths = make_items(tmp / "items", args.pages, args.clips, args.seed)
    conversations, decoded_items = build_conversations(paths)
    results: dict = {"items": len(paths), "pages": args.pages, "clips": args.clips,
                     "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count()}
    if "vllm" not in args.skip:
        results["vllm"] = bench_vllm(model, conversations, args.max_new_tokens, args.max_num_seqs)
    if "hf" not in args.skip:
        results["hf"] = bench_hf(model, decoded_items, args.max_new_tokens, args.hf_items)
    if "pipeline" not in args.skip:
        overrides = {k: v for k, v in (("batch_size", args.batch_size), ("max_num_seqs", args.max_num_seqs),
                                       ("max_concurrent_batches", args.max_concurrent_batches)) if v is not None}
        results["pipeline"] = bench_pipeline(model, tmp / "items", len(paths), args.max_new_tokens, overrides,
                                             gauges_on=not args.no_gauges)

    print("\n== bench.pipeline ==")
    print(f"{len(paths)} items ({args.pages} pages, {args.clips} x 8 s clips), {args.max_new_tokens} new tokens each")
    for name in ("pipeline", "vllm", "hf"):
        if name in results:
            r = results[name]
            print(f"{name:9s} {r['items_per_s']:8.2f} items/s   (start-up {r['startup_s']:.1f} s, reported apart)")
    if "pipeline" in results and "vllm" in results:
        same = results["pipeline"]["output_tokens"] == results["vllm"]["output_tokens"]
        print(f"equal work: pipeline {results['pipeline']['output_tokens']} and vllm {results['vllm']['output_tokens']} "
              f"output tokens{'' if same else '  -- DIFFERENT: the ratio is not like for like'}")
    ratios = {}
    if "pipeline" in results and "vllm" in results:
        ratios["pipeline_vs_vllm"] = results["pipeline"]["items_per_s"] / results["vllm"]["items_per_s"]
    if "vllm" in results and "hf" in results:
        ratios["vllm_vs_hf"] = results["vllm"]["items_per_s"] / results["hf"]["items_per_s"]
    if "pipeline" in results and "hf" in results:
        ratios["pipeline_vs_hf"] = results["pipeline"]["items_per_s"] / results["hf"]["items_per_s"]
    for key, value in ratios.items():
        print(f"{key:17s} {value:6.2f}x")
    if "pipeline" in results:
        r = results["pipeline"]
        print(f"pipeline end to end incl. start-up and finalize: {r['end_to_end_items_per_s']:.2f} items/s")
        print(f"pipeline engine occupancy {r['occupancy']:.2f} (mean {r['mean_running']:.1f} running of "
              f"max_num_seqs {r['max_num_seqs']}, {r['mean_waiting']:.1f} waiting; {r['occupancy_samples']} "
              f"samples over {r['steady_s']:.1f} s steady state); batch {r['batch_size']} x "
              f"{r['concurrent_batches']} in flight")
        print("cores used in steady state: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cores_in_steady_state"].items()
                                                     if v >= 0.01))
        machine = r["machine_cores_in_steady_state"]
        print(f"machine in steady state ({os.cpu_count()} cores): " + ", ".join(f"{k} {v:.2f}" for k, v in machine.items()))
    results["ratios"] = ratios
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
