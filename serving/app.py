"""The endpoint's Serve application: builder (for `serve run`, Serve configs, KubeRay) and CLI.

    python -m serving.app --model PATH [--host H] [--port P] [--api-keys-file F] [--<any setting> V]
    serve run serving.app:build_app engine.model=PATH auth.api_keys_file=F
    # Serve config / RayService:  import_path: serving.app:build_app
    #                             args: {engine: {model: ..., device: gpu}, auth: {api_keys_file: ...}}

Graph: one ingress deployment (`serving.ingress.GuardedOpenAiIngress`, a fraction of a CPU) in front of
one `ray.serve.llm` LLMServer deployment per model (vLLM engine with the project's registration,
engine kwargs from `model.engine.EngineConfig`, autoscaled between min and max replicas).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

from pydantic import ValidationError

from model.config import add_arguments, describe_error, given_values, merge, nest
from serving import ray_settings
from serving.config import ServingConfig

logger = logging.getLogger("serving.app")

APP_NAME = "gemma4-unified"


def _resolve_device(config: ServingConfig) -> str:
    """"auto" decided where the engine runs, not where the app is built (a KubeRay head has no GPU)."""
    if config.engine.device != "auto":
        return config.engine.device
    try:
        import ray

        if ray.is_initialized():
            return "gpu" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    except Exception:  # noqa: BLE001 - fall back to the local check
        pass
    return config.engine.resolved_device()


def llm_config(config: ServingConfig):
    """The `ray.serve.llm.LLMConfig` of the model deployment."""
    from ray.serve.llm import LLMConfig

    device = _resolve_device(config)
    # Replicas may run with another working directory: an absolute checkpoint path.
    settings = config.engine.model_copy(update={
        "device": device, "model": str(pathlib.Path(config.engine.model).expanduser().resolve())})
    scaling = config.deployment
    deployment_config = {
        "max_ongoing_requests": scaling.max_ongoing_requests,
        "max_queued_requests": scaling.max_queued_requests,
        "graceful_shutdown_timeout_s": scaling.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": scaling.graceful_shutdown_wait_loop_s,
        # The model server's per-call access log line ("CALL chat OK 52ms") repeats the ingress's own
        # line for every request; the ingress keeps its access log.
        "logging_config": {"enable_access_log": scaling.llm_access_log},
    }
    if scaling.min_replicas == scaling.max_replicas:
        # A fixed size needs no autoscaling: without an autoscaling_config the handles and replicas
        # do not collect and push per-request load metrics to the controller (measured in
        # docs/endpoint.md: the controller's CPU per request).
        deployment_config["num_replicas"] = scaling.min_replicas
    else:
        deployment_config["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        }
    # ray.serve.llm adds the replica actor's CPUs to the engine's first placement bundle ({"CPU": 1} on
    # CPU): 2 logical CPUs per replica by default, which leaves nothing for the ingress on a 2-core
    # machine. The replica actor only runs the async front end, so a fraction is enough on CPU.
    replica_cpus = scaling.llm_replica_num_cpus
    if replica_cpus is None and device == "cpu":
        replica_cpus = 0.1
    if replica_cpus is not None:
        deployment_config["ray_actor_options"] = {"num_cpus": replica_cpus}
    experimental = {"stream_batching_interval_ms": scaling.stream_batching_interval_ms}
    engine_kwargs = settings.ray_engine_kwargs()
    # response_format json_object / json_schema: the batch job's guided-decoding settings
    # (model/structured_outputs.py). Guided requests only.
    from model.structured_outputs import ENGINE_CONFIG

    engine_kwargs.setdefault("structured_outputs_config", dict(ENGINE_CONFIG))
    if scaling.per_request_metrics:
        engine_kwargs["enable_per_request_metrics"] = True  # a vLLM front-end flag
    return LLMConfig(
        model_loading_config={"model_id": config.served_model_id, "model_source": settings.model},
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": settings.env()},
        accelerator_config={"kind": "cpu"} if device == "cpu" else {"kind": "gpu"},
        deployment_config=deployment_config,
        experimental_configs=experimental,
        log_engine_metrics=True,  # vLLM engine metrics exported through Ray's Prometheus endpoint
    )


def build_app(args: dict):
    """Serve application builder: `serve run serving.app:build_app engine.model=...` or a Serve config's args.

    Serve calls builders with exactly one argument, the args dict: `ServingConfig` sections, or dotted
    keys from `serve run serving.app:build_app engine.model=PATH auth.api_keys_file=F`. One extra
    key, `ingress_env`, adds *non-secret* environment variables to the ingress replicas (e.g.
    AWS_SHARED_CREDENTIALS_FILE pointing at a mounted secret). Never put keys or credentials there:
    Ray's runtime-env agent logs runtime_env env_vars verbatim.
    """
    merged = dict(args or {})
    ingress_env = merged.pop("ingress_env", None)
    return build_app_from_config(ServingConfig.model_validate(nest(merged)), ingress_env=ingress_env)


def build_app_from_config(config: ServingConfig, *, ingress_env: dict | None = None):
    """The Serve application for a validated config (see `build_app`)."""
    from ray import serve
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import make_fastapi_ingress

    from connectors.storage import store_env
    from serving.ingress import ENDPOINTS, GuardedOpenAiIngress, build_fastapi_app, model_card
    from serving.ray_llm_internals import EagerStreamLLMServer

    config.engine.check_vllm_arguments()
    model_cfg = llm_config(config)
    model_id = config.served_model_id
    deployment_cls = EagerStreamLLMServer if config.deployment.stream_first_chunk_immediately else None
    # name_prefix: the deployment keeps ray.serve.llm's name, "LLMServer:<model id>".
    server = build_llm_deployment(model_cfg, deployment_cls=deployment_cls, name_prefix="LLMServer:")

    # The ingress reads s3:// media: the store's non-secret settings of where the app is built.
    env = {**store_env(), **(ingress_env or {})}
    ingress_cls = make_fastapi_ingress(GuardedOpenAiIngress, endpoint_map=ENDPOINTS, app=build_fastapi_app(config))
    ingress = serve.deployment(
        ingress_cls,
        name="OpenAiIngress",
        num_replicas=config.deployment.ingress_replicas,
        max_ongoing_requests=10_000,  # admission is the guard's job (per key), not Serve's queue
        graceful_shutdown_timeout_s=config.deployment.graceful_shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=config.deployment.graceful_shutdown_wait_loop_s,
        ray_actor_options={"num_cpus": config.deployment.ingress_num_cpus, "runtime_env": {"env_vars": env}},
    )
    return ingress.bind(
        llm_deployments={model_id: server},
        model_cards={model_id: model_card(model_id, model_cfg, config)},
        serving_config=config.model_dump(),
    )


# -- CLI ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """The options: one per ServingConfig field, grouped by section (model/config.py makes them)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.app",
        description="Serve Gemma 4 Unified as an OpenAI-compatible endpoint on Ray Serve.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of ServingConfig sections (options override it)")
    add_arguments(parser, ServingConfig, title="endpoint")
    console = parser.add_argument_group("console (not endpoint settings)")
    console.add_argument("--ray-address", default=None, help="attach to this Ray cluster ('auto': the local one)")
    console.add_argument("--verbose", action="store_true", help="show Ray's and vLLM's logs here, not in the log file")
    console.add_argument("--log-file", default=None, help="where Ray's and vLLM's logs go (default: beside Ray's logs)")
    console.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for the first answer")
    return parser


