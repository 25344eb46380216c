"""Command line: `python -m jobs.run --input URI [--input URI ...] --output URI --model PATH [options]`.

Exit status: 0 when the run finished and its error rate is within `--error-threshold`, 2 when it
finished with too many error rows (the tables and summary are still written), 1 on a job failure.
"""

from __future__ import annotations

import argparse
import json
import sys

from connectors.sources import ParquetColumns
from connectors.storage import StorageConfig
from jobs.spec import JobSpec

EXIT_OK, EXIT_FAILED, EXIT_TOO_MANY_ERRORS = 0, 1, 2


def _pool(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", help="YAML job spec; flags given on the command line override it")
    p.add_argument("--input", action="append", dest="inputs", metavar="URI",
                   help="s3://bucket/prefix/, s3://bucket/**.pdf, a local dir/glob, or a Parquet file (repeatable)")
    p.add_argument("--output", help="output root (local path or s3://bucket/prefix)")
    p.add_argument("--model", help="checkpoint directory (Hugging Face layout)")
    p.add_argument("--task", help="auto | markdown (= document) | text | transcribe | custom instruction text "
                                  "(auto: documents -> markdown, audio -> transcribe, or what the checkpoint declares)")
    p.add_argument("--image-tokens", type=int, choices=[70, 140, 280, 560, 1120],
                   help="soft tokens per page image (documents want 560/1120)")
    p.add_argument("--pdf-dpi", type=float, help="highest PDF render DPI (pages render at the model's size)")
    p.add_argument("--max-pages", type=int, help="page limit per PDF/TIFF (more is an error row)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--retries", type=int, metavar="N",
                   help="re-run a truncated/repetitive/invalid-JSON segment up to N times at a raised "
                        "temperature with a fixed seed, keeping the best attempt (0: flag only)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="a source whose segments are still truncated/repetitive after the retries is an "
                        "error row (default: ok, with the flags)")
    p.add_argument("--pdf-text", choices=["ignore", "anchor", "prefer"],
                   help="a PDF page's embedded text layer: ignore (default: the model reads every page), anchor "
                        "(given to the model as context), prefer (a usable layer is the page's text; the model "
                        "is skipped for it)")
    p.add_argument("--json-schema", metavar="FILE",
                   help="structured extraction: decode each page/chunk under this JSON schema (guided "
                        "decoding) and validate it; results in the `json` columns")
    p.add_argument("--chunk-seconds", type=float, dest="chunk_s")
    p.add_argument("--overlap-seconds", type=float, dest="overlap_s")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"])
    p.add_argument("--gpus-per-actor", type=float)
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--actors", type=_pool, metavar="MIN[,MAX]", help="inference actor pool size")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-concurrent-batches", type=int, help="batches in flight per inference actor")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--cpus-per-decode-task", type=float, help="CPUs reserved per decode task (1 on GPU, 0.5 on CPU)")
    p.add_argument("--seed", type=int, help="engine seed (decoding is greedy; affects nothing else)")
    p.add_argument("--error-threshold", type=float, help="max share of error rows before exit 2")
    p.add_argument("--run-id")
    p.add_argument("--run-date", help="YYYY-MM-DD output partition (default: today, UTC)")
    p.add_argument("--bytes-column")
    p.add_argument("--uri-column")
    p.add_argument("--id-column")
    p.add_argument("--prompt-column")
    p.add_argument("--schema-column", help="Parquet column with a per-row JSON schema (auto: json_schema)")
    p.add_argument("--s3-endpoint", help="overrides AWS_ENDPOINT_URL / the profile's endpoint_url")
    return p


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    data: dict = {}
    if args.spec:
        data = JobSpec.yaml_dict(args.spec)  # raw: derived defaults (run id) follow the merged spec
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "spec"}
    if "actors" in flags:
        flags["actors_min"], flags["actors_max"] = flags.pop("actors")
    columns = {k: flags.pop(k) for k in ("bytes_column", "uri_column", "id_column", "prompt_column", "schema_column")
               if k in flags}
    if columns:
        data["parquet"] = {**(data.get("parquet") or {}), **columns}
    if "s3_endpoint" in flags:
        data["storage"] = {**(data.get("storage") or {}), "endpoint_url": flags.pop("s3_endpoint")}
    data.update(flags)
    missing = [k for k in ("inputs", "output", "model") if not data.get(k)]
    if missing:
        raise SystemExit(f"missing required settings: {', '.join('--' + m.rstrip('s') for m in missing)}")
    if isinstance(data.get("parquet"), dict):
        data["parquet"] = ParquetColumns(**data["parquet"])
    if isinstance(data.get("storage"), dict):
        data["storage"] = StorageConfig(**data["storage"])
    return JobSpec.from_dict(data)


def print_summary(summary: dict) -> None:
    s = summary
    inv = s["this_invocation"]
    print(f"\n== run {s['run_id']} ({s['run_date']}) ==")
    print(f"sources: {s['sources']['total']} ({s['sources']['ok']} ok, {s['sources']['error']} error)  "
          f"by modality: {json.dumps(s['sources']['by_modality'])}")
    print(f"pages: {s['pages']}  audio: {s['audio_seconds']:.1f} s  segments: {s['segments']}  "
          f"tokens in/out: {s['tokens']['input']}/{s['tokens']['output']}")
    print(f"this invocation: {inv['sources_processed']} sources processed, {inv['sources_skipped_as_done']} "
          f"already done, {inv['segments_inferred']} segments inferred, {inv['items_per_s']} items/s")
    q = s.get("quality") or {}
    if q.get("flags"):
        flags = ", ".join(f"{name} {c['segments']} ({c['sources']} sources)" for name, c in q["flags"].items())
        print(f"output checks: {flags}; text from {json.dumps(q.get('text_source', {}))}; "
              f"retried {q.get('segments_retried', 0)} segments, {q.get('segments_recovered_by_retry', 0)} now clean")
    for err in s["errors_sample"][:10]:
        print(f"  error: {err['source_uri']}: {err['error']}")
    print(f"error rate {s['error_rate']:.3f} (threshold {s['error_threshold']}): "
          f"{'PASSED' if s['passed'] else 'FAILED'}")
    print(f"tables:  {s['tables']['sources']}\n         {s['tables']['segments']}")
    print(f"summary: {s['summary_path']}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    spec = spec_from_args(args)
    from jobs.pipeline import run_job

    summary = run_job(spec)
    print_summary(summary)
    return EXIT_OK if summary["passed"] else EXIT_TOO_MANY_ERRORS


if __name__ == "__main__":
    sys.exit(main())
