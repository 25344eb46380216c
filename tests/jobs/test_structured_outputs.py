"""model/structured_outputs.py without an engine: the user-style schema corpus is either runnable by the
engine's guided decoding or refused with its keyword named; the job refuses such a schema before Ray
starts (exit 2) and a Parquet row's own schema fails that row only. The corpus running through the
engine is tests/jobs/test_realfiles.py (one job for it and the real-file corpus)."""

from __future__ import annotations

import json
import time

import pytest

from jobs import preflight, quality, samples, stages
from model import structured_outputs
from tests.jobs.test_stages import ctx
from tests.schemas import USER_SCHEMAS


def test_the_corpus_is_thirty_user_schemas_and_the_refusals():
    runnable = [s for s in USER_SCHEMAS if s.refused is None]
    assert len(runnable) >= 30 and len({s.name for s in USER_SCHEMAS}) == len(USER_SCHEMAS)
    for case in USER_SCHEMAS:
        quality.canonical_schema(case.schema)  # every one is a valid JSON Schema


@pytest.mark.parametrize("case", USER_SCHEMAS, ids=lambda c: c.name)
def test_each_schema_runs_or_is_refused_naming_its_keyword(case):
    problem = structured_outputs.schema_problem(structured_outputs.schema_text(case.schema))
    if case.refused is None:
        assert problem is None, problem
    else:
        assert problem is not None and f"'{case.refused}'" in problem, problem


def test_the_engine_setting_is_one_vllm_accepts_and_auto_cannot_keep_whitespace_off():
    from vllm.config import StructuredOutputsConfig

    config = StructuredOutputsConfig(**structured_outputs.ENGINE_CONFIG)
    assert (config.backend, config.disable_any_whitespace) == ("guidance", True)
    # Why not `auto` (xgrammar, else guidance): vLLM 0.29 refuses it with whitespace off.
    with pytest.raises(ValueError, match="only supported for xgrammar and guidance"):
        StructuredOutputsConfig(backend="auto", disable_any_whitespace=True)


def test_a_job_schema_nothing_can_run_fails_before_ray_starts(tmp_path, tiny_checkpoint):
    import ray

    from jobs.exit_codes import ConfigError
    from jobs.pipeline import run_job
    from jobs.spec import JobSpec

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "page.png").write_bytes(samples.png_page("x"))
    refused = next(s for s in USER_SCHEMAS if s.refused == "uniqueItems")
    spec = JobSpec(inputs=[str(tmp_path / "in")], output={"uri": str(tmp_path / "out"), "json_schema": json.dumps(refused.schema)},
                   engine={"model": str(tiny_checkpoint)})
    ray_before = ray.is_initialized()
    started = time.monotonic()
    with pytest.raises(preflight.PreflightConfigError) as info:
        run_job(spec)
    assert isinstance(info.value, ConfigError)  # exit 2 (jobs/run.py)
    assert info.value.check == "schema" and "'uniqueItems'" in str(info.value) and "--json-schema" in str(info.value)
    assert ray.is_initialized() == ray_before and time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_a_row_schema_nothing_can_run_is_that_rows_error(tmp_path):
    refused = next(s for s in USER_SCHEMAS if s.refused == "not")
    good = next(s for s in USER_SCHEMAS if s.name == "invoice_number")
    source = dict(source_id="r1", source_uri="t.parquet#row=0", source_row="t.parquet#row=0", name=None,
                  data=samples.pdf_doc(["a", "b"]), json_schema=json.dumps(refused.schema))
    (row,) = stages.decode_source(source, ctx())
    assert row["segment_index"] == stages.ERROR_SEGMENT and row["error_stage"] == "decode"
    assert row["error"].startswith("the row's JSON schema column:") and "'not'" in row["error"]
    rows = list(stages.decode_source({**source, "json_schema": json.dumps(good.schema)}, ctx()))
    assert [r["page"] for r in rows] == [1, 2] and all(r["error"] is None for r in rows)
    assert rows[0]["json_schema"] == structured_outputs.schema_text(good.schema)
