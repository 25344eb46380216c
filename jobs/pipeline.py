"""The batch job: read -> decode -> prompt -> infer -> assemble -> write, on Ray Data + ray.data.llm.

    from jobs.pipeline import run_job
    summary = run_job(JobSpec(inputs=["s3://scans/2026-11-22/"], output={"uri": "s3://tables/ocr"},
                              engine={"model": ...}))

Two phases per invocation:

1. **Stream** (one engine start): listed units -> source rows -> decoded requests (one per PDF/TIFF
   page or audio chunk) -> `ray.data.llm` vLLM processor on an actor pool -> *work rows* appended
   to the run's work area `<output>/_work/<run_id>/segments/` as Parquet files.
2. **Finalize** (`jobs.workarea`): the work area is grouped by source (Ray Data groupby) into exactly one `sources/`
   row per input and one `segments/` row per page/chunk, written to the run-date partition, and the
   run summary JSON (counts reduced on the cluster, `jobs.totals`) is written beside them.

The driver holds no row per source: it lists the inputs (an Arrow table of URIs) and the work files,
and keeps ObjectRefs and counts; resume state, finalize and totals run as Ray Data tasks.

Resume / idempotence (instead of `ray.data.checkpoint`): Ray Data's checkpointing records an id as
done when *a* block containing it is written. Here one source fans out into many segments that land
in different blocks, so a kill between two blocks would mark a half-done PDF as done and lose pages.
The work area is the checkpoint instead: before streaming, its rows say which sources are complete
(all `num_segments` present, or a final error) and which segments of partly done sources exist
(`jobs.resume.ResumeIndex`, reduced on the cluster and kept in the object store);
those are filtered out before fetching/decoding/inference, so nothing finished is recomputed.
Finalize rebuilds this run's files in the partition from the work area (replacing any earlier
ones of the same run id), so re-running a finished run, or the same nightly date, writes the same
rows again and never duplicates them. Fetch errors (storage unreachable after retries) are retried
by a re-run; decode errors are final.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from connectors.sources import expand_inputs
from connectors.storage import resolve
from jobs import failures, preflight, quality, retry, stages, totals
from jobs.console import NullProgress
from jobs.exit_codes import ConfigError
from jobs.resume import ResumeIndex
from jobs.spec import JobSpec
from jobs.workarea import STALL_STAGE, OutputLayout, finalize
from model import structured_outputs
from model.inputs import prompts

log = logging.getLogger("jobs")

# Content format of message parts for vLLM's chat parser: OpenAI-style parts (image_url, input_audio).
CONTENT_FORMAT = "openai"
# Every process a job starts carries this variable (the driver's value, or one it makes up): on its
# own local cluster by inheritance, on an attached cluster through the job's runtime env. It names
# the job's processes for operators (`grep -l JOBS_PROCESS_TAG=... /proc/*/environ`) and for the
# tests' leftover checks.
PROCESS_TAG_ENV = "JOBS_PROCESS_TAG"


# -- inference stage ------------------------------------------------------------------------------


def build_llm_processor(spec: JobSpec):
    """The `ray.data.llm` processor: chat parsing, templating, tokenizing, the vLLM engine on an
    actor pool, detokenizing. The engine runs the project's registered model class (vLLM plugin)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from model.registration import UPSTREAM_ARCHITECTURE

    settings = spec.engine
    on_gpu = settings.resolved_device() == "gpu"
    tp = spec.engine.tensor_parallel_size
    if on_gpu:
        gpus = spec.run.gpus_per_actor if spec.run.gpus_per_actor is not None else float(tp)
        bundles = [{"GPU": gpus / tp, "CPU": 1}] * tp
        light = 1.0
        if settings.max_num_seqs is None or settings.max_num_batched_tokens is None:
            settings = settings.with_batch_defaults(*gpu_batch_defaults_on_cluster(tp, settings.env()))
    else:
        # Without this the engine stage asks for a GPU and waits forever on a CPU-only machine.
        bundles = [{"CPU": 1}] * tp
        light = 0.1  # tokenizer-sized stages must not starve the engine of the few cores there are
    engine_kwargs = settings.ray_engine_kwargs()
    engine_kwargs.setdefault("structured_outputs_config", dict(structured_outputs.ENGINE_CONFIG))
    # Rows in flight per actor cover what the engine admits (ray.data.llm lets 1.1 x max_num_seqs
    # into it), or the engine runs below its capacity while rows wait upstream.
    concurrent_batches = spec.run.concurrent_batches(settings.resolved_max_num_seqs())
    log.info("engine: max_num_seqs=%s max_num_batched_tokens=%s; %d batches of %d rows in flight per actor",
             engine_kwargs.get("max_num_seqs"), engine_kwargs.get("max_num_batched_tokens", "vLLM default"),
             concurrent_batches, spec.run.batch_size)
    # The multimodal-parsing stage builds a bare vLLM ModelConfig in a CPU worker where vLLM's
    # plugins are not loaded, so it cannot resolve the project's architecture name. It only needs
    # the placeholder format and per-prompt limits, which the project's class inherits unchanged
    # from upstream's, so point that stage (and only that stage) at upstream's name.
    parse_config = {
        "hf_overrides": {"architectures": [UPSTREAM_ARCHITECTURE]},
        "limit_mm_per_prompt": engine_kwargs["limit_mm_per_prompt"],
    }
    if "mm_processor_kwargs" in engine_kwargs:
        parse_config["mm_processor_kwargs"] = engine_kwargs["mm_processor_kwargs"]
    config = vLLMEngineProcessorConfig(
        model_source=spec.engine.model,
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": settings.env()},
        batch_size=spec.run.batch_size,
        concurrency=spec.run.actors,
        max_concurrent_batches=concurrent_batches,
        placement_group_config={"bundles": bundles},
        should_continue_on_error=True,  # an engine error fails its row, not the job
        prepare_multimodal_stage={"enabled": True, "chat_template_content_format": CONTENT_FORMAT,
                                  "model_config_kwargs": parse_config, "num_cpus": light},
        chat_template_stage={"enabled": True, "num_cpus": light},
        tokenize_stage={"enabled": True, "num_cpus": light},
        detokenize_stage={"enabled": True, "num_cpus": light},
    )
    max_new_tokens, seed = spec.output.max_new_tokens, spec.engine.seed
    return build_processor(
        config,
        preprocess=lambda row: stages.to_llm_request(row, max_new_tokens, seed),
        preprocess_map_kwargs={"num_cpus": light},
        postprocess=_without_request,
        postprocess_map_kwargs={"num_cpus": light},
    ), on_gpu


