"""Benchmark the engine's front end: CPU-seconds per page in the process that owns vLLM's engine.

    python -m bench.frontend [--model PATH] [--pages 16] [--rounds 3] [--budgets 280 1120]
                             [--mm-tensor-ipc direct_rpc|torch_shm] [--json out.json]

One real vLLM engine (`vllm.LLM`: this process is the front end, the engine core its own process,
the tiny checkpoint on the CPU build unless `--model` names another). Its front end does, per
request, what `LLMEngine.add_request` / `AsyncLLM.add_request` do: tokenise the prompt, run the
model's multimodal processor, hash the items for vLLM's caches (unless the request names them),
build the `EngineCoreRequest`, serialise it and send it to the engine core over ZeroMQ. Pages are A4
scans at 300 dpi (jobs.samples.scan_page, 2480x3508 JPEG) prepared by `model.inputs.pages` for each
budget (1344x1872 at 1120 soft tokens, 672x936 at 280). Every request carries different pixels, so
no cache serves any of them. Two paths over the same pages, measured alternately in one run:

* `today`  the page as the batch job ships it before this bench's change: the encoded PIL page
           (`PreparedPage.image`, zstd raw pixels, decoded when vLLM reads it) with
           `do_resize=False`; the front end runs the reference image processor (float32 patches,
           padded to the budget), hashes the image and sends the float32 tensor.
* `pixels` `model.inputs.page_pixels`: the uint8 pixels at the model size with their content id
           (made beforehand, as the decode task makes them); the front end counts placeholders
           and sends the uint8 array.

Measured: `time.process_time()` of this process (every thread: the caller, vLLM's output thread,
ZeroMQ's I/O thread) around (a) adding a block of `--pages` requests up to the engine core's answer
to a utility call queued behind them (so every byte has left this process), and (b) the whole life
of the block, from the first add to the last output (max_tokens=1). Per page, and the pages/s one
front-end core sustains at that cost. The greedy token of each page is compared between the paths.

Figures go into docs/benchmarks.md ("Engine front end").
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import statistics
import tempfile
import time

import numpy as np

PATHS = ("today", "pixels")


def prepared_scan(budget: int, seed: int):
    from jobs import samples
    from model.inputs import pages

    page = next(iter(pages.open_pages(samples.scan_page(300, seed=seed), "scan.jpg", pages.PageGeometry(budget))))
    assert page.form == "resized", page.form
    return page


def variants(page, count: int, start: int) -> list[np.ndarray]:
    """`count` different pages: the scan with one pixel changed per page (every hash differs)."""
    base = np.asarray(page.image)
    out = []
    for i in range(start, start + count):
        pixels = base.copy()
        pixels.reshape(-1)[i % pixels.size] ^= 0x55
        out.append(pixels)
    return out


def requests(path: str, pixels: list[np.ndarray], budget: int, prompt: str) -> list[dict]:
    """The engine inputs of one block, built before timing (the decode task's share)."""
    from model.inputs import page_pixels, pages

    if path == "pixels":
        return [page_pixels.engine_prompt(prompt, page_pixels.PagePixels.from_array(p, budget)) for p in pixels]
    # Pickled and unpickled as at a stage boundary: each page arrives encoded, decoded by vLLM.
    return [{"prompt": prompt,
             "multi_modal_data": {"image": pickle.loads(pickle.dumps(pages.EncodedImage.from_pixels(p)))},
             "mm_processor_kwargs": {"max_soft_tokens": budget, "do_resize": False}} for p in pixels]


def run_block(llm, reqs: list[dict], tag: str) -> tuple[float, float, list[int]]:
    """(add CPU-s, whole-life CPU-s, greedy token per page) for one block of requests."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    params = SamplingParams(max_tokens=1, temperature=0.0)
    ids = [f"{tag}-{i}" for i in range(len(reqs))]
    start = time.process_time()
    for rid, req in zip(ids, reqs, strict=True):
        engine.add_request(rid, req, params)
    engine.engine_core.is_sleeping()  # answered after the adds queued before it were read
    added = time.process_time()
    tokens: dict[str, int] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                tokens[out.request_id] = out.outputs[0].token_ids[0]
    done = time.process_time()
    return added - start, done - start, [tokens[rid] for rid in ids]


def bytes_to_engine_core(llm, req: dict) -> int:
    """Tensor bytes of one request's multimodal items (a separate input processor, nothing sent)."""
    from vllm import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    front_end = InputProcessor(llm.llm_engine.vllm_config)
    out = front_end.process_inputs("size", req, SamplingParams(max_tokens=1), ("generate",))
    return sum(int(elem.data.nbytes) for f in out.mm_features for elem in f.data.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the tiny checkpoint, built here)")
    parser.add_argument("--pages", type=int, default=16, help="pages per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per path and budget")
    parser.add_argument("--budgets", type=int, nargs="+", default=[280, 1120])
    parser.add_argument("--mm-tensor-ipc", choices=["direct_rpc", "torch_shm"], default=None,
                        help="vLLM's transport of multimodal tensors to the engine core (default: vLLM's, direct_rpc)")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from model.engine import EngineConfig
    from tests.engines import running_engine

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from model.checkpoints.tiny import build

            model = str(build(pathlib.Path(tmp) / "tiny", seed=0))
        tokenizer = AutoTokenizer.from_pretrained(model)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read the page."}]}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        settings = EngineConfig(model=model, device="cpu", max_model_len=4096, max_images_per_prompt=1,
                                  max_audios_per_prompt=1)
        results: dict = {"model": model, "pages_per_block": args.pages, "rounds": args.rounds, "budgets": {}}
        extra = {"mm_tensor_ipc": args.mm_tensor_ipc} if args.mm_tensor_ipc else {}
        results["mm_tensor_ipc"] = args.mm_tensor_ipc or "direct_rpc"
        with running_engine(settings, **extra) as llm:
            for budget in args.budgets:
                page = prepared_scan(budget, seed=budget)
                warm = variants(page, 2, 10**6)
                for path in PATHS:  # warm-up: first-use imports, allocator, processor construction
                    run_block(llm, requests(path, warm, budget, prompt), f"warm-{path}-{budget}")
                add = {p: [] for p in PATHS}
                whole = {p: [] for p in PATHS}
                same = True
                for r in range(args.rounds):
                    pixels = variants(page, args.pages, r * args.pages)
                    order = PATHS if r % 2 == 0 else PATHS[::-1]
                    tokens = {}
                    for path in order:
                        a, w, tokens[path] = run_block(llm, requests(path, pixels, budget, prompt), f"{path}-{budget}-{r}")
                        add[path].append(a / args.pages)
                        whole[path].append(w / args.pages)
                    same &= tokens["today"] == tokens["pixels"]
                sizes = {p: bytes_to_engine_core(llm, requests(p, variants(page, 1, 10**7), budget, prompt)[0])
                         for p in PATHS}
                row = {
                    "page": f"{page.width}x{page.height}",
                    "soft_tokens": (page.width // 48) * (page.height // 48),
                    "add_ms": {p: 1000 * statistics.median(add[p]) for p in PATHS},
                    "whole_ms": {p: 1000 * statistics.median(whole[p]) for p in PATHS},
                    "add_ms_all": {p: [round(1000 * x, 2) for x in add[p]] for p in PATHS},
                    "bytes_to_engine_core": sizes,
                    "same_tokens": same,
                }
                row["pages_per_s"] = {p: 1000 / row["whole_ms"][p] for p in PATHS}
                row["ratio_whole"] = row["whole_ms"]["today"] / row["whole_ms"]["pixels"]
                row["ratio_add"] = row["add_ms"]["today"] / row["add_ms"]["pixels"]
                results["budgets"][budget] = row
                print(f"budget {budget} ({row['page']}, {row['soft_tokens']} soft tokens): "
                      f"front-end CPU ms/page add {row['add_ms']['today']:.2f} -> {row['add_ms']['pixels']:.2f} "
                      f"({row['ratio_add']:.1f}x), whole {row['whole_ms']['today']:.2f} -> "
                      f"{row['whole_ms']['pixels']:.2f} ({row['ratio_whole']:.1f}x); pages/s per front-end core "
                      f"{row['pages_per_s']['today']:.0f} -> {row['pages_per_s']['pixels']:.0f}; bytes to the "
                      f"engine core {sizes['today'] / 1e6:.1f} MB -> {sizes['pixels'] / 1e6:.1f} MB; "
                      f"same greedy tokens: {same}", flush=True)
        zstd = zstd_decode_ms(page)
        results["zstd_decode"] = {"page": f"{page.width}x{page.height}", "ms": zstd}
        print(f"(for comparison: decoding a zstd-compressed page of {page.width}x{page.height} in the front end "
              f"would cost {zstd:.2f} CPU-ms per page)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def zstd_decode_ms(page, repeats: int = 20) -> float:
    """CPU-ms to turn a page shipped zstd-compressed (pages.EncodedImage) into its pixel array."""
    blob = pickle.dumps(page.image)
    start = time.process_time()
    for _ in range(repeats):
        np.asarray(pickle.loads(blob))
    return 1000 * (time.process_time() - start) / repeats


if __name__ == "__main__":
    main()
