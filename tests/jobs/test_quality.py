"""Output checks without an engine: finish_reason, repetition, JSON validation, best attempt,
retry targets and sampling, strict mode, summary counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from jobs import quality, retry, stages

SCHEMA = json.dumps({"type": "object", "properties": {"total": {"type": "integer", "maximum": 999}},
                     "required": ["total"], "additionalProperties": False})


def test_finish_reason_from_tokens():
    stop = {1, 5}
    assert quality.finish_reason([7, 8, 1], max_tokens=3, stop_ids=stop) == "stop"  # EOS as the last allowed token
    assert quality.finish_reason([7, 8, 9], max_tokens=3, stop_ids=stop) == "length"
    assert quality.finish_reason([7, 5], max_tokens=3, stop_ids=stop) == "stop"
    assert quality.finish_reason([7, 8], max_tokens=9, stop_ids=stop, prompt_tokens=98, max_model_len=100) == "length"
    assert quality.finish_reason([7, 8], max_tokens=9, stop_ids=()) == "stop"  # a stop string


def test_checkpoint_stop_ids(tiny_checkpoint):
    assert quality.checkpoint_stop_ids(tiny_checkpoint) == {1, 5}  # <eos>, <end_of_turn>
    assert quality.checkpoint_stop_ids("/nonexistent/model") == frozenset()


def test_repeated_tail_threshold():
    varied = list(range(200))
    assert quality.repeated_tail(varied) is None
    assert quality.repeated_tail(varied[:50] + [11, 12, 13, 14] * 8) == (4, 1.0)  # 32 tokens of a 4-gram
    assert quality.repeated_tail(varied[:50] + [11, 12, 13, 14] * 7) is None  # 28 tokens: under the threshold
    assert quality.repeated_tail(varied[:50] + [9] * 32 + [1], stop_ids={1}) == (1, 1.0)  # stop token excluded
    # A loop with an odd token in it (what the demo model does on audio it never learned: "9 9 ... 0 9").
    demo = [37, 233] * 14 + [28, 233, 37, 233]
    assert quality.repeated_tail(demo) == (2, 0.933)
    cut = varied[:50] + list(range(300, 320)) * 3 + [300, 301]  # a 20-gram x 3 cut mid-copy
    assert quality.repeated_tail(cut)[0] == 20
    assert quality.repeated_tail(varied[:50] + list(range(300, 320)) * 2) is None  # 2 copies only
    assert quality.repeated_tail([5, 6, 7, 8] * 6) is None  # too short to tell (24 tokens)
    loop = varied[:50] + [11, 12, 13, 14] * 12
    assert quality.generation_flags(loop, "length") == ["truncated", "repetitive"]
    assert quality.generation_flags(varied, "stop") == []


def test_check_json():
    assert quality.check_json('{"total": 12}', SCHEMA) == ('{"total":12}', None)
    value, error = quality.check_json('{"total": 1234}', SCHEMA)
    assert value is None and "at total" in error and "1234" in error
    value, error = quality.check_json('{"tot', SCHEMA)
    assert value is None and "not valid JSON" in error
    assert quality.schema_error('{"type": "nonsense"}') is not None
    with pytest.raises(ValueError, match="not a usable JSON schema"):
        quality.canonical_schema('{"type": 5}')


def test_badness_orders_attempts():
    order = [quality.badness("ok", []), quality.badness("ok", ["truncated"]),
             quality.badness("ok", ["truncated", "repetitive"]), quality.badness("error", ["invalid_json"]),
             quality.badness("error", [])]
    assert order == sorted(order) and len(set(order)) == 5


def test_retry_sampling_is_fixed_per_segment_and_round():
    a = quality.retry_sampling(1, seed=0, source_id="s", segment_index=2)
    assert a == quality.retry_sampling(1, seed=0, source_id="s", segment_index=2)
    assert a["temperature"] == pytest.approx(0.2)
    assert quality.retry_sampling(2, seed=0, source_id="s", segment_index=2)["seed"] != a["seed"]
    assert quality.retry_sampling(9, seed=0, source_id="s", segment_index=2)["temperature"] == 1.0
    row = {"source_id": "s", "segment_index": 2, "retry_round": 1, "json_schema": SCHEMA,
           "messages_json": "[]", "error": None, "text_source": "model"}
    params = stages.to_llm_request(row, 16)["sampling_params"]
    assert params == {"max_tokens": 16, **a, "structured_outputs": {"json": SCHEMA}}
    assert stages.to_llm_request({**row, "retry_round": 0, "json_schema": None}, 16)["sampling_params"] == {
        "temperature": 0.0, "max_tokens": 16}
    layer = stages.to_llm_request({**row, "text_source": "pdf_text"}, 16)
    assert layer["__inference_error__"] == stages.NO_INFERENCE and "messages" not in layer


def _ctx(**kw):
    from connectors.sources import ParquetColumns
    from connectors.storage import StorageConfig
    from model.inputs.audio_chunks import Segmentation
    from model.inputs.media import MediaLimits

    base = dict(run_id="r1", attempt="a1", task="auto", storage=StorageConfig(), limits=MediaLimits(),
                parquet=ParquetColumns(), segmentation=Segmentation(), max_new_tokens=4,
                stop_token_ids=frozenset({1}), max_model_len=4096)
    base.update(kw)
    return stages.StageContext(**base)


def _engine_row(tokens, text="x", **kw):
    row = dict(source_id="s", source_uri="s3://b/s.pdf", source_row=None, segment_index=0, num_segments=1,
               modality="document", format="pdf", page=1, decode_s=0.1, generated_tokens=tokens,
               generated_text=text, num_input_tokens=10, time_taken_llm=0.5, __inference_error__="",
               text_source="model", retry_round=0)
    row.update(kw)
    return row


def test_collect_segment_flags_and_json():
    work = stages.collect_segment(_engine_row([7, 8, 9, 10]), _ctx())
    assert (work["status"], work["finish_reason"], work["flags"]) == ("ok", "length", ["truncated"])
    work = stages.collect_segment(_engine_row([7, 1]), _ctx())
    assert (work["finish_reason"], work["flags"], work["json"]) == ("stop", [], None)
    good = stages.collect_segment(_engine_row([7, 1], text='{"total": 3}', json_schema=SCHEMA), _ctx())
    assert (good["status"], good["json"], good["flags"]) == ("ok", '{"total":3}', [])
    bad = stages.collect_segment(_engine_row([7, 8, 9, 10], text='{"total": 3', json_schema=SCHEMA), _ctx())
    assert bad["status"] == "error" and bad["error_stage"] == "validate" and "not valid JSON" in bad["error"]
    assert bad["flags"] == ["truncated", "invalid_json"] and bad["text"] == '{"total": 3'
    layer = stages.collect_segment(_engine_row(None, __inference_error__=stages.NO_INFERENCE, text_source="pdf_text",
                                               pdf_text="Invoice 4521", text_layer="usable"), _ctx())
    assert (layer["status"], layer["text"], layer["text_source"], layer["finish_reason"]) == ("ok", "Invoice 4521", "pdf_text", None)
    assert layer["output_token_ids"] is None and layer["input_tokens"] == 0 and layer["infer_s"] == 0.0
    table = pa.Table.from_pylist([work, good, bad, layer], schema=stages.WORK_SCHEMA)
    assert table.num_rows == 4


def _work(index, t, flags=(), status="ok", round_index=0, text=None, **kw):
    row = dict(source_id="x", source_uri="s3://b/x.pdf", source_row=None, segment_index=index, num_segments=2,
               modality="document", format="pdf", page=index + 1, start_s=None, end_s=None, duration_s=None,
               source_bytes=10, status=status, error=None if status == "ok" else "bad json", error_stage=None,
               text=text or f"t{index}r{round_index}", output_token_ids=[1], input_tokens=5, output_tokens=1,
               decode_s=0.1, infer_s=0.2, finish_reason="length" if "truncated" in flags else "stop",
               flags=list(flags), text_source="model", text_layer=None, json=None, retry_round=round_index,
               run_id="r1", attempt="a", written_at=t)
    row.update(kw)
    return row


def test_assemble_keeps_the_best_attempt_and_counts_attempts():
    rows = [_work(0, 1.0, ["truncated"]), _work(1, 1.0),
            _work(0, 2.0, ["truncated", "repetitive"], round_index=1), _work(0, 3.0, round_index=2)]
    source, segments = stages.assemble_source(rows)
    assert [s["text"] for s in segments] == ["t0r2", "t1r0"]
    assert [(s["attempts"], s["retry_round"]) for s in segments] == [(3, 2), (1, 0)]
    assert source["status"] == "ok" and source["flags"] == [] and source["retried_segments"] == 1
    # Still degenerate after the retries: the least bad attempt, greedy first on ties.
    rows = [_work(0, 1.0, ["truncated"]), _work(1, 1.0), _work(0, 2.0, ["truncated", "repetitive"], round_index=1),
            _work(0, 3.0, ["truncated"], round_index=2)]
    source, segments = stages.assemble_source(rows)
    assert segments[0]["text"] == "t0r0" and segments[0]["flags"] == ["truncated"]
    assert source["status"] == "ok" and source["flags"] == ["truncated"] and source["text_source"] == "model"
    strict, _ = stages.assemble_source(rows, strict=True)
    assert strict["status"] == "error" and strict["error_stage"] == "quality" and strict["text"] is None
    assert "page 1 truncated after 3 attempt(s)" in strict["error"]


def test_assemble_json_rule_and_text_sources():
    rows = [_work(0, 1.0, json='{"total":1}'), _work(1, 1.0, json='{"total":2}')]
    source, _ = stages.assemble_source(rows)
    assert json.loads(source["json"]) == [{"total": 1}, {"total": 2}]
    invalid = [_work(0, 1.0, json='{"total":1}'), _work(1, 1.0, ["invalid_json"], status="error", error_stage="validate")]
    source, segments = stages.assemble_source(invalid)
    assert source["status"] == "error" and source["json"] is None and "page 2: bad json" in source["error"]
    mixed = [_work(0, 1.0, text_source="pdf_text", text_layer="usable", finish_reason=None), _work(1, 1.0)]
    source, segments = stages.assemble_source(mixed)
    assert source["text_source"] == "mixed" and source["pdf_text_pages"] == 1
    assert segments[0]["attempts"] == 0 and segments[1]["attempts"] == 1
    table = pa.Table.from_pylist([source], schema=stages.SOURCE_SCHEMA)
    assert table.column("flags").to_pylist() == [[]]


def test_retry_targets_follow_rounds():
    rows = [_work(0, 1.0, ["truncated"]), _work(1, 1.0), _work(-1, 0.5, status="error")]
    assert retry.segments_to_retry(rows, 1) == [0]
    rows.append(_work(0, 2.0, ["repetitive"], round_index=1))
    assert retry.segments_to_retry(rows, 1) == []  # round 1 already ran (a resumed run does not repeat it)
    assert retry.segments_to_retry(rows, 2) == [0]
    rows.append(_work(0, 3.0, round_index=2))
    assert retry.segments_to_retry(rows, 3) == []  # clean now
    layer = [_work(0, 1.0, text_source="pdf_text")]
    assert retry.segments_to_retry(layer, 1) == []


def test_summary_counts():
    _, segs_a = stages.assemble_source([_work(0, 1.0, ["truncated"]), _work(1, 1.0),
                                        _work(1, 0.5, ["repetitive"], round_index=0)])
    src_a, _ = stages.assemble_source([_work(0, 1.0, ["truncated"]), _work(1, 1.0)])
    segments = pa.Table.from_pylist(segs_a, schema=stages.SEGMENT_SCHEMA)
    sources = pa.Table.from_pylist([src_a], schema=stages.SOURCE_SCHEMA)
    counts = quality.summary_counts(segments, sources)
    assert counts["flags"]["truncated"] == {"segments": 1, "sources": 1}
    assert counts["flags"]["repetitive"] == {"segments": 0, "sources": 0}
    assert counts["finish_reason"] == {"length": 1, "stop": 1} and counts["text_source"] == {"model": 2}
    assert counts["segments_retried"] == 0 and counts["text_layer"] == {}
