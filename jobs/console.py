"""What a person running a job sees: one progress line, then the summary. Ray's and vLLM's logs go to a file.

    with Console(log_file=default_log_path("jobs-run", spec.run.run_id), verbose=False) as con:  # model.logfile
        summary = run_job(spec, progress=con.progress)
        con.summary(summary)

* **Log file.** Everything the process and its children write (Ray's driver logs, worker and engine
  logs forwarded by `log_to_driver`, vLLM's engine logs, messages of Ray's C++ core, the local Ray
  daemons `ray.init` starts) goes to a log file whose path is printed first. File descriptors 1 and 2
  are redirected, not just `sys.stdout`: Ray's C++ core and the daemons write to them directly.
  `verbose=True` (`--verbose`) leaves all of it on the console.
* **Progress.** On a terminal, one live line drawn by tqdm: sources done of the total, segments done,
  errors so far, sources/s and ETA. Not on a terminal (cron, a Ray job's log, CI), one heartbeat line
  at most every 30 s with the same figures (`heartbeat_line`). Ray Data's own operator table, which
  it logs every 10 s when stdout is not a terminal, is what used to flood the console; it now goes
  to the log file once a minute (Ray Data's `RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL`).

Counting holds no per-source state in the driver. One step fused after the work rows are built
(`count_work`) adds three numbers per batch to a small Ray actor (`ProgressCounter`, zero CPUs,
on the driver's node): segments finished, errors, and the sum over finished segments of
1/num_segments. A source of n segments adds 1/n per finished segment, so that sum is the number of
sources done (exact once a source is complete, fractional while it is in flight), whatever the
worker, batch or order its segments come in; a source that failed before it had segments adds 1.
Cost: one actor message per batch, O(1) memory. Ray Data's own per-operator counts are not
reachable from outside its executor (its progress managers are not pluggable), hence the actor.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import threading
import time
import traceback
from typing import IO

from model.logfile import LogFile

HEARTBEAT_S = 30.0  # non-terminal progress: at most one line per this many seconds
TTY_REFRESH_S = 1.0
RAY_DATA_LOG_INTERVAL_S = "60"  # Ray Data's operator table, in the log file


def format_interval(seconds: float | None) -> str:
    """hh:mm:ss (tqdm's own format, so the live line and the heartbeat read the same)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    from tqdm import tqdm

    return tqdm.format_interval(max(0, int(seconds)))


# -- counting (Ray side) --------------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    sources: float = 0.0  # sum of 1/num_segments over finished segments + failed sources
    segments: int = 0
    errors: int = 0


class ProgressCounter:
    """Three numbers, added to by the pipeline's workers and read by the driver's console."""

    def __init__(self, initial_sources: float = 0.0):
        self.counts = Counts(sources=initial_sources)

    def add(self, sources: float, segments: int, errors: int) -> None:
        self.counts.sources += sources
        self.counts.segments += segments
        self.counts.errors += errors

    def snapshot(self) -> Counts:
        return self.counts


def work_counts(segment_index, num_segments, status) -> tuple[float, int, int]:
    """(sources, segments, errors) that a batch of work rows adds: see the module docstring."""
    sources, segments, errors = 0.0, 0, 0
    for index, expected, state in zip(segment_index, num_segments, status):
        if index < 0:  # the source failed before it had segments (stages.ERROR_SEGMENT)
            sources += 1.0
            errors += 1
        else:
            sources += 1.0 / max(int(expected), 1)
            segments += 1
            errors += state != "ok"
    return sources, segments, errors


def count_work(batch, counter):
    """Identity step over work-row batches (pyarrow) that reports their counts to the counter actor."""
    if batch.num_rows:
        counter.add.remote(*work_counts(batch.column("segment_index").to_pylist(),
                                        batch.column("num_segments").to_pylist(),
                                        batch.column("status").to_pylist()))
    return batch


# -- progress (driver side) -----------------------------------------------------------------------


def count_sources(units, storage) -> int | None:
    """Sources in the listed units (a pyarrow Table: unit, uri): one per file, the row count
    (Parquet footer) per table."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from connectors.storage import resolve

    parquet = units.filter(pc.equal(units.column("unit"), "parquet")).column("uri").to_pylist()
    total = units.num_rows - len(parquet)
    for uri in parquet:
        try:
            fs, path = resolve(uri, storage)
            with fs.open_input_file(path) as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        except Exception:  # noqa: BLE001 - an unreadable table becomes error rows later; the total is unknown
            return None
    return total


def heartbeat_line(elapsed_s: float, counts: Counts, total: int | None, initial: float) -> str:
    """`[jobs] 00:01:30 sources 5/12 (42%), segments 9, errors 1, 0.05 sources/s, ETA 00:02:20`.

    The rate counts sources finished by this invocation since its stream started; the ETA divides what
    is left by it."""
    done = int(counts.sources + 1e-9)
    share = f" ({100 * done / total:.0f}%)" if total else ""
    rate = (counts.sources - initial) / elapsed_s if elapsed_s > 0 else 0.0
    eta = (total - counts.sources) / rate if total is not None and rate > 0 else None
    return (f"[jobs] {format_interval(elapsed_s)} sources {done}/{total if total is not None else '?'}{share}, "
            f"segments {counts.segments}, errors {counts.errors}, {rate:.2f} sources/s, ETA {format_interval(eta)}")


class Progress:
    """The running job's progress on the console; `jobs.pipeline.run_job` calls begin/attach/streamed."""

    def __init__(self, out: IO[str], *, live: bool, heartbeat_s: float = HEARTBEAT_S, clock=time.monotonic,
                 log=None):
        self.out = out
        self.log = log  # a LogFile: gets the console's lines too, for context
        self.live = live  # a terminal: tqdm line; else heartbeat lines
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.total: int | None = None
        self.initial = 0.0
        self.counts = Counts()
        self._counter = None
        self._bar = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._started = 0.0
        self._last_line = 0.0

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)
        if self.log is not None and not self.log.verbose:
            self.log.write(line + "\n")

    # -- hooks called by run_job --------------------------------------------------------------------
    def begin(self, spec, units, index) -> None:
        """units: the listed input units (pyarrow Table); index: the work area's `ResumeIndex`."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.total = count_sources(units, spec.storage)
        self.initial = index.done + index.finished_share
        self.counts = Counts(sources=self.initial)
        total = f"{self.total} sources" if self.total is not None else "sources"
        self.say(f"[jobs] run {spec.run.run_id} ({spec.run.run_date}): {total} in {units.num_rows} input units, "
                 f"{index.done} already done, {index.partial} partly done")
        self.close()  # a second run_job in the same console (a retry) starts afresh
        self._stop = threading.Event()
        node = ray.get_runtime_context().get_node_id()
        self._counter = ray.remote(num_cpus=0, max_restarts=0)(ProgressCounter).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(self.initial)
        self.start()
        self._thread = threading.Thread(target=self._loop, name="console-progress", daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Start the clock, and the live line on a terminal."""
        self._started = self._last_line = self.clock()
        if not self.live:
            return
        from tqdm import tqdm

        try:  # a terminal that reports no size (0 columns) would get an empty line
            sized = os.get_terminal_size(self.out.fileno()).columns >= 40
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            sized = False
        self._bar = tqdm(total=self.total, initial=int(self.initial), desc="sources", unit="src",
                         file=self.out, dynamic_ncols=sized, ncols=None if sized else 110,
                         mininterval=0.2, smoothing=0.1,
                         bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| {percentage:3.0f}% "
                                    "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self._bar.set_postfix_str("segments 0, errors 0, starting the engine", refresh=True)

    def attach(self, ds, *, num_cpus: float):
        """The dataset with the counting step after the work rows (fused with the step before it)."""
        if self._counter is None:
            return ds
        return ds.map_batches(count_work, fn_kwargs={"counter": self._counter}, batch_format="pyarrow",
                              num_cpus=num_cpus)

    def streamed(self) -> None:
        """Inference is over; the tables are being written."""
        self._halt()
        self._poll()
        elapsed = self.clock() - self._started
        if self._bar is not None:
            self._render_bar()
            self._bar.close()
            self._bar = None
        self.say(f"[jobs] {format_interval(elapsed)} inference done: sources {int(self.counts.sources + 1e-9)}/"
                 f"{self.total if self.total is not None else '?'}, segments {self.counts.segments}, "
                 f"errors {self.counts.errors}; writing the tables")

    def close(self) -> None:
        self._halt()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._counter is not None:
            try:
                import ray

                ray.kill(self._counter)
            except Exception:  # noqa: BLE001 - Ray already gone
                pass
            self._counter = None

    # -- internals ----------------------------------------------------------------------------------
    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None

    def _poll(self) -> None:
        if self._counter is None:
            return
        import ray

        try:
            self.counts = ray.get(self._counter.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - keep the last figures; progress never fails the job
            pass

    def _render_bar(self) -> None:
        done = int(self.counts.sources + 1e-9)
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)
        self._bar.set_postfix_str(f"segments {self.counts.segments}, errors {self.counts.errors}", refresh=False)
        self._bar.refresh()

    def tick(self) -> None:
        """One step of the loop: redraw the live line, or print a heartbeat when one is due."""
        now = self.clock()
        if self.live:
            self._poll()
            if self._bar is not None:
                self._render_bar()
        elif now - self._last_line >= self.heartbeat_s:
            self._poll()
            self._last_line = now
            self.say(heartbeat_line(now - self._started, self.counts, self.total, self.initial))

    def _loop(self) -> None:
        step = TTY_REFRESH_S if self.live else min(1.0, self.heartbeat_s)
        while not self._stop.wait(step):
            self.tick()


class NullProgress:
    """run_job without a console (notebooks, library use): the start line only, no counting."""

    def say(self, line: str) -> None:
        print(line, flush=True)

    def begin(self, spec, units, index) -> None:
        self.say(f"[jobs] run {spec.run.run_id} ({spec.run.run_date}): {units.num_rows} input units, "
                 f"{index.done} sources already done, {index.partial} partly done")

    def attach(self, ds, *, num_cpus: float):
        return ds

    def streamed(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- the command-line console -----------------------------------------------------------------------


class Console:
    """Log file + progress + summary for a command-line run (`jobs.run`, `jobs.demo`)."""

    def __init__(self, log_file: str | os.PathLike, *, verbose: bool = False, heartbeat_s: float = HEARTBEAT_S):
        self.log = LogFile(log_file, verbose=verbose)
        self.verbose = verbose
        self.heartbeat_s = heartbeat_s
        self.progress: Progress | None = None

    def __enter__(self) -> Console:
        if not self.verbose:
            # Before Ray Data is imported: it reads the interval once.
            os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", RAY_DATA_LOG_INTERVAL_S)
        self.log.__enter__()
        # With --verbose, logs interleave with the progress: heartbeat lines then, never a live line.
        self.progress = Progress(self.log.out, live=self.log.isatty() and not self.verbose,
                                 heartbeat_s=self.heartbeat_s, log=self.log)
        where = "shown here (--verbose)" if self.verbose else str(self.log.path)
        self.say(f"[jobs] Ray and vLLM logs: {where}")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.progress is not None:
            self.progress.close()
        self.log.__exit__(exc_type, exc, tb)

    @property
    def out(self) -> IO[str]:
        return self.log.out

    def say(self, line: str) -> None:
        self.progress.say(line)

    def failure(self, exc: BaseException, what: str = "the job failed") -> None:
        """One line on the console; the traceback in the log file (or here with --verbose)."""
        if self.progress is not None:
            self.progress.close()
        self.log.write("".join(traceback.format_exception(exc)))
        where = "above" if self.verbose else f"in {self.log.path}"
        print(f"[jobs] {what}: {type(exc).__name__}: {exc}\n[jobs] traceback {where}", file=self.out, flush=True)

    def summary(self, summary: dict) -> None:
        for line in summary_lines(summary):
            self.say(line)


def summary_lines(s: dict) -> list[str]:
    """The run summary, as printed at the end of a run (and read back by `jobs.submit`)."""
    import json

    inv = s["this_invocation"]
    lines = [
        f"\n== run {s['run_id']} ({s['run_date']}) ==",
        f"sources: {s['sources']['total']} ({s['sources']['ok']} ok, {s['sources']['error']} error)  "
        f"by modality: {json.dumps(s['sources']['by_modality'])}",
        f"pages: {s['pages']}  audio: {s['audio_seconds']:.1f} s  segments: {s['segments']}  "
        f"tokens in/out: {s['tokens']['input']}/{s['tokens']['output']}",
        f"this invocation: {inv['sources_processed']} sources processed, {inv['sources_skipped_as_done']} "
        f"already done, {inv['segments_inferred']} segments inferred, {inv['items_per_s']} items/s",
    ]
    q = s.get("quality") or {}
    if q.get("flags"):
        flags = ", ".join(f"{name} {c['segments']} ({c['sources']} sources)" for name, c in q["flags"].items())
        lines.append(f"output checks: {flags}; text from {json.dumps(q.get('text_source', {}))}; "
                     f"retried {q.get('segments_retried', 0)} segments, {q.get('segments_recovered_by_retry', 0)} now clean")
    lines += [f"  error: {err['source_uri']}: {err['error']}" for err in s["errors_sample"][:10]]
    lines += [
        f"error rate {s['error_rate']:.3f} (threshold {s['error_threshold']}): {'PASSED' if s['passed'] else 'FAILED'}",
        f"tables:  {s['tables']['sources']}\n         {s['tables']['segments']}",
        f"summary: {s['summary_path']}",
    ]
    return lines
