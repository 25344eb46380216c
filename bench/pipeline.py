"""Benchmark the batch pipeline against the single-engine ceiling and a transformers loop.

    python -m bench.pipeline [--model PATH] [--pages 16] [--clips 8] [--max-new-tokens 16]

Same fixed-seed items for every contender (rendered text pages at 480x640 and 8 s audio clips):

* pipeline  `jobs.pipeline.run_job` on a local Ray instance (read -> decode -> ray.data.llm -> write,
            then finalize). Steady rate from the completion times of its engine batches; the start
            of actors and engine is reported apart.
* vllm      one `vllm.LLM.chat` call over messages decoded and built beforehand (the ceiling of one
            engine); engine start timed apart.
* hf        transformers `generate`, one item at a time (the plain loop people write first).

Greedy decoding with a fixed number of new tokens so all contenders do equal work (checked).
Prints items/s and the ratios; figures go into README.md ("Batch pipeline", Benchmark). Not a test: timings on a shared
machine are noisy, so compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import numpy as np


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
        decoded = media.decode(path.read_bytes(), path.name)
        if decoded.kind == "audio":
            conversations.append(prompts.messages_for_item("auto", "audio", audio=decoded.audio))
            decoded_items.append(("audio", decoded.audio))
        else:
            conversations.append(prompts.messages_for_item("auto", "document", image=decoded.pages[0]))
            decoded_items.append(("document", decoded.pages[0]))
    return conversations, decoded_items


def bench_pipeline(model: str, items_dir: pathlib.Path, n_items: int, max_new_tokens: int, batch_size: int) -> dict:
    """One run on a local Ray instance. Steady throughput comes from the completion times of the
    engine batches (work rows carry `written_at`, stamped as each batch leaves the engine):
    (items after the first batch) / (last completion - first completion). That excludes the start
    of the actors and the engine, which is reported apart (`startup_s`: run start to first batch)."""
    import pyarrow.parquet as pq
    import ray

    from jobs.pipeline import run_job
    from jobs.spec import JobSpec

    out = items_dir.parent / "out-pipeline"
    spec = JobSpec(inputs=[str(items_dir)], output=str(out), model=model, max_new_tokens=max_new_tokens,
                   max_model_len=4096, batch_size=batch_size, max_concurrent_batches=4, run_id="bench",
                   error_threshold=0.0)
    started = time.time()
    summary = run_job(spec)
    ray.shutdown()
    assert summary["sources"]["ok"] == n_items, summary["errors_sample"]
    # Equal work: every item generated the full budget (the tiny model never emits EOS).
    assert summary["tokens"]["output"] == n_items * max_new_tokens, summary["tokens"]
    work = pq.read_table(out / "_work" / "bench" / "segments", columns=["written_at"]).column(0).to_pylist()
    done = sorted(work)
    first_batch = sum(1 for t in done if t - done[0] < 0.05)
    span = done[-1] - done[0]
    inv = summary["this_invocation"]
    return {
        "items_per_s": (len(done) - first_batch) / span if span > 0 else float("nan"),
        "startup_s": done[0] - started,
        "stream_s": inv["stream_s"],
        "finalize_s": inv["finalize_s"],
        "end_to_end_items_per_s": n_items / (time.time() - started),
        "batches_seen": len({round(t, 2) for t in done}),
    }


def bench_vllm(model: str, conversations, max_new_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from model.engine import EngineSettings

    settings = EngineSettings(model=model, max_model_len=4096, max_images_per_prompt=1, max_audios_per_prompt=1)
    settings.apply_env()
    started = time.perf_counter()
    llm = LLM(**settings.vllm_kwargs())
    startup = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True)
    llm.chat(conversations[:2], params, chat_template_content_format="openai", use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outs = llm.chat(conversations, params, chat_template_content_format="openai", use_tqdm=False)
    elapsed = time.perf_counter() - started
    assert all(len(o.outputs[0].token_ids) == max_new_tokens for o in outs)
    llm.llm_engine.engine_core.shutdown()
    return {"items_per_s": len(conversations) / elapsed, "startup_s": startup, "elapsed_s": elapsed}


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
    p.add_argument("--pages", type=int, default=16)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--hf-items", type=int, default=8, help="items for the (slow) transformers loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4, help="pipeline rows per engine call")
    p.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "vllm", "hf"])
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = p.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from jobs.demo import ensure_model

    model = str(ensure_model(pathlib.Path(args.model)).resolve())
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    paths = make_items(tmp / "items", args.pages, args.clips, args.seed)
    conversations, decoded_items = build_conversations(paths)
    results: dict = {"items": len(paths), "pages": args.pages, "clips": args.clips,
                     "max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count()}
    if "vllm" not in args.skip:
        results["vllm"] = bench_vllm(model, conversations, args.max_new_tokens)
    if "hf" not in args.skip:
        results["hf"] = bench_hf(model, decoded_items, args.max_new_tokens, args.hf_items)
    if "pipeline" not in args.skip:
        results["pipeline"] = bench_pipeline(model, tmp / "items", len(paths), args.max_new_tokens, args.batch_size)

    print("\n== bench.pipeline ==")
    print(f"{len(paths)} items ({args.pages} pages, {args.clips} x 8 s clips), {args.max_new_tokens} new tokens each")
    for name in ("pipeline", "vllm", "hf"):
        if name in results:
            r = results[name]
            print(f"{name:9s} {r['items_per_s']:8.2f} items/s   (start-up {r['startup_s']:.1f} s, reported apart)")
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
        print(f"pipeline end to end incl. start-up and finalize: {results['pipeline']['end_to_end_items_per_s']:.2f} items/s")
    results["ratios"] = ratios
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
