"""Command line: `python -m jobs.run --input URI [--input URI ...] --output URI --model PATH [options]`.

The console shows one progress line (a heartbeat line every 30 s when not a terminal), then the run
summary; Ray's and vLLM's logs go to the log file named at the start (`--verbose` shows them instead).

Exit status: one code per outcome (jobs/exit_codes.py; the table ends `--help`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import traceback

from pydantic import ValidationError

from jobs import console
from jobs.exit_codes import TABLE as EXIT_TABLE
from jobs.exit_codes import ConfigError, ExitCode, for_summary
from jobs.spec import JobSpec
from model.config import add_arguments, describe_error, given_values, merge
from model.logfile import default_log_path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS = (
    ExitCode.OK, ExitCode.JOB_FAILED, ExitCode.USAGE, ExitCode.THRESHOLD_EXCEEDED)


def parser() -> argparse.ArgumentParser:
    """The options: one per JobSpec field, grouped by section (model/config.py makes them)."""
    p = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__, epilog="exit status:\n" + EXIT_TABLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", metavar="FILE|JSON",
                   help="the job spec: a YAML file, or inline JSON (what jobs.submit sends); options override it")
    add_arguments(p, JobSpec, title="input")
    out = p.add_argument_group("console (not job settings)")
    out.add_argument("--verbose", action="store_true", help="show Ray's and vLLM's logs here instead of in the log file")
    out.add_argument("--log-file", type=pathlib.Path,
                     help="where Ray's and vLLM's logs go (default: $G4U_LOG_DIR or /tmp/ray/g4u-logs/)")
    return p


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The spec the options describe (over `--spec`), validated; not yet resolved (JobSpec.resolve)."""
    data: dict = {}
    if args.spec:
        data = json.loads(args.spec) if args.spec.lstrip().startswith("{") else JobSpec.yaml_dict(args.spec)
    data = merge(data, given_values(args, JobSpec))
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc, JobSpec)) from None


def interrupted_line(spec: JobSpec) -> str:
    """What an interrupted run tells the person who pressed Ctrl-C: what is kept and how to go on."""
    run = spec.run
    return (f"[jobs] interrupted: the work area {spec.output.uri.rstrip('/')}/_work/{run.run_id}/ is kept; re-running "
            f"the same command resumes the run where it stopped (on another day add --run-id {run.run_id} "
            f"--run-date {run.run_date})")


def execute(spec: JobSpec, *, verbose: bool = False, log_file: pathlib.Path | None = None, kind: str = "jobs-run",
            after=None) -> int:
    """Run the resolved `spec` with the console (progress line, log file, summary); return the exit code.
    `after(summary, out)` prints more after the summary (the demo's table). Ctrl-C: one line saying
    what is kept, exit 130; where Ray Data was interrupted goes to the log file only."""
    import ray

    from jobs.pipeline import run_job

    owns_ray = not ray.is_initialized()  # shut down only a Ray instance this run started
    with console.Console(log_file or default_log_path(kind, spec.run.run_id), verbose=verbose) as con:
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
        spec = spec_from_args(args).resolve()
    except (ValueError, TypeError, OSError) as exc:  # bad values, unreadable --spec or schema file
        print(f"python -m jobs.run: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return execute(spec, verbose=args.verbose, log_file=args.log_file)


if __name__ == "__main__":
    sys.exit(main())
