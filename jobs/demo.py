"""`make demo`: the main job on local sample inputs, end to end, on a local Ray instance.

    python -m jobs.demo [--model PATH] [--inputs DIR] [--output DIR] [--verbose]

1. writes the sample inputs to ./samples/: documents made of what the demo checkpoint reads (a JPEG
   line, a 3-page PDF and a 3-page TIFF with one line per page), spoken digit strings (a WAV clip and a
   74 s recording the job cuts at its pauses and stitches back), the demo model's own samples, and
   one corrupt PDF (`jobs.samples.write_demo_inputs`),
2. uses the demo checkpoint by default (`model.checkpoints.demo.path()`: a small Gemma 4 Unified the project
   trains itself, shipped in model/checkpoints/demo_checkpoint/; pass --model for a real one),
3. runs the batch job (`jobs.run.execute`: progress line, Ray's and vLLM's logs in a log file, the run
   summary) and prints, per input, the text it holds beside the text the model read, then the segments
   (pages and audio chunks) read back with pandas.

The corrupt PDF is expected to become one error row; the demo's error threshold allows it. Exit codes
are jobs.run's (jobs/exit_codes.py).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from jobs.exit_codes import TABLE as EXIT_TABLE
from jobs.exit_codes import ConfigError, ExitCode

TINY_MODEL = pathlib.Path(".cache/tiny-gemma4-unified")  # random weights, built on demand (bench)


def check_model(path: pathlib.Path | None) -> None:
    """--model names a checkpoint (or the tiny one, built on demand); else a configuration error (exit 2)."""
    if path is not None and path != TINY_MODEL and not (path / "config.json").is_file():
        raise ConfigError(f"no checkpoint at {path} (config.json missing)")


def ensure_model(path: pathlib.Path | None) -> pathlib.Path:
    check_model(path)
    if path is None:
        from model.checkpoints.demo import path as demo_checkpoint

        return demo_checkpoint()
    if (path / "config.json").is_file():
        return path
    from model.checkpoints.tiny import build

    print(f"[demo] building the tiny checkpoint in {path} ...", flush=True)
    return pathlib.Path(build(path, seed=0))


def _one_line(text: str | None, width: int) -> str:
    shown = " / ".join(part.strip() for part in str(text).split("\n\n")) if text is not None else "-"
    shown = " ".join(shown.split())
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__, epilog="exit status:\n" + EXIT_TABLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=pathlib.Path, default=None, help="checkpoint (default: the demo checkpoint)")
    p.add_argument("--inputs", type=pathlib.Path, default=pathlib.Path("samples"))
    p.add_argument("--output", type=pathlib.Path, default=pathlib.Path("out/demo"))
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--verbose", action="store_true", help="show Ray's and vLLM's logs here instead of in the log file")
    p.add_argument("--log-file", type=pathlib.Path, help="where Ray's and vLLM's logs go")
    args = p.parse_args(argv)
    try:
        check_model(args.model)  # before the samples are written and Ray starts: nothing is run
    except ConfigError as exc:
        print(f"python -m jobs.demo: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from jobs.samples import DEMO_PDF_DPI, write_demo_inputs

    files = write_demo_inputs(args.inputs)
    print(f"[demo] sample inputs in {args.inputs}/ (what each holds):")
    for name, (what, text) in files.items():
        print(f"         {name:15s} {what:42s} {_one_line(text, 60)}")
    model = ensure_model(args.model)

    from jobs.run import execute
    from jobs.spec import JobSpec

    # The files just written, not the directory: whatever else lies in it is not part of the demo.
    inputs = [str((args.inputs / name).resolve()) for name in files]
    spec = JobSpec(inputs=inputs, engine={"model": str(model.resolve()), "max_model_len": 4096},
                   output={"uri": str(args.output.resolve()), "max_new_tokens": args.max_new_tokens},
                   pages={"pdf_dpi": DEMO_PDF_DPI}, run={"batch_size": 8, "error_threshold": 0.25}).resolve()
    expected = {name: text for name, (_, text) in files.items()} if args.model is None else {}
    return execute(spec, verbose=args.verbose, log_file=args.log_file, kind="jobs-demo",
                   after=lambda summary, out: show_tables(summary, expected, out))


def show_tables(summary: dict, expected: dict[str, str | None], out) -> None:
    """Per input: the text it holds beside what the model read; then the segments. `expected` is empty
    for a checkpoint other than the demo's (nothing to compare with)."""
    import pyarrow.dataset as ds

    from connectors.storage import resolve

    def table(uri: str):
        fs, path = resolve(uri)
        rows = ds.dataset(path, filesystem=fs, format="parquet").to_table()
        return rows.filter(ds.field("run_id") == summary["run_id"]).to_pandas()

    sources = table(summary["tables"]["sources"]).assign(name=lambda d: d.source_uri.str.rsplit("/", n=1).str[-1])
    segments = table(summary["tables"]["segments"]).assign(name=lambda d: d.source_uri.str.rsplit("/", n=1).str[-1])
    print("\n[demo] text per source (sources/, read back with pyarrow):", file=out)
    exact = 0
    for row in sources.sort_values("name").itertuples():
        read = row.text if row.status == "ok" else f"<error: {row.error}>"
        if not expected:
            print(f"  {row.name:15s} {_one_line(read, 110)}", file=out)
            continue
        want = expected.get(row.name)
        match = (row.status == "ok" and read == want) or (want is None and row.status != "ok")
        exact += match
        print(f"  {row.name:15s} {'ok' if match else 'DIFF':4s} {row.num_segments:2d} seg  "
              f"read:  {_one_line(read, 56)}", file=out)
        if not match:
            print(f"  {'':15s} {'':4s}         holds: {_one_line(want, 56)}", file=out)
    if expected:
        print(f"[demo] {exact} of {len(sources)} sources read exactly as expected (the corrupt PDF: its error row)",
              file=out)
    print("\n[demo] segments/ (one row per page or audio chunk):", file=out)
    columns = ["name", "segment_index", "page", "start_s", "end_s", "output_tokens", "text"]
    view = segments.sort_values(["name", "segment_index"])[columns].assign(text=lambda d: d.text.map(lambda t: _one_line(t, 40)))
    print(view.to_string(index=False), file=out)


if __name__ == "__main__":
    sys.exit(main())
