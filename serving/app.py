"""The endpoint's Serve application: builder (for `serve run`, Serve configs, KubeRay) and CLI.

    python -m serving.app --model PATH [--host H] [--port P] [--api-keys-file F] [--<any ServingConfig field> V]
    serve run serving.app:build_app model=PATH api_keys_file=F
    # Serve config / RayService:  import_path: serving.app:build_app   args: {model: ..., device: gpu, ...}

Graph: one ingress deployment (`serving.ingress.GuardedOpenAiIngress`, a fraction of a CPU) in front of
one `ray.serve.llm` LLMServer deployment per model (vLLM engine with the project's registration,
engine kwargs from `model.engine.EngineSettings`, autoscaled between min and max replicas).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from serving import ray_settings
from serving.config import ServingConfig

logger = logging.getLogger("serving.app")

APP_NAME = "gemma4-unified"
# Non-secret settings the ingress needs to reach the object store, copied into its runtime_env when
# set where the app is built. Credentials stay out of the app config (Ray logs runtime_env env_vars):
# replicas get them from their own environment (pod env from a Kubernetes secret, instance profiles,
# a mounted credentials file named by AWS_SHARED_CREDENTIALS_FILE).
_STORE_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
)


def _resolve_device(config: ServingConfig) -> str:
    """"auto" decided where the engine runs, not where the app is built (a KubeRay head has no GPU)."""
    if config.device != "auto":
        return config.device
    try:
        import ray

        if ray.is_initialized():
            return "gpu" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    except Exception:  # noqa: BLE001 - fall back to the local check
        pass
    return config.engine_settings().resolved_device()


def llm_config(config: ServingConfig):
    """The `ray.serve.llm.LLMConfig` of the model deployment."""
    from ray.serve.llm import LLMConfig

    device = _resolve_device(config)
    settings = config.model_copy(update={"device": device}).engine_settings()
    deployment_config = {
        "max_ongoing_requests": config.max_ongoing_requests,
        "max_queued_requests": config.max_queued_requests,
        "graceful_shutdown_timeout_s": config.graceful_shutdown_timeout_s,
        "graceful_shutdown_wait_loop_s": config.graceful_shutdown_wait_loop_s,
        # The model server's per-call access log line ("CALL chat OK 52ms") repeats the ingress's own
        # line for every request; the ingress keeps its access log.
        "logging_config": {"enable_access_log": config.llm_access_log},
    }
    if config.min_replicas == config.max_replicas:
        # A fixed size needs no autoscaling: without an autoscaling_config the handles and replicas
        # do not collect and push per-request load metrics to the controller (measured in
        # docs/endpoint.md: the controller's CPU per request).
        deployment_config["num_replicas"] = config.min_replicas
    else:
        deployment_config["autoscaling_config"] = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        }
    # ray.serve.llm adds the replica actor's CPUs to the engine's first placement bundle ({"CPU": 1} on
    # CPU): 2 logical CPUs per replica by default, which leaves nothing for the ingress on a 2-core
    # machine. The replica actor only runs the async front end, so a fraction is enough on CPU.
    replica_cpus = config.llm_replica_num_cpus
    if replica_cpus is None and device == "cpu":
        replica_cpus = 0.1
    if replica_cpus is not None:
        deployment_config["ray_actor_options"] = {"num_cpus": replica_cpus}
    experimental = {"stream_batching_interval_ms": config.stream_batching_interval_ms}
    engine_kwargs = settings.ray_engine_kwargs()
    # response_format json_object / json_schema: the batch job's guided-decoding settings
    # (model/structured_outputs.py). Guided requests only.
    from model.structured_outputs import ENGINE_CONFIG

    engine_kwargs.setdefault("structured_outputs_config", dict(ENGINE_CONFIG))
    if config.per_request_metrics:
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
    """Serve application builder: `serve run serving.app:build_app model=...` or a Serve config's args.

    Serve calls builders with exactly one argument, the args dict (`ServingConfig` fields). One extra
    key, `ingress_env`, adds *non-secret* environment variables to the ingress replicas (e.g.
    AWS_SHARED_CREDENTIALS_FILE pointing at a mounted secret). Never put keys or credentials there:
    Ray's runtime-env agent logs runtime_env env_vars verbatim.
    """
    merged = dict(args or {})
    ingress_env = merged.pop("ingress_env", None)
    return build_app_from_config(ServingConfig.model_validate(merged), ingress_env=ingress_env)


def build_app_from_config(config: ServingConfig, *, ingress_env: dict | None = None):
    """The Serve application for a validated config (see `build_app`)."""
    from ray import serve
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import make_fastapi_ingress

    from serving.ingress import ENDPOINTS, GuardedOpenAiIngress, build_fastapi_app, model_card

    model_cfg = llm_config(config)
    model_id = config.served_model_id
    from serving.llm_server import EagerStreamLLMServer

    deployment_cls = EagerStreamLLMServer if config.stream_first_chunk_immediately else None
    # name_prefix: the deployment keeps ray.serve.llm's name, "LLMServer:<model id>".
    server = build_llm_deployment(model_cfg, deployment_cls=deployment_cls, name_prefix="LLMServer:")

    env = {k: os.environ[k] for k in _STORE_ENV if os.environ.get(k)}
    env.update(ingress_env or {})
    ingress_cls = make_fastapi_ingress(GuardedOpenAiIngress, endpoint_map=ENDPOINTS, app=build_fastapi_app(config))
    ingress = serve.deployment(
        ingress_cls,
        name="OpenAiIngress",
        num_replicas=config.ingress_replicas,
        max_ongoing_requests=10_000,  # admission is the guard's job (per key), not Serve's queue
        graceful_shutdown_timeout_s=config.graceful_shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=config.graceful_shutdown_wait_loop_s,
        ray_actor_options={"num_cpus": config.ingress_num_cpus, "runtime_env": {"env_vars": env}},
    )
    return ingress.bind(
        llm_deployments={model_id: server},
        model_cards={model_id: model_card(model_id, model_cfg, config)},
        serving_config=config.model_dump(),
    )


# -- CLI ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.app",
        description="Serve Gemma 4 Unified as an OpenAI-compatible endpoint on Ray Serve.",
    )
    parser.add_argument("--config", help="YAML file with ServingConfig fields (flags override it).")
    parser.add_argument("--ray-address", default=None, help="Attach to this Ray cluster ('auto': the local one).")
    parser.add_argument("--verbose", action="store_true", help="Show Ray's and vLLM's logs here, not in the log file.")
    parser.add_argument("--log-file", default=None, help="Where Ray's and vLLM's logs go (default: beside Ray's logs).")
    parser.add_argument("--ready-timeout", type=float, default=900.0, help="Seconds to wait for the first answer.")
    for name, field in ServingConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, help=field.description or None)
    return parser


def config_from_argv(argv: list[str] | None = None) -> tuple[ServingConfig, argparse.Namespace]:
    ns = _parser().parse_args(argv)
    values: dict = {}
    if ns.config:
        import yaml

        with open(ns.config) as handle:
            values.update(yaml.safe_load(handle) or {})
    values.update({k: v for k, v in vars(ns).items() if k in ServingConfig.model_fields and v is not None})
    return ServingConfig.model_validate(values), ns


def main(argv: list[str] | None = None) -> int:
    """Start the app; print where its logs go, then its URL once it answers (GET /health is 200)."""
    from jobs.console import LogFile, default_log_path

    config, ns = config_from_argv(argv)
    log = LogFile(ns.log_file or default_log_path("serving", APP_NAME), verbose=ns.verbose)
    with log:
        print(f"[serving] Ray and vLLM logs: {'shown here (--verbose)' if ns.verbose else log.path}",
              file=log.out, flush=True)
        return _serve(config, ns, log.out)


def _serve(config: ServingConfig, ns: argparse.Namespace, out) -> int:
    import ray
    from ray import serve

    from jobs.console import wait_until_answering

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = ns.ray_address or os.environ.get("RAY_ADDRESS")
    started = time.monotonic()
    work_dir = None
    if not address:
        # Serve's processes read its settings from their environment at start (serving/ray_settings.py).
        work_dir = tempfile.mkdtemp(prefix="serve-", dir="/tmp")  # short: HAProxy puts unix sockets here
        settings = ray_settings.apply(ray_settings.local_cluster_env(work_dir, fast_paths=config.ray_fast_paths))
        logger.info("Ray Serve settings: %s", {k: v for k, v in settings.items() if k in ray_settings.FAST_PATHS})
    else:
        logger.info("attaching to %s: Ray Serve's fast paths are that cluster's settings (serving/ray_settings.py)", address)
    ray.init(address=address, runtime_env={"env_vars": config.engine_settings().env()} if not address else None)

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
        serve.start(http_options={"host": config.host, "port": config.port})
        url = f"http://{config.host}:{config.port}{config.route_prefix.rstrip('/')}"
        print(f"[serving] starting {config.served_model_id} on {url}/v1 (engine start: about a minute on CPU)",
              file=out, flush=True)
        serve.run(app, name=APP_NAME, route_prefix=config.route_prefix, blocking=False)
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


if __name__ == "__main__":
    sys.exit(main())
