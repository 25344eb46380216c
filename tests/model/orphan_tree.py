"""A process tree for tests/model/test_orphan_guard.py: `python -m tests.model.orphan_tree OUT METHOD`
starts, with multiprocessing start method METHOD, a child that arms the orphan guard (as vLLM's
engine core does through the plugin) and starts a grandchild of its own; it writes
{"child", "grandchild", "guarded"} as JSON to OUT, then every process sleeps until killed."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time


def child(out: str) -> None:
    from model import orphan_guard

    guarded = orphan_guard.guard()
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(out + ".tmp", "w") as handle:
        json.dump({"child": multiprocessing.current_process().pid, "grandchild": grandchild.pid,
                   "guarded": guarded}, handle)
    import os

    os.replace(out + ".tmp", out)
    time.sleep(600)


if __name__ == "__main__":
    out, method = sys.argv[1], sys.argv[2]
    proc = multiprocessing.get_context(method).Process(target=child, args=(out,))
    proc.start()
    time.sleep(600)