# What the engine consumed: the chat messages and the parsed image (the page, pickled once per row),
# the prompt and its token ids. Nothing after the engine reads them (jobs.stages.collect_segment),
# so they stop here instead of riding to the work-area writer.
REQUEST_COLUMNS = frozenset({"messages", "multimodal_data", "multimodal_uuids", "mm_processor_kwargs",
                             "prompt", "tokenized_prompt", "sampling_params", "image", "audio"})


def _without_request(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in REQUEST_COLUMNS}


GPU_PROBE_TIMEOUT_S = 300.0
PAGE_BLOCK_BYTES = 8 * 2**20  # a few pages at 1120 tokens (one A4 page is 1-3 MB), ~100 at 70


def gpu_batch_defaults_on_cluster(tensor_parallel_size: int, env: dict) -> tuple[int, int]:
    """vLLM's own (max_num_seqs, max_num_batched_tokens) for the cluster's GPUs, asked on a GPU
    worker (`model.engine.gpu_batch_defaults`: the driver may have no GPU). If no GPU worker answers
    within GPU_PROBE_TIMEOUT_S, vLLM's defaults for GPUs under 70 GiB (256, 8192), with a warning."""
    import ray

    from model.engine import gpu_batch_defaults

    probe = ray.remote(num_gpus=0.01, num_cpus=0, runtime_env={"env_vars": env})(gpu_batch_defaults)
    ref = probe.remote(tensor_parallel_size)
    try:
        return tuple(ray.get(ref, timeout=GPU_PROBE_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - a busy or odd cluster must not stop the job
        ray.cancel(ref, force=True)
        log.warning("could not ask a GPU worker for vLLM's batch defaults (%s); using 256 sequences and "
                    "8192 batched tokens (vLLM's defaults for GPUs under 70 GiB); set --max-num-seqs", exc)
        return 256, 8192


def ensure_ray(spec: JobSpec, **init_kwargs) -> None:
    """Attach to RAY_ADDRESS, or start a local instance (extra `ray.init` arguments: benches)."""
    import ray

    if ray.is_initialized():
        return
    tag = os.environ.setdefault(PROCESS_TAG_ENV, f"{spec.run.run_id}-{uuid.uuid4().hex[:8]}")
    env = {**spec.engine.env(), PROCESS_TAG_ENV: tag}
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict = {}
    if not address:
        # A local instance on a small machine: the engine takes a whole logical CPU and the
        # read/decode/tokenize stages need a share beside it, which 2 logical CPUs cannot give
        # (Ray Data would wait forever on its resource budget). Logical CPUs are scheduling
        # units, not threads: vLLM's CPU backend still uses every core.
        kwargs["num_cpus"] = max(4, os.cpu_count() or 1)
    ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=False,
             log_to_driver=True, **kwargs, **init_kwargs)


# -- phases ---------------------------------------------------------------------------------------


def stream(spec: JobSpec, layout: OutputLayout, ctx: stages.StageContext, units: pa.Table,
           progress=None) -> None:
    """`units`: the input units still to do (`pending_units`)."""
    light = 1.0 if spec.engine.resolved_device() == "gpu" else 0.1
    ds = units_dataset(units).flat_map(stages.expand_unit, fn_kwargs={"ctx": ctx}, num_cpus=light)  # read
    infer_sources(spec, layout, ctx, ds, progress)


def infer_sources(spec: JobSpec, layout: OutputLayout, ctx: stages.StageContext, ds, progress=None) -> None:
    """Source rows -> decode+prompt -> infer -> work rows appended to the work area (one engine
    start). The stream and each retry round (jobs/retry.py) run through here."""
    processor, on_gpu = build_llm_processor(spec)
    decode_cpus = spec.run.cpus_per_decode_task or (1.0 if on_gpu else 0.5)
    light = 1.0 if on_gpu else 0.1
    # A decode task yields a block of pages once it holds target_max_block_size bytes (Ray's
    # default, 128 MiB, is a whole 2,000-page PDF at small budgets): smaller blocks let a long
    # document's pages reach the engine while it still renders, and bound what a task holds.
    # The context is this dataset's own (shared by the operators derived from it), not the global one.
    ds.context.target_max_block_size = PAGE_BLOCK_BYTES
    ds = ds.flat_map(stages.decode_source, fn_kwargs={"ctx": ctx}, num_cpus=decode_cpus)  # decode+prompt
    ds = processor(ds)  # infer
    ds = ds.map_batches(stages.work_batch, fn_kwargs={"ctx": ctx}, batch_format="numpy",
                        batch_size=spec.run.batch_size, num_cpus=light)
    if progress is not None:
        ds = progress.attach(ds, num_cpus=light)  # counts finished work rows for the console
    fs, work_path = resolve(layout.work, spec.storage)
    ds.write_parquet(work_path, filesystem=fs, min_rows_per_file=1)


# -- summary --------------------------------------------------------------------------------------


def summarize(spec: JobSpec, layout: OutputLayout, totals: dict, *, attempt: str, skipped: int,
              started: float, stream_s: float, finalize_s: float, retry_rounds: list[dict] | None = None) -> dict:
    """The run summary from `totals.run_totals` (counts reduced on the cluster)."""
    sources, invocation = totals["sources"], totals["invocation"]
    total, errors = int(sources.get("total", 0)), int(sources.get("error", 0))
    error_rate = errors / total if total else 0.0
    new_sources, new_segments = int(invocation.get("sources", 0)), int(invocation.get("segments", 0))
    return {
        "run_id": spec.run.run_id,
        "run_date": spec.run.run_date,
        "attempt": attempt,
        "model": spec.engine.model,
        "task": spec.output.task,
        "started_at": dt.datetime.fromtimestamp(started, dt.timezone.utc).isoformat(),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "wall_s": round(time.time() - started, 3),
        "sources": {"total": total, "ok": total - errors, "error": errors,
                    "by_modality": sources.get("by_modality", {})},
        "error_rate": round(error_rate, 6),
        "error_threshold": spec.run.error_threshold,
        "passed": error_rate <= spec.run.error_threshold,
        "pages": int(sources.get("pages", 0)),
        "audio_seconds": round(float(sources.get("audio_seconds", 0.0)), 3),
        "segments": int(sources.get("segments", 0)),
        "tokens": {"input": int(sources.get("tokens", {}).get("input", 0)),
                   "output": int(sources.get("tokens", {}).get("output", 0))},
        "this_invocation": {
            "sources_skipped_as_done": skipped,
            "sources_processed": new_sources,
            "segments_inferred": int(invocation.get("segments_inferred", 0)),
            "segments_from_pdf_text": int(invocation.get("segments_from_pdf_text", 0)),
            "segments_failed": int(invocation.get("segments_failed", 0)),
            "stream_s": round(stream_s, 3),
            "finalize_s": round(finalize_s, 3),
            "items_per_s": round(new_sources / stream_s, 4) if stream_s > 0 else None,
            "segments_per_s": round(new_segments / stream_s, 4) if stream_s > 0 else None,
        },
        # Output checks: flags (segments and sources), finish reasons, where text came from (model or
        # PDF text layer), text-layer verdicts of PDF pages, retries.
        "quality": {**totals["quality"], "retries": spec.output.retries, "strict": spec.output.strict,
                    "pdf_text": spec.pages.pdf_text, "retry_rounds_this_invocation": retry_rounds or []},
        "errors_sample": sources.get("errors_sample", [])[:20],
        "tables": {"sources": layout.sources, "segments": layout.segments},
        "summary_path": layout.summary,
    }


def _write_json(uri: str, payload: dict, spec: JobSpec) -> None:
    fs, path = resolve(uri, spec.storage)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, default=str).encode())


