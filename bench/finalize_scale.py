"""Benchmark the driver's cost of a run's end (resume state, finalize, summary totals) as runs grow.

    python -m bench.finalize_scale [--sources 10000,100000,1000000] [--paths old,new] [--steps resume,finalize]
                                   [--keep DIR]

For each size, a synthetic work area like the job writes (2 segments per source, 2 KB of text each,
500 output token ids, 2,000 work rows per file; written once, kept with --keep) goes through two contenders, each in
a fresh process with its own local Ray instance (4 logical CPUs), so each driver's peak RSS
(`ru_maxrss`) is its own:

* old  the path before issue 11 (kept here as the baseline): the whole work table read into the
       driver (`read_work`), the resume rule on it there (`resume_state`: Python sets), finalize from
       `ray.data.from_arrow` of that table, the published sources read back for the summary.
* new  the job's path: `ResumeIndex.build` (the resume rule reduced on the cluster), `finalize`
       (Ray Data reads, groups and writes), `totals.run_totals` (counts reduced per block).

Reports seconds for resume state and finalize (+ totals), the driver's peak RSS, and the ratios.
Targets (issue 11): driver peak RSS under 1 GiB at 1M sources; time linear in sources.
Not a test: timings on a shared machine are noisy; compare the contenders of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROWS_PER_FILE = 2000
TEXT_BYTES = 2048
TOKENS = 500  # output token ids per segment (what 2 KB of text is, roughly)
SEGMENTS = 2
RUN_ID = "bench"


def spec_for(root: pathlib.Path):
    from jobs.spec import JobSpec

    return JobSpec(inputs=[str(root / "in")], output={"uri": str(root / "out")}, engine={"model": "none"},
                   run={"run_id": RUN_ID, "run_date": "2026-12-02"})


def make_work_area(root: pathlib.Path, sources: int) -> None:
    """Work rows for `sources` two-segment sources, in files of ROWS_PER_FILE rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs import stages

    work = root / "out" / "_work" / RUN_ID / "segments"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", np.uint8)
    texts = [alphabet[rng.integers(0, len(alphabet), TEXT_BYTES)].tobytes().decode() for _ in range(64)]
    tokens = [rng.integers(0, 32000, TOKENS).tolist() for _ in range(64)]
    rows_total = sources * SEGMENTS
    for number, start in enumerate(range(0, rows_total, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows_total - start)
        idx = np.arange(start, start + n)
        source = idx // SEGMENTS
        columns = {
            "source_id": pa.array([f"src{s:012d}" for s in source]),
            "source_uri": pa.array([f"s3://scans/doc{s:012d}.pdf" for s in source]),
            "segment_index": pa.array(idx % SEGMENTS, pa.int32()),
            "num_segments": pa.array(np.full(n, SEGMENTS), pa.int32()),
            "modality": pa.array(["document"] * n), "format": pa.array(["pdf"] * n),
            "page": pa.array(idx % SEGMENTS + 1, pa.int32()),
            "status": pa.array(["ok"] * n),
            "text": pa.array([texts[i % 64] for i in idx]),
            "output_token_ids": pa.array([tokens[i % 64] for i in idx], pa.list_(pa.int32())),
            "input_tokens": pa.array(np.full(n, 300), pa.int32()),
            "output_tokens": pa.array(np.full(n, TOKENS), pa.int32()),
            "source_bytes": pa.array(np.full(n, 250_000), pa.int64()),
            "decode_s": pa.array(np.full(n, 0.05)), "infer_s": pa.array(np.full(n, 0.5)),
            "finish_reason": pa.array(["stop"] * n), "flags": pa.array([[]] * n, pa.list_(pa.string())),
            "text_source": pa.array(["model"] * n), "retry_round": pa.array(np.zeros(n), pa.int32()),
            "run_id": pa.array([RUN_ID] * n), "attempt": pa.array(["a1"] * n),
            "written_at": pa.array(np.full(n, 1.0)),
        }
        table = pa.table({f.name: (columns[f.name].cast(f.type) if f.name in columns else pa.nulls(n, f.type))
                          for f in stages.WORK_SCHEMA}, schema=stages.WORK_SCHEMA)
        pq.write_table(table, work / f"{number:06d}.parquet")


def _old(spec, layout) -> dict:
    """The driver path before issue 11 (as it was in jobs/workarea.py and jobs/pipeline.py)."""
    import pyarrow.compute as pc
    import ray

    from jobs import quality, stages
    from jobs.workarea import _publish, read_work, resume_state

    started = time.perf_counter()
    done, partial = resume_state(read_work(layout, spec, ["source_id", "segment_index", "num_segments",
                                                          "error_stage", "written_at", "attempt"]))
    resume_s = time.perf_counter() - started
    started = time.perf_counter()
    work = read_work(layout, spec)
    partitions = max(1, min(64, work.num_rows // 20_000 + 1))
    work_ds = ray.data.from_arrow(work)
    from connectors.storage import resolve

    for kind, target in (("source", layout.sources), ("segment", layout.segments)):
        schema = stages.SOURCE_SCHEMA if kind == "source" else stages.SEGMENT_SCHEMA

        def fn(group, kind=kind, schema=schema):
            source, segments = stages.assemble_source(group.to_pylist())
            import pyarrow as pa
            return pa.Table.from_pylist([source] if kind == "source" else segments, schema=schema)

        staging = f"{layout.staging}/{kind}-old"
        fs, path = resolve(staging, spec.storage)
        (work_ds.groupby("source_id", num_partitions=partitions).map_groups(fn, batch_format="pyarrow")
         .write_parquet(path, filesystem=fs, min_rows_per_file=50_000))
        _publish(spec, staging, target, layout.run_id)
    import pyarrow.parquet as pq

    sources = pq.read_table(layout.sources, columns=[c for c in stages.SOURCE_SCHEMA.names if c != "text"])
    rows = sources.to_pylist()  # what summarize did
    segments = pq.read_table(layout.segments, columns=["flags", "finish_reason", "text_source", "text_layer", "attempts"])
    quality.summary_counts(segments, sources)
    new = work.filter(pc.equal(work.column("attempt"), "a1"))
    return {"resume_s": resume_s, "finalize_s": time.perf_counter() - started, "done": len(done),
            "partial": len(partial), "sources": len(rows), "new_sources": len(set(new.column("source_id").to_pylist()))}


def _new(spec, layout, steps=("resume", "finalize")) -> dict:
    from jobs.resume import ResumeIndex
    from jobs.totals import run_totals
    from jobs.workarea import finalize

    out = {}
    if "resume" in steps:
        started = time.perf_counter()
        index = ResumeIndex.build(spec, layout)
        out.update(resume_s=time.perf_counter() - started, done=index.done, partial=index.partial)
        del index
    if "finalize" in steps:
        started = time.perf_counter()
        finalize(spec, layout)
        totals = run_totals(spec, layout, "a1")
        out.update(finalize_s=time.perf_counter() - started, sources=totals["sources"]["total"],
                   new_sources=totals["invocation"]["sources"])
    return out


def contender(root: str, path: str, steps: str) -> None:
    """One contender in this (fresh) process; prints its figures as JSON."""
    import ray

    from jobs.workarea import OutputLayout

    spec = spec_for(pathlib.Path(root))
    layout = OutputLayout(spec)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = _old(spec, layout) if path == "old" else _new(spec, layout, steps.split(","))
    result["driver_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["driver_rss_at_ray_start_mib"] = round(before / 1024, 1)
    ray.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="10000,100000,1000000")
    parser.add_argument("--paths", default="old,new")
    parser.add_argument("--keep", help="directory for the work areas (default: a temporary one)")
    parser.add_argument("--steps", default="resume,finalize", help="steps of the new path (old: always both)")
    parser.add_argument("--contender", nargs=3, metavar=("ROOT", "PATH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contender:
        contender(*args.contender)
        return
    base = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="finalize-scale-"))
    report = []
    for sources in (int(s) for s in args.sources.split(",")):
        root = base / f"n{sources}"
        if not (root / "out" / "_work").exists():
            started = time.perf_counter()
            make_work_area(root, sources)
            print(f"[bench] {sources} sources: work area written in {time.perf_counter() - started:.0f} s", flush=True)
        row = {"sources": sources}
        for path in args.paths.split(","):
            out = subprocess.run([sys.executable, "-m", "bench.finalize_scale", "--contender", str(root), path, args.steps],
                                 capture_output=True, text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                row[path] = {"failed": (out.stderr or out.stdout)[-2000:]}
            else:
                row[path] = json.loads(line[len("RESULT "):])
            print(f"[bench] {sources} sources, {path}: {json.dumps(row[path])[:400]}", flush=True)
        if "old" in row and "new" in row and "failed" not in row["old"] and "failed" not in row["new"]:
            row["rss_ratio_old_over_new"] = round(row["old"]["driver_peak_rss_mib"] / row["new"]["driver_peak_rss_mib"], 2)
        report.append(row)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
