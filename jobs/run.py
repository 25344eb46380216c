"""Command line: `python -m jobs.run --input URI [--input URI ...] --output URI --model PATH [options]`.

The console shows one progress line (a heartbeat line every 30 s when not a terminal), then the run
summary; Ray's and vLLM's logs go to the log file named at the start (`--verbose` shows them instead).

Exit status: one code per outcome (jobs/exit_codes.py; the table ends `--help`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import traceback

from connectors.sources import ParquetColumns
from connectors.storage import StorageConfig
from jobs import console
from jobs.exit_codes import TABLE as EXIT_TABLE
from jobs.exit_codes import ConfigError, ExitCode, for_summary
from jobs.spec import JobSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS = (
    ExitCode.OK, ExitCode.JOB_FAILED, ExitCode.USAGE, ExitCode.THRESHOLD_EXCEEDED)


def _pool(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__, epilog="exit status:\n" + EXIT_TABLE,
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
    p.add_argument("--segmentation", choices=["vad", "fixed"],
                   help="long audio: vad (cut at pauses, send only speech; default) or fixed windows")
    p.add_argument("--pack", choices=["window", "utterance"],
                   help="speech per model call: up to the window, or one utterance (default: the checkpoint's)")
    p.add_argument("--chunk-seconds", type=float, dest="chunk_s",
                   help="longest audio chunk (default and maximum: the checkpoint's audio window)")
    p.add_argument("--overlap-seconds", type=float, dest="overlap_s", help="overlap of fixed windows")
    p.add_argument("--subtitles", choices=["srt", "vtt"], help="also write a subtitle file per recording")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"])
    p.add_argument("--gpus-per-actor", type=float)
    p.add_argument("--tensor-parallel-size", type=int)
    p.add_argument("--actors", type=_pool, metavar="MIN[,MAX]", help="inference actor pool size")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-concurrent-batches", type=int,
                   help="batches in flight per inference actor (default: enough to cover max_num_seqs)")
    p.add_argument("--max-num-seqs", type=int,
                   help="running sequences per engine (default: vLLM's for the GPU; 64 on CPU)")
    p.add_argument("--max-num-batched-tokens", type=int, help="tokens per engine step (default: vLLM's)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--cpus-per-decode-task", type=float, help="CPUs reserved per decode task (1 on GPU, 0.5 on CPU)")
    p.add_argument("--seed", type=int, help="engine seed (decoding is greedy; affects nothing else)")
    p.add_argument("--error-threshold", type=float, help="max share of error rows before exit 3")
    p.add_argument("--max-attempts", type=int,
                   help="attempts of the stream from the work area after a lost node or a stalled engine (default 3)")
    p.add_argument("--stall-timeout", type=float, dest="stall_timeout_s", metavar="SECONDS",
                   help="no progress anywhere in the pipeline for this long = the engine stalled (default 900)")
    p.add_argument("--run-id")
    p.add_argument("--run-date", help="YYYY-MM-DD output partition (default: today, UTC)")
    p.add_argument("--bytes-column")
    p.add_argument("--uri-column")
    p.add_argument("--id-column")
    p.add_argument("--prompt-column")
    p.add_argument("--schema-column", help="Parquet column with a per-row JSON schema (auto: json_schema)")
    p.add_argument("--s3-endpoint", help="overrides AWS_ENDPOINT_URL / the profile's endpoint_url")
    out = p.add_argument_group("console (not job settings)")
    out.add_argument("--verbose", action="store_true", help="show Ray's and vLLM's logs here instead of in the log file")
    out.add_argument("--log-file", type=pathlib.Path,
                     help="where Ray's and vLLM's logs go (default: $G4U_LOG_DIR or /tmp/ray/g4u-logs/)")
    return p


CONSOLE_FLAGS = ("verbose", "log_file")  # console options, not job settings


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    data: dict = {}
    if args.spec:
        data = JobSpec.yaml_dict(args.spec)  # raw: derived defaults (run id) follow the merged spec
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "spec" and k not in CONSOLE_FLAGS}
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
        raise ConfigError(f"missing required settings: {', '.join('--' + m.rstrip('s') for m in missing)}")
    if isinstance(data.get("parquet"), dict):
        data["parquet"] = ParquetColumns(**data["parquet"])
    if isinstance(data.get("storage"), dict):
        data["storage"] = StorageConfig(**data["storage"])
    return JobSpec.from_dict(data)


def print_summary(summary: dict, file=None) -> None:
    for line in console.summary_lines(summary):
        print(line, file=file or sys.stdout)


def interrupted_line(spec: JobSpec) -> str:
    """What an interrupted run tells the person who pressed Ctrl-C: what is kept and how to go on."""
    return (f"[jobs] interrupted: the work area {spec.output.rstrip('/')}/_work/{spec.run_id}/ is kept; re-running "
            f"the same command resumes the run where it stopped (on another day add --run-id {spec.run_id} "
            f"--run-date {spec.run_date})")


def execute(spec: JobSpec, *, verbose: bool = False, log_file: pathlib.Path | None = None, kind: str = "jobs-run",
            after=None) -> int:
    """Run `spec` with the console (progress line, log file, summary); return the exit code.
    `after(summary, out)` prints more after the summary (the demo's table). Ctrl-C: one line saying
    what is kept, exit 130; where Ray Data was interrupted goes to the log file only."""
    import ray

    from jobs.pipeline import run_job

    owns_ray = not ray.is_initialized()  # shut down only a Ray instance this run started
    with console.Console(log_file or console.default_log_path(kind, spec.run_id), verbose=verbose) as con:
        try:
            try:
                summary = run_job(spec, progress=con.progress)
            finally:
                if owns_ray and ray.is_initialized():
                    ray.shutdown()  # inside the log redirection: Ray's shutdown chatter goes to the log file
        except ConfigError as exc:
            con.failure(exc, "configuration error")
            return ExitCode.USAGE
        except KeyboardInterrupt as exc:  # also a second Ctrl-C during Ray's shutdown
            if not verbose:
                con.log.write("".join(traceback.format_exception(exc)))  # where it stopped, for diagnosis
            con.say(interrupted_line(spec))
            return ExitCode.INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - any other failure: the run did not finish
            con.failure(exc)
            return ExitCode.JOB_FAILED
        con.summary(summary)
        if after is not None:
            after(summary, con.out)
        return for_summary(summary)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # a usage error exits 2 (argparse)
    try:
        spec = spec_from_args(args)
    except (ConfigError, ValueError, TypeError, OSError) as exc:  # bad values, unreadable --spec file
        print(f"python -m jobs.run: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return execute(spec, verbose=args.verbose, log_file=args.log_file)


if __name__ == "__main__":
    sys.exit(main())