# -- entry point ----------------------------------------------------------------------------------


UNIT_BLOCKS = 200  # blocks of the units dataset: the read stage's parallelism


def units_dataset(units: pa.Table):
    """The listed units (pyarrow Table: unit, uri) as a Ray Dataset of up to UNIT_BLOCKS blocks."""
    import ray

    size = max(1, -(-units.num_rows // UNIT_BLOCKS))
    return ray.data.from_arrow([units.slice(i, size) for i in range(0, units.num_rows, size)] or [units])


def pending_units(units: pa.Table, index: ResumeIndex, spec: JobSpec) -> pa.Table:
    """The input units not yet done. The check runs on the cluster (a file unit is done when its
    source is, a Parquet table when every row's source is), so the done set never reaches the
    driver; finished units are dropped before the stream, so a finished run starts no engine."""
    if not index.done:
        return units
    import ray

    ds = units_dataset(units).map_batches(_drop_done_units, fn_kwargs={"index": index, "spec": spec},
                                          batch_format="pyarrow", batch_size=None, num_cpus=0.1)
    tables = ray.get(ds.to_arrow_refs())
    return pa.concat_tables(tables) if tables else units.schema.empty_table()


def _drop_done_units(units: pa.Table, index: ResumeIndex, spec: JobSpec) -> pa.Table:
    from connectors.sources import parquet_source_ids, stable_id

    done = []
    for unit, uri in zip(units.column("unit").to_pylist(), units.column("uri").to_pylist()):
        ids = [stable_id(uri)] if unit == "file" else parquet_source_ids(uri, spec.storage, spec.parquet)
        # is_done: a set lookup per id (done_mask would hash the whole done set on every call).
        done.append(ids is not None and all(index.is_done(i) for i in ids))
    return units.filter(pc.invert(pa.array(done, pa.bool_())))


def _stage_context(spec: JobSpec, attempt: str, index: ResumeIndex) -> stages.StageContext:
    return stages.StageContext(
        run_id=spec.run.run_id, attempt=attempt, task=spec.output.task, storage=spec.storage,
        limits=spec.media_limits(), parquet=spec.parquet, segmentation=spec.audio.to_segmentation(),
        audio=spec.engine.checkpoint_audio(),
        max_new_tokens=spec.output.max_new_tokens, default_tasks=prompts.default_tasks(spec.engine.model),
        stop_token_ids=quality.checkpoint_stop_ids(spec.engine.model), max_model_len=spec.engine.max_model_len,
        json_schema=spec.output.json_schema, seed=spec.engine.seed, pdf_text=spec.pages.pdf_text,
        geometry=spec.engine.page_geometry(),
        resume=index,
    )


# How long an attempt waits for its engines (and other actor pools) to be placed and loaded: a
# nightly job may wait for a GPU node to be added, but not forever.
ENGINE_START_TIMEOUT_S = 1800


def stream_attempts(spec: JobSpec, layout: OutputLayout, units: pa.Table, attempt: str,
                    progress) -> tuple[int, stages.StageContext]:
    """The stream, attempted up to `spec.run.max_attempts` times; returns how many sources earlier
    invocations had finished, and the stage context the invocation started with.

    Each attempt re-reads the work area, so it streams only what is not done yet: where Ray's own
    retries and lineage reconstruction do not recover a fault (a lost node, an engine that stalls),
    the next attempt resumes with a fresh engine. An engine that cannot start, or any other error,
    ends the job at once (another attempt would fail the same way). When the last attempt stalls
    too, the sources it did not finish get error rows naming the stall, so the run still finishes
    with one row per input (a later re-run of the run retries them).
    """
    import ray

    context = ray.data.DataContext.get_current()
    # Each attempt's execution starts once its actor pools (the engine's included) are up: an engine
    # that fails in its constructor fails the attempt right there, one that cannot be placed fails
    # it after ENGINE_START_TIMEOUT_S, and the engine's load time never counts as a stall.
    context.wait_for_min_actors_s = ENGINE_START_TIMEOUT_S
    # Ray Data's no-progress guard: nothing moved through any operator for this long = stalled.
    context.execution_no_progress_timeout_s = spec.run.stall_timeout_s
    engine_errors = failures.EngineErrors().attach()
    skipped, first = 0, None
    try:
        for number in range(1, spec.run.max_attempts + 1):
            index = ResumeIndex.build(spec, layout)
            ctx = _stage_context(spec, attempt, index)
            if number == 1:
                skipped, first = index.done, ctx
            pending = pending_units(units, index, spec)
            if number == 1 or pending.num_rows:
                progress.begin(spec, units, index)  # counts afresh from the work area
            if not pending.num_rows:
                break
            progress.say(f"[jobs] attempt {number}/{spec.run.max_attempts}: streaming {pending.num_rows} of {units.num_rows} "
                         f"input units ({index.done} sources done, {index.partial} partly done)")
            try:
                stream(spec, layout, ctx, pending, progress)
                break
            except Exception as exc:  # noqa: BLE001 - classified: re-attempted, or re-raised with a reason
                failure = failures.classify(exc)
                if failure.kind == "engine_start":
                    raise failures.JobFailed(
                        f"the engine could not start: {engine_errors.reason() or failure.reason} "
                        f"(model {spec.engine.model}); nothing more was run") from exc
                if not failure.retryable:  # a refused write, a bug: another attempt fails the same way
                    raise failures.JobFailed(
                        f"the stream failed ({failure.reason}); what is done stays in the work area and "
                        f"the next run resumes") from exc
                if number == spec.run.max_attempts:
                    if failure.kind == "stall":
                        failures.release_actor_pools()
                        _mark_unfinished(spec, layout, units, attempt, _stall_error(spec), progress)
                        break
                    raise failures.JobFailed(
                        f"attempt {number}/{spec.run.max_attempts} failed ({failure.reason}) and no attempts "
                        f"are left; what is done stays in the work area and the next run resumes") from exc
                released = failures.release_actor_pools()
                progress.say(f"[jobs] attempt {number}/{spec.run.max_attempts} failed ({failure.kind}: {failure.reason}); "
                             f"{released} actors of it ended; attempting again from the work area")
        return skipped, first
    finally:
        engine_errors.detach()


def _stall_error(spec: JobSpec) -> str:
    return (f"not processed: the pipeline made no progress for {spec.run.stall_timeout_s:.0f} s in each of "
            f"{spec.run.max_attempts} attempt(s), each with a fresh engine (the engine stalled, or could not be "
            f"placed); a re-run of this run retries it")


def _mark_unfinished(spec: JobSpec, layout: OutputLayout, units: pa.Table, attempt: str, error: str,
                     progress) -> None:
    """One error row per source the work area does not have as done (no engine: read stage only)."""
    index = ResumeIndex.build(spec, layout)
    ctx = _stage_context(spec, attempt, index)
    pending = pending_units(units, index, spec)
    if not pending.num_rows:
        return
    progress.say(f"[jobs] {pending.num_rows} input units unfinished after the last attempt: writing error rows "
                 f"({error.split(':')[0]})")
    ds = units_dataset(pending).flat_map(stages.expand_unit, fn_kwargs={"ctx": ctx}, num_cpus=0.1)
    ds = ds.map_batches(_unfinished_rows, fn_kwargs={"ctx": ctx, "error": error}, batch_format="pyarrow",
                        num_cpus=0.1)
    fs, work_path = resolve(layout.work, spec.storage)
    ds.write_parquet(work_path, filesystem=fs)


def _unfinished_rows(batch: pa.Table, ctx: stages.StageContext, error: str) -> pa.Table:
    rows = [stages.collect_segment(dict(source_id=r["source_id"], source_uri=r["source_uri"],
                                        source_row=r.get("source_row"), segment_index=stages.ERROR_SEGMENT,
                                        error=error, error_stage=STALL_STAGE), ctx)
            for r in batch.select([c for c in ("source_id", "source_uri", "source_row") if c in batch.column_names])
            .to_pylist()]
    return pa.Table.from_pylist(rows, schema=stages.WORK_SCHEMA)


def run_job(spec: JobSpec, progress=None) -> dict:
    """Run (or resume) the job; return the run summary (also written beside the output).

    progress: a `jobs.console.Progress` (the command line's progress line); None prints the start line only.
    """
    try:
        spec = spec.resolve()  # schema file, checkpoint checks, run date and id (a no-op when resolved)
        spec.engine.check_vllm_arguments()
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    progress = progress or NullProgress()
    started = time.time()
    layout = OutputLayout(spec)
    attempt = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    # Before Ray or any engine starts: inputs listable, output writable, model loadable.
    report = preflight.check(spec, f"{layout.root}/_work/{spec.run.run_id}")
    progress.say(f"[jobs] {report.line()}")
    ensure_ray(spec)

    try:
        units = expand_inputs(spec.inputs, spec.storage)
    except FileNotFoundError as exc:  # an input that matches nothing: fix the command (exit 2)
        raise ConfigError(str(exc)) from exc
    stream_started = time.time()
    skipped, ctx = stream_attempts(spec, layout, units, attempt, progress)
    stream_s = time.time() - stream_started
    progress.streamed()
    retry_rounds = retry.run_retry_rounds(spec, layout, ctx, infer_sources) if spec.output.retries else []
    finalize_started = time.time()
    finalize(spec, layout)
    finalize_s = time.time() - finalize_started
    summary = summarize(spec, layout, totals.run_totals(spec, layout, attempt), attempt=attempt, skipped=skipped,
                        started=started, stream_s=stream_s, finalize_s=finalize_s, retry_rounds=retry_rounds)
    if spec.output.subtitles:  # a separate step over the finished work area (jobs/subtitles.py)
        from jobs import subtitles

        summary["subtitles"] = subtitles.write(spec, layout)
    _write_json(layout.summary, summary, spec)
    return summary
