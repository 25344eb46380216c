"""Exit status of `python -m jobs.run`, `python -m jobs.submit` and `python -m jobs.demo`: one code per
outcome, so a nightly scheduler can tell a broken command from a bad night.

| code | outcome |
| ---: | --- |
| 0 | success: the run finished and its error rate is within `--error-threshold` |
| 1 | job failure: the run did not finish (an exception, the engine or the cluster failed, the Ray job ended FAILED or STOPPED, `jobs.submit --timeout` ran out) |
| 2 | usage or configuration error: a mistyped flag, a missing or invalid setting, an unreadable spec file, inputs that match nothing, a local output that cannot be written, a model path that is not a checkpoint; nothing was run |
| 3 | threshold exceeded: the run finished and wrote its tables and summary, but more than `--error-threshold` of its sources are error rows |
| 130 | interrupted (Ctrl-C) |

2 is argparse's own code for a usage error (and the shell convention for misuse); a finished run over
its error threshold has a code of its own, so the two never read alike.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    THRESHOLD_EXCEEDED = 3
    INTERRUPTED = 130


class ConfigError(ValueError):
    """A setting is wrong and nothing was run (exit 2). Raise it for anything a person fixes in the command
    or the spec rather than in the data or the cluster."""


def for_summary(summary: dict) -> ExitCode:
    """A finished run: success, or over its error threshold."""
    return ExitCode.OK if summary["passed"] else ExitCode.THRESHOLD_EXCEEDED


TABLE = __doc__.split("\n\n")[1]  # the table above, for docs and --help
