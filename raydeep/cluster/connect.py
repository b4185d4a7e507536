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


def connect(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False) -> ClusterInfo:
    """Connect to ``address`` (else ``RAY_ADDRESS``), or start a local Ray on this machine.

    A local Ray binds its dashboard to 127.0.0.1 (Ray Tune needs the dashboard to clean up
    the placement groups of early-stopped trials; see RAY_NOTES).
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        common = dict(
            logging_level=logging.INFO if verbose else logging.WARNING,
            log_to_driver=True,
            configure_logging=True,
        )
        try:
            if address:
                ray.init(address=address, **common)
            else:
                ray.init(num_cpus=num_cpus, dashboard_host="127.0.0.1", include_dashboard=True, **common)
        except ConnectionError as exc:
            raise RaydeepError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    return describe(address)


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