def config_from_argv(argv: list[str] | None = None) -> tuple[ServingConfig, argparse.Namespace]:
    """The config the options describe (over `--config`); a bad setting exits 2 naming its option."""
    parser = _parser()
    ns = parser.parse_args(argv)
    values: dict = {}
    if ns.config:
        import yaml

        with open(ns.config) as handle:
            values = yaml.safe_load(handle) or {}
    try:
        return ServingConfig.model_validate(merge(values, given_values(ns, ServingConfig))), ns
    except ValidationError as exc:
        parser.error(describe_error(exc, ServingConfig))


def main(argv: list[str] | None = None) -> int:
    """Start the app; print where its logs go, then its URL once it answers (GET /health is 200)."""
    from model.logfile import LogFile, default_log_path

    config, ns = config_from_argv(argv)
    log = LogFile(ns.log_file or default_log_path("serving", APP_NAME), verbose=ns.verbose)
    with log:
        print(f"[serving] Ray and vLLM logs: {'shown here (--verbose)' if ns.verbose else log.path}",
              file=log.out, flush=True)
        return _serve(config, ns, log.out)


def _serve(config: ServingConfig, ns: argparse.Namespace, out) -> int:
    import ray
    from ray import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = ns.ray_address or os.environ.get("RAY_ADDRESS")
    started = time.monotonic()
    work_dir = None
    if not address:
        # Serve's processes read its settings from their environment at start (serving/ray_settings.py).
        work_dir = tempfile.mkdtemp(prefix="serve-", dir="/tmp")  # short: HAProxy puts unix sockets here
        settings = ray_settings.apply(ray_settings.local_cluster_env(work_dir, fast_paths=config.deployment.ray_fast_paths))
        logger.info("Ray Serve settings: %s", {k: v for k, v in settings.items() if k in ray_settings.FAST_PATHS})
    else:
        logger.info("attaching to %s: Ray Serve's fast paths are that cluster's settings (serving/ray_settings.py)", address)
    ray.init(address=address, runtime_env={"env_vars": config.engine.env()} if not address else None)

    # SIGTERM (Kubernetes, systemd, bench) and Ctrl-C stop the app gracefully at any point, also while
    # the engine is still starting: Serve drains in-flight requests (graceful_shutdown_* settings).
    def _stop(*_):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        # Build first (the builder imports ray.serve.llm and vLLM's API layer: seconds), then open the
        # port and register the app at once: the route exists from the first answer on, and the
        # ingress answers 503 + Retry-After until the model is deployed (serving/readiness.py).
        app = build_app_from_config(config)
        http = config.http
        serve.start(http_options={"host": http.host, "port": http.port})
        url = f"http://{http.host}:{http.port}{http.route_prefix.rstrip('/')}"
        print(f"[serving] starting {config.served_model_id} on {url}/v1 (engine start: about a minute on CPU)",
              file=out, flush=True)
        serve.run(app, name=APP_NAME, route_prefix=http.route_prefix, blocking=False)
        probe = url.replace("://0.0.0.0:", "://127.0.0.1:") + "/health"
        waited = wait_until_answering(probe, ns.ready_timeout)
        if waited is None:
            print(f"[serving] not answering {probe} after {ns.ready_timeout:.0f} s; see the log file", file=out, flush=True)
            return 1
        print(f"[serving] ready: {config.served_model_id} answering at {url}/v1 "
              f"({time.monotonic() - started:.0f} s after start)", file=out, flush=True)
        while True:
            time.sleep(3600)
    except _Stop:
        print("[serving] stopping: draining in-flight requests", file=out, flush=True)
    finally:
        try:
            serve.delete(APP_NAME)
        finally:
            if not address:
                serve.shutdown()
                ray.shutdown()
            if work_dir:
                shutil.rmtree(work_dir, ignore_errors=True)
    return 0


class _Stop(Exception):
    pass


def wait_until_answering(url: str, timeout_s: float, *, interval_s: float = 1.0) -> float | None:
    """Seconds until `url` answers 200 (None after timeout_s): the endpoint's readiness, as clients see it."""
    import urllib.error
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(interval_s)
    return None


if __name__ == "__main__":
    sys.exit(main())
