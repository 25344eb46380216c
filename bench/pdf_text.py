"""Benchmark the PDF text layer: pages/s on a mixed corpus with `--pdf-text prefer` against `ignore`.

    python -m bench.pdf_text [--model PATH] [--digital 12] [--scanned 12] [--pages-per-pdf 4]
                             [--max-new-tokens 64]

One corpus, fixed seed: born-digital PDFs (Helvetica text pages, a real text layer, made by
`jobs.samples.text_pdf`) and scanned PDFs (the same kind of pages as images only, `samples.pdf_doc`).
Two runs of `jobs.pipeline.run_job` on the same local Ray instance, `ignore` first (the baseline: the
model reads every page) then `prefer` (a usable layer is the page's text; the model reads the scans).

Figures per run: end-to-end pages/s (stream, one engine start included), steady pages/s from the
completion times of the work rows (after the first batch: excludes the engine start), and how many
pages the model read. Also the cost of reading a page's text layer against rendering it
(`model.inputs.pdf_text` vs `model.inputs.pages`: rendering at the model's size, kept encoded).

The tiny checkpoint makes the model's share of a page small, so the ratio here is mostly the
rendering, encoding and engine traffic `prefer` saves; with a 12B model on a GPU (about 1-3 s of
generation per dense page) the ratio approaches pages / scanned pages. Not a test: compare the
ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np

from bench import local
from model.inputs.pages import SUPPORTED_SOFT_TOKENS


def make_corpus(directory: pathlib.Path, digital: int, scanned: int, pages_per_pdf: int, seed: int) -> int:
    from jobs import samples

    rng = np.random.default_rng(seed)
    words = " ".join(samples.SAMPLE_TEXTS + [line for page in samples.BORN_DIGITAL_PAGES for line in page]).split()
    directory.mkdir(parents=True, exist_ok=True)

    def page_lines() -> list[str]:
        return [" ".join(rng.choice(words, size=9)) for _ in range(int(rng.integers(8, 20)))]

    for i in range(digital):
        pages = [page_lines() for _ in range(pages_per_pdf)]
        (directory / f"digital{i:03d}.pdf").write_bytes(samples.text_pdf(pages))
    for i in range(scanned):
        texts = [" ".join(rng.choice(words, size=40)) for _ in range(pages_per_pdf)]
        (directory / f"scanned{i:03d}.pdf").write_bytes(samples.pdf_doc(texts))
    return (digital + scanned) * pages_per_pdf


def per_page_costs(directory: pathlib.Path, model: str, image_tokens: int, dpi: float) -> dict:
    """ms per page: reading the text layer (text page + object walk + verdict) vs preparing the page
    for the model (`model.inputs.pages`: rendering at the model's size, kept encoded), on one
    born-digital PDF of the corpus."""
    from model.engine import EngineConfig
    from model.inputs import media, pages, pdf_text

    data = sorted(directory.glob("digital*.pdf"))[0].read_bytes()
    geometry = EngineConfig(model=model, image_tokens=image_tokens).page_geometry()
    limits = media.MediaLimits(pdf_dpi=dpi)
    layer_s, prepare_s = [], []
    for _ in range(3):
        started = time.perf_counter()
        layers = list(pdf_text.text_layers(data))
        layer_s.append((time.perf_counter() - started) / len(layers))
        started = time.perf_counter()
        prepared = list(pages.open_pages(data, "digital.pdf", geometry, limits))
        prepare_s.append((time.perf_counter() - started) / len(prepared))
    return {"text_layer_ms": round(1000 * min(layer_s), 2), "prepare_page_ms": round(1000 * min(prepare_s), 2)}


def run(model: str, corpus: pathlib.Path, out: pathlib.Path, mode: str, pages: int, args) -> dict:
    import pyarrow.parquet as pq

    from jobs.pipeline import run_job
    from jobs.spec import JobSpec

    spec = JobSpec(inputs=[str(corpus)], engine={"model": model, "max_model_len": 4096, "image_tokens": args.image_tokens},
                   output={"uri": str(out / mode), "max_new_tokens": args.max_new_tokens},
                   pages={"pdf_dpi": args.dpi, "pdf_text": mode},
                   run={"batch_size": args.batch_size, "run_id": f"bench-{mode}", "error_threshold": 0.0})
    started = time.time()
    summary = run_job(spec)
    wall = time.time() - started
    assert summary["sources"]["ok"] == summary["sources"]["total"], summary["errors_sample"]
    assert summary["pages"] == pages, summary["pages"]
    done = sorted(pq.read_table(out / mode / "_work" / f"bench-{mode}" / "segments",
                                columns=["written_at"]).column(0).to_pylist())
    first_batch = sum(1 for t in done if t - done[0] < 0.05)
    span = done[-1] - done[0]
    inv = summary["this_invocation"]
    model_pages = summary["quality"]["text_source"].get("model", 0)
    return {
        "pages": pages,
        "model_pages": model_pages,
        "pdf_text_pages": summary["quality"]["text_source"].get("pdf_text", 0),
        "text_layer": summary["quality"]["text_layer"],
        "stream_s": inv["stream_s"],
        "pages_per_s": round(pages / inv["stream_s"], 3),
        "steady_pages_per_s": round((len(done) - first_batch) / span, 3) if span > 0 else None,
        "startup_s": round(done[0] - started, 2),  # run start to the first finished batch (engine start)
        "wall_s": round(wall, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.pdf_text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=".cache/tiny-gemma4-unified")
    p.add_argument("--digital", type=int, default=12, help="born-digital PDFs")
    p.add_argument("--scanned", type=int, default=12, help="scanned (image-only) PDFs")
    p.add_argument("--pages-per-pdf", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dpi", type=float, default=300.0, help="PDF render cap (pages render at the model's size)")
    p.add_argument("--image-tokens", type=int, default=1120, choices=SUPPORTED_SOFT_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = p.parse_args()

    model, tmp = local.prepare(args.model, prefix="bench-pdf-text-")
    pages = make_corpus(tmp / "corpus", args.digital, args.scanned, args.pages_per_pdf, args.seed)
    results: dict = {"pages": pages, "digital_pdfs": args.digital, "scanned_pdfs": args.scanned,
                     "pages_per_pdf": args.pages_per_pdf, "max_new_tokens": args.max_new_tokens, "dpi": args.dpi,
                     "image_tokens": args.image_tokens, "cpus": os.cpu_count(),
                     "per_page": per_page_costs(tmp / "corpus", model, args.image_tokens, args.dpi)}
    for mode in ("ignore", "prefer"):
        results[mode] = run(model, tmp / "corpus", tmp / "out", mode, pages, args)
    import ray

    ray.shutdown()
    results["ratio_prefer_vs_ignore"] = round(results["prefer"]["pages_per_s"] / results["ignore"]["pages_per_s"], 2)
    if results["prefer"]["steady_pages_per_s"] and results["ignore"]["steady_pages_per_s"]:
        results["steady_ratio_prefer_vs_ignore"] = round(
            results["prefer"]["steady_pages_per_s"] / results["ignore"]["steady_pages_per_s"], 2)
    print("\n== bench.pdf_text ==")
    print(f"{pages} pages: {args.digital} born-digital + {args.scanned} scanned PDFs x {args.pages_per_pdf} pages, "
          f"{args.max_new_tokens} new tokens per model page")
    for mode in ("ignore", "prefer"):
        r = results[mode]
        print(f"{mode:7s} {r['pages_per_s']:7.2f} pages/s end to end ({r['stream_s']:.1f} s stream, of which "
              f"{r['startup_s']:.1f} s to the first batch), steady {r['steady_pages_per_s']} pages/s; "
              f"model read {r['model_pages']} pages")
    print(f"prefer vs ignore: {results['ratio_prefer_vs_ignore']}x end to end, "
          f"{results.get('steady_ratio_prefer_vs_ignore')}x steady")
    print(f"per page: text layer {results['per_page']['text_layer_ms']} ms, "
          f"page prepared for the model {results['per_page']['prepare_page_ms']} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
