"""The work area without Ray or an engine: the resume rule (vectorized with Arrow) against the
row-by-row rule it replaced, and how work files are read: a file cut short by a kill is removed,
a file of an older version of the job (before a column existed) is read, a foreign one is refused."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import stages
from jobs.spec import JobSpec
from jobs.workarea import OLDER_WORK_DEFAULTS, RETRIED_ERROR_STAGES, OutputLayout, read_work, resume_state


def _work(source: str, index: int, n: int, t: float, status: str = "ok", stage: str | None = None, **kw) -> dict:
    row = dict(source_id=source, source_uri=f"s3://in/{source}.pdf", source_row=None, segment_index=index,
               num_segments=n, modality=kw.pop("modality", "document"), format="pdf",
               page=index + 1 if index >= 0 else None, start_s=None, end_s=None, duration_s=None,
               source_bytes=10, status=status, error=None if status == "ok" else f"{source} failed",
               error_stage=stage, text=f"{source}:{index}@{t}", output_token_ids=[index, int(t * 10)],
               input_tokens=5, output_tokens=2, decode_s=0.1, infer_s=0.2, run_id="r1", attempt="a1",
               written_at=t)
    row.update(kw)
    return row


def _random_work(seed: int, sources: int = 300) -> list[dict]:
    """Every shape resume meets: complete, partial, duplicated segments, final, fetch and stall
    markers, a marker superseded by later segments, failed segments."""
    rng = random.Random(seed)
    rows = []
    for s in range(sources):
        sid, n = f"s{s:04d}", rng.randint(1, 4)
        kind = rng.choice(["complete", "partial", "dupes", "final", "retried", "retried-then-ok", "failed-seg"])
        t = rng.random()
        if kind in ("final", "retried", "retried-then-ok"):
            rows.append(_work(sid, -1, 0, t, status="error", modality=None,
                              stage="decode" if kind == "final" else rng.choice(RETRIED_ERROR_STAGES)))
        if kind in ("final", "retried"):
            continue
        present = rng.sample(range(n), rng.randint(1, n - 1)) if kind == "partial" and n > 1 else range(n)
        for i in present:
            rows.append(_work(sid, i, n, t + 1 + i))
            if kind == "dupes" and rng.random() < 0.5:
                rows.append(_work(sid, i, n, t + 2 + i, text="redone"))
            if kind == "failed-seg" and i == 0:
                rows[-1].update(status="error", error="engine said no", error_stage="infer", text=None)
    rng.shuffle(rows)
    return rows


def _row_by_row_rule(work: pa.Table):
    """The previous resume_state, one Python dict per work row (the reference)."""
    per_source: dict[str, dict] = {}
    for row in work.select(["source_id", "segment_index", "num_segments", "error_stage"]).to_pylist():
        entry = per_source.setdefault(row["source_id"], {"segments": set(), "expected": 0, "final_error": False})
        if row["segment_index"] == stages.ERROR_SEGMENT:
            entry["final_error"] |= row["error_stage"] not in RETRIED_ERROR_STAGES
        else:
            entry["segments"].add(row["segment_index"])
            entry["expected"] = max(entry["expected"], row["num_segments"])
    done, partial = set(), {}
    for source_id, entry in per_source.items():
        if entry["final_error"] or (entry["expected"] and len(entry["segments"]) >= entry["expected"]):
            done.add(source_id)
        elif entry["segments"]:
            partial[source_id] = entry["segments"]
    return frozenset(done), partial


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_resume_rule_equals_the_row_by_row_rule(seed):
    work = pa.Table.from_pylist(_random_work(seed), schema=stages.WORK_SCHEMA)
    done, partial = resume_state(work)
    assert (done, partial) == _row_by_row_rule(work)
    assert done and partial  # the shapes above produce both


def test_work_files_of_an_older_job_are_read_a_cut_file_is_removed_a_foreign_one_refused(tmp_path):
    spec = JobSpec(inputs=[str(tmp_path)], output={"uri": str(tmp_path / "out")}, engine={"model": "none"},
                   run={"run_id": "r1", "run_date": "2026-11-22"})
    layout = OutputLayout(spec)
    work = tmp_path / "out/_work/r1/segments"
    work.mkdir(parents=True)
    # Written before the output-check columns existed (finish_reason, flags, text_source, ...).
    older = [c for c in stages.WORK_SCHEMA.names
             if c not in ("finish_reason", "flags", "text_source", "text_layer", "json", "retry_round")]
    rows = pa.Table.from_pylist([_work("old", i, 2, 1.0 + i) for i in range(2)], schema=stages.WORK_SCHEMA)
    pq.write_table(rows.select(older), work / "old.parquet")
    pq.write_table(pa.Table.from_pylist([_work("new", 0, 2, 3.0)], schema=stages.WORK_SCHEMA), work / "new.parquet")
    pq.write_table(rows, work / "cut.parquet")
    (work / "cut.parquet").write_bytes((work / "cut.parquet").read_bytes()[:-40])

    got = read_work(layout, spec)
    assert got.schema == stages.WORK_SCHEMA and got.num_rows == 3
    assert (work / "old.parquet").exists() and not (work / "cut.parquet").exists()
    old = got.filter(pa.compute.equal(got.column("source_id"), "old"))
    assert set(old.column("text_source").to_pylist()) == {OLDER_WORK_DEFAULTS["text_source"]}
    assert old.column("finish_reason").null_count == 2
    source, segments = stages.assemble_source(old.to_pylist())
    assert source["status"] == "ok" and [s["attempts"] for s in segments] == [1, 1]
    assert resume_state(read_work(layout, spec, ["source_id", "segment_index", "num_segments", "error_stage"])) == (
        {"old"}, {"new": {0}})

    # A whole file whose column cannot take the work schema's type is not "cut short": kept, refused.
    pq.write_table(rows.select(older).set_column(older.index("segment_index"), "segment_index",
                                                 pa.array(["first", "second"])), work / "foreign.parquet")
    with pytest.raises(RuntimeError, match="does not fit the work schema"):
        read_work(layout, spec)
    assert (work / "foreign.parquet").exists()


def test_resume_index_finalize_and_totals_run_on_the_cluster(tmp_path, ray_local):
    """The job's cluster-side reads of the work area (jobs.resume, finalize, jobs.totals) agree with
    the in-process rules on a work area spread over many files, one of them cut short by a kill."""
    from jobs.resume import ResumeIndex
    from jobs.totals import run_totals
    from jobs.workarea import finalize

    spec = JobSpec(inputs=[str(tmp_path)], output={"uri": str(tmp_path / "out")}, engine={"model": "none"},
                   run={"run_id": "r1", "run_date": "2026-11-22"})
    layout = OutputLayout(spec)
    work = tmp_path / "out/_work/r1/segments"
    work.mkdir(parents=True)
    rows = _random_work(3, sources=120)
    for i in range(0, len(rows), 25):
        pq.write_table(pa.Table.from_pylist(rows[i:i + 25], schema=stages.WORK_SCHEMA), work / f"w{i:04d}.parquet")
    cut = pa.Table.from_pylist([_work("lost", 0, 1, 9.0)], schema=stages.WORK_SCHEMA)
    pq.write_table(cut, work / "cut.parquet")
    (work / "cut.parquet").write_bytes((work / "cut.parquet").read_bytes()[:-40])
    table = pa.Table.from_pylist(rows, schema=stages.WORK_SCHEMA)
    done, partial = _row_by_row_rule(table)

    index = ResumeIndex.build(spec, layout)
    assert not (work / "cut.parquet").exists() and not index.is_done("lost")
    assert (index.done, index.partial) == (len(done), len(partial)) and index.local is None and index.refs
    assert all(index.is_done(s) for s in done) and not any(index.is_done(s) for s in partial)
    assert {s: index.finished_segments(s) for s in partial} == partial

    finalize(spec, layout)
    by_source: dict[str, list] = {}
    for row in rows:
        by_source.setdefault(row["source_id"], []).append(row)
    assembled = [stages.assemble_source(group) for group in by_source.values()]
    got = run_totals(spec, layout, "a1")
    errors = sum(source["status"] != "ok" for source, _ in assembled)
    assert got["sources"]["total"] == len(by_source) and got["sources"]["error"] == errors
    assert got["sources"]["segments"] == sum(source["num_segments"] for source, _ in assembled)
    assert got["sources"]["tokens"]["output"] == sum(source["output_tokens"] for source, _ in assembled)
    assert len(got["sources"]["errors_sample"]) == min(errors, 20)
    assert got["invocation"]["sources"] == len(by_source)  # every row is attempt "a1"
    assert got["invocation"]["segments"] == sum(r["segment_index"] >= 0 for r in rows)
    assert got["quality"]["finish_reason"] == {} and set(got["quality"]["flags"]) == {"truncated", "repetitive",
                                                                                       "invalid_json"}
    assert run_totals(spec, layout, "other")["invocation"]["sources"] == 0
