"""`make demo`: the main job on local sample inputs, end to end, on a local Ray instance.

    python -m jobs.demo [--model PATH] [--inputs DIR] [--output DIR]

1. writes sample inputs (rendered text pages as PNG/JPEG, a 3-page TIFF and PDF, a short and a
   70 s audio clip, one corrupt PDF) to ./samples/,
   plus the demo model's own samples (rendered text lines, spoken digit strings: `model.checkpoints.demo`),
2. uses the demo checkpoint by default (`model.checkpoints.demo.path()`: a small Gemma 4 Unified the project
   trains itself, shipped in model/checkpoints/demo_checkpoint/; pass --model for a real one),
3. runs the batch job (`jobs.pipeline.run_job`) and prints the run summary, where the tables are
   and a preview read back with pandas.

The corrupt PDF is expected to become one error row; the demo's error threshold allows it.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

TINY_MODEL = pathlib.Path(".cache/tiny-gemma4-unified")  # random weights, built on demand (bench)


def ensure_model(path: pathlib.Path | None) -> pathlib.Path:
    if path is None:
        from model.checkpoints.demo import path as demo_checkpoint

        return demo_checkpoint()
    if (path / "config.json").is_file():
        return path
    if path != TINY_MODEL:
        raise SystemExit(f"no checkpoint at {path} (config.json missing)")
    from model.checkpoints.tiny import build

    print(f"[demo] building the tiny checkpoint in {path} ...", flush=True)
    return pathlib.Path(build(path, seed=0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=pathlib.Path, default=None, help="checkpoint (default: the demo checkpoint)")
    p.add_argument("--inputs", type=pathlib.Path, default=pathlib.Path("samples"))
    p.add_argument("--output", type=pathlib.Path, default=pathlib.Path("out/demo"))
    p.add_argument("--max-new-tokens", type=int, default=32)
    args = p.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from jobs.samples import write_demo_inputs

    files = write_demo_inputs(args.inputs)
    from model.checkpoints.demo import write_samples

    files.update({name: f"demo-model sample: {text!r}" for name, text in write_samples(args.inputs).items()})
    print(f"[demo] sample inputs in {args.inputs}/:")
    for name, what in files.items():
        print(f"         {name:14s} {what}")
    model = ensure_model(args.model)

    from jobs.pipeline import run_job
    from jobs.run import print_summary
    from jobs.spec import JobSpec

    spec = JobSpec(inputs=[str(args.inputs.resolve())], output=str(args.output.resolve()), model=str(model.resolve()),
                   max_new_tokens=args.max_new_tokens, max_model_len=4096, batch_size=8,
                   error_threshold=0.25, pdf_dpi=100)
    summary = run_job(spec)
    print_summary(summary)

    import pandas as pd

    sources = pd.read_parquet(args.output / "sources")
    segments = pd.read_parquet(args.output / "segments")
    pd.set_option("display.width", 160)
    print("\n[demo] sources/ (pandas.read_parquet):")
    print(sources[["source_uri", "status", "modality", "num_segments", "output_tokens", "error"]]
          .assign(source_uri=lambda d: d.source_uri.str.rsplit("/", n=1).str[-1]).to_string(index=False))
    # What people want to see: the text the model read or heard, per source.
    print("\n[demo] text per source:")
    for row in sources.sort_values("source_uri").itertuples():
        name = row.source_uri.rsplit("/", 1)[-1]
        shown = row.text if row.status == "ok" else f"<error: {row.error}>"
        shown = " ".join(str(shown).split())
        print(f"  {name:14s} {shown[:100] + ('...' if len(shown) > 100 else '')}")
    print("\n[demo] segments/:")
    print(segments[["source_uri", "segment_index", "page", "start_s", "end_s", "output_tokens"]]
          .assign(source_uri=lambda d: d.source_uri.str.rsplit("/", n=1).str[-1]).to_string(index=False))
    if args.model is None:
        print("\n[demo] note: the demo checkpoint reads single rendered text lines (line_*.png) and spoken "
              "digit strings (digits_*.flac); whole pages and other audio are outside what it learned.")
    return 0 if summary["passed"] else 2


if __name__ == "__main__":
    sys.exit(main())
