"""Benchmark the batch pipeline against the single-engine ceiling and a transformers loop.

    python -m bench.pipeline [--model PATH] [--pages 16] [--clips 8] [--max-new-tokens 16]

Same fixed-seed items for every contender (rendered text pages at 480x640 and 8 s audio clips):

* pipeline  `jobs.pipeline.run_job` on a local Ray instance (read -> decode -> ray.data.llm -> write,
            then finalize). Its engine start is separated with two runs of different sizes: the
            steady rate is (N2 - N1) / (T2 - T1), which cancels the fixed start-up cost.
* vllm      one `vllm.LLM.chat` call over messages decoded and built beforehand (the ceiling of one
            engine); engine start timed apart.
* hf        transformers `generate`, one item at a time (the plain loop people write first).

Greedy decoding with a fixed number of new tokens so all contenders do equal work (checked).
Prints items/s and the ratios; figures go into docs/batch.md. Not a test: timings on a shared
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
    from model import media, prompts

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


def bench_pipeline(model: str, items_dir: pathlib.Path, n_small: int, all_paths, max_new_tokens: int) -> dict:
    """Two runs (a prefix of the items, then all of them) in one local Ray instance."""
    import ray

    from jobs.pipeline import run_job
    from jobs.spec import JobSpec

    small_dir = items_dir.parent / "small"
    small_dir.mkdir(exist_ok=True)
    for path in all_paths[:n_small]:
        (small_dir / path.name).write_bytes(path.read_bytes())
    times = {}
    for label, inputs in (("small", small_dir), ("full", items_dir)):
        out = items_dir.parent / f"out-{label}"
        spec = JobSpec(inputs=[str(inputs)], output=str(out), model=model, max_new_tokens=max_new_tokens,
                       max_model_len=4096, batch_size=16, max_concurrent_batches=4, run_id=f"bench-{label}",
                       error_threshold=0.0)
        summary = run_job(spec)
        n = len(list(inputs.iterdir()))
        assert summary["sources"]["ok"] == n, summary["errors_sample"]
        # Equal work: every item generated the full budget (the tiny model never emits EOS).
        assert summary["tokens"]["output"] == n * max_new_tokens, summary["tokens"]
        times[label] = summary["this_invocation"]["stream_s"]
        times[f"{label}_finalize_s"] = summary["this_invocation"]["finalize_s"]
    ray.shutdown()
    n_full = len(all_paths)
    steady = (n_full - n_small) / (times["full"] - times["small"])
    startup = times["full"] - n_full / steady
    return {"items_per_s": steady, "startup_s": startup, "stream_s_full": times["full"],
            "stream_s_small": times["small"], "finalize_s": times["full_finalize_s"],
            "end_to_end_items_per_s": n_full / (times["full"] + times["full_finalize_s"])}


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

    from model import prompts

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
        results["pipeline"] = bench_pipeline(model, tmp / "items", max(4, len(paths) // 3), paths, args.max_new_tokens)

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
