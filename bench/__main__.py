"""Run the benchmarks one after another: `python -m bench [NAME ...]` (`make bench`, `make bench BENCH=pages`).

Each runs as `python -m bench.NAME` with its own defaults (its docstring and docs/benchmarks.md say
what it measures and which options it takes) and prints its own figures. Timed figures want a quiet
machine. The exit status is that of the first bench that failed (0 when all ran).
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = ("model_embedding", "pages", "pdf_text", "pipeline", "audio", "finalize_scale", "serving")


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHES)
    if names == ["--list"]:
        print("\n".join(BENCHES))
        return 0
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"python -m bench: unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHES)})", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"== python -m bench.{name}", flush=True)
        code = subprocess.run([sys.executable, "-m", f"bench.{name}"]).returncode
        if code:
            print(f"== bench.{name} exited {code}", flush=True)
            failed = failed or code
    return failed


if __name__ == "__main__":
    sys.exit(main())
