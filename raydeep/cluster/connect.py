"""Connecting to a Ray cluster, or starting an embedded local one."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from raydeep.errors import RaydeepError


@dataclass(frozen=True)
class ClusterInfo:
    address: str | None  # None: the embedded local Ray this process started
    cpus: float
    gpus: float
    nodes: int
    max_node_cpus: float
    dashboard_url: str | None


def disconnect() -> None:
    """Leave Ray now (and stop the local Ray this process started), if this process used Ray.

    Ray's own exit hook does the same but first sleeps 0.5 s so that workers' last log lines
    reach the console; a raydeep command is done with its workers when it returns, so that is
    half a second of every command's wall time (benchmarks/startup.py). Never raises: the
    command's outcome is decided.
    """
    import sys

    if "ray" not in sys.modules:  # commands that never touched Ray do not import it now
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - Ray's exit hook tries again
        pass


def connect(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False) -> ClusterInfo:
    """Connect to ``address`` (else ``RAY_ADDRESS``), or start a local Ray on this machine.

    A local Ray binds its dashboard to 127.0.0.1 (Ray Tune needs the dashboard to clean up
    the placement groups of early-stopped trials; see RAY_NOTES).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    prepare_auth_env(address)
    if not ray.is_initialized():
        common = dict(
            logging_level=logging.INFO if verbose else logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
            runtime_env={"env_vars": job_env(verbose)},
        )
        try:
            if address:
                ray.init(address=address, **common)
            else:
                # Ray starts worker processes at niceness 15, so on a machine doing anything else
                # the training workers yield to it (benchmarks/overhead.py on a loaded 2-core VM:
                # 146 -> 207 samples/s; on a quiet one +4%, within noise). The local Ray started
                # here runs them at the command's own priority; a cluster keeps its own setting.
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", include_dashboard=True, **common)
        except ConnectionError as exc:
            raise RaydeepError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return describe(address)


def job_env(verbose: bool) -> dict[str, str]:
    """Environment for every process of this job (Train controller, workers, Ray Data tasks)."""
    env = {
        # Ray Train's controller polls workers for reports every 2 s by default, and a worker's
        # report blocks until the previous one was consumed: on short epochs that added ~2 s
        # per epoch (measured: 40-epoch demo, 24 s of training in 140 s). 0.25 s costs a few
        # cheap RPCs a second.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"),
    }
    if not verbose:
        # Ray Data's per-execution INFO lines ("Starting execution of Dataset ...") would
        # otherwise fill the console every epoch.
        env["RAY_DATA_LOG_LEVEL"] = "WARNING"
    else:
        # --debug: NCCL says which interfaces, rings and transports it picked, and why it hangs
        env["NCCL_DEBUG"] = os.environ.get("NCCL_DEBUG", "INFO")
    return env


def prepare_auth_env(address: str | None) -> None:
    """Send the Ray auth token when connecting to a cluster and one is configured.

    Ray 2.60 heads enable token auth by default, but a connecting driver only sends its token
    when RAY_AUTH_MODE=token is in its environment before Ray is first imported; without it,
    ray.init retries "InvalidAuthToken" for minutes instead of failing. The CLI calls this
    first thing.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address and "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def auth_token_available() -> bool:
    """Whether a Ray auth token is configured: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def describe(address: str | None) -> ClusterInfo:
    import ray

    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_node_cpus = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes), default=0.0)
    ctx = ray.get_runtime_context()
    url = getattr(ctx, "dashboard_url", None) or ray._private.worker.global_worker.node.address_info.get("webui_url")
    return ClusterInfo(
        address=address,
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        nodes=len(nodes),
        max_node_cpus=float(max_node_cpus),
        dashboard_url=f"http://{url}" if url and not url.startswith("http") else url,
    )
