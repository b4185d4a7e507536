"""What a run asks of the cluster, checked before anything is launched."""

from __future__ import annotations

import math
import os

from raydeep.errors import ResourceError

# Ray Data's read and map tasks each need a whole CPU by default. If the training workers
# reserve every CPU, reads never get scheduled and training hangs forever with
# "Active & requested resources: 1/0 CPU" (measured on 2 cores: 2 workers x 1 CPU).
DATA_CPUS = 1.0


def cpus_per_worker(requested: float | str, *, num_workers: int, cluster_cpus: float,
                    max_node_cpus: float, use_gpu: bool) -> float:
    """Resolve ``scaling.cpus_per_worker`` and refuse configs that would starve Ray Data.

    ``auto``: GPU workers take 1 CPU each (their compute is on the GPU); CPU workers share
    what the cluster has after keeping ``DATA_CPUS`` for Ray Data, up to 4 each.
    """
    if requested == "auto":
        if use_gpu:
            cpw = 1.0
        else:
            cpw = min(4.0, (cluster_cpus - DATA_CPUS) / num_workers)
            # rounded down, so that the workers' sum never exceeds what is left by a float's last bit
            cpw = float(int(cpw)) if cpw >= 1 else math.floor(cpw * 1000 + 1e-9) / 1000
        if cpw <= 0:
            raise ResourceShortage(
                f"scaling: the cluster has {cluster_cpus:g} CPUs; {num_workers} workers plus "
                f"{DATA_CPUS:g} CPU for Ray Data need more. Lower scaling.num_workers",
                f"{num_workers} workers + {DATA_CPUS:g} CPU for Ray Data; the cluster has {cluster_cpus:g} CPUs",
                ({"CPU": 1.0},) * num_workers + ({"CPU": DATA_CPUS},),
            )
    else:
        cpw = float(requested)
    need = cpw * num_workers
    if need > cluster_cpus - DATA_CPUS + 1e-9:  # 1.9 - 1.0 is 0.8999999999999999 in floats
        best = (cluster_cpus - DATA_CPUS) / num_workers
        hint = f"set scaling.cpus_per_worker <= {best:g} (or 'auto')" if best > 0 else "lower scaling.num_workers"
        raise ResourceShortage(
            f"scaling: {num_workers} workers x {cpw:g} CPU = {need:g} of the cluster's {cluster_cpus:g} CPUs "
            f"leaves {cluster_cpus - need:g} for Ray Data, which needs {DATA_CPUS:g} to read data "
            f"(training would hang); {hint}",
            f"{need + DATA_CPUS:g} CPUs ({num_workers} workers x {cpw:g} + {DATA_CPUS:g} for Ray Data); the cluster "
            f"has {cluster_cpus:g}",
            ({"CPU": cpw},) * num_workers + ({"CPU": DATA_CPUS},),
        )
    if cpw > max_node_cpus:
        raise ResourceShortage(
            f"scaling.cpus_per_worker = {cpw:g}: no node has that many CPUs (largest: {max_node_cpus:g})",
            f"a node with {cpw:g} CPUs; the largest has {max_node_cpus:g}",
            ({"CPU": cpw},),
        )
    return cpw


# ---------------------------------------------------------------------------------------------
# Waiting for resources an autoscaler can add

WAIT_ENV = "RAYDEEP_WAIT_FOR_RESOURCES"  # seconds; set by --wait-for-resources
AUTOSCALER_WAIT_S = 900.0  # how long a detected autoscaler is given without the flag
POLL_S = 5.0
SHOW_EVERY_S = 15.0


class ResourceShortage(ResourceError):
    """The cluster has too little of something *now*; an autoscaler could add it.

    ``need`` is the short form for a countdown ("2 GPUs; the cluster has 0"); ``bundles`` are what the
    run's workers will ask for, handed to the autoscaler while waiting so that a cluster whose workers
    scale from zero sees the demand before any placement group exists.
    """

    def __init__(self, message: str, need: str = "", bundles: tuple[dict[str, float], ...] = ()) -> None:
        super().__init__(message)
        self.need = need or message
        self.bundles = tuple(bundles)

    def __reduce__(self):
        return (type(self), (str(self), self.need, self.bundles))


def autoscaler_report_can_launch(status: dict) -> bool:
    """Whether the v1 autoscaler's status (GCS key ``__autoscaling_status``, what ``ray status`` reads)
    is from an autoscaler with node types of its own (cluster launcher, KubeRay). A cluster started by
    hand runs a read-only autoscaler that mirrors its nodes as types ``node_<id>`` and launches nothing."""
    report = status.get("autoscaler_report") or {}
    if report.get("pending_launches") or report.get("pending_nodes"):
        return True
    types = set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {})
    types |= set((report.get("node_type_mapping") or {}).values())
    types |= set(((report.get("node_availability_summary") or {}).get("node_availabilities") or {}))
    return any(not t.startswith("node_") and t != "ray.head.default" for t in types)


def autoscaler_can_add_nodes() -> bool:
    """Whether the connected cluster has an autoscaler that can launch nodes (best effort: False when
    it cannot tell)."""
    try:
        import ray

        if not ray.is_initialized():
            return False
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):  # enabled only where a real autoscaler runs (KubeRay)
            return True
    except Exception:  # noqa: BLE001
        pass
    try:
        import json

        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return bool(raw) and autoscaler_report_can_launch(json.loads(raw))
    except Exception:  # noqa: BLE001
        return False


def wait_budget(env: dict[str, str] | None = None, detect=autoscaler_can_add_nodes) -> tuple[float, str] | None:
    """(seconds, why) to wait for a shortage, or None to refuse it at once: ``--wait-for-resources``
    (``RAYDEEP_WAIT_FOR_RESOURCES``) says how long; else a cluster with an autoscaler gets
    ``AUTOSCALER_WAIT_S``."""
    env = os.environ if env is None else env
    raw = env.get(WAIT_ENV, "").strip()
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            raise ResourceError(f"{WAIT_ENV}={raw!r}: expected seconds") from None
        return (seconds, "--wait-for-resources") if seconds > 0 else None
    if detect():
        return AUTOSCALER_WAIT_S, "the cluster has an autoscaler"
    return None


class ResourceWait:
    """Waits, with a countdown on stderr, until the cluster grows or the deadline passes. One wait
    spans every shortage of one plan (GPUs first, then perhaps CPUs): one deadline."""

    def __init__(self, seconds: float, why: str, *, clock=None, sleep=None, out=None) -> None:
        import sys
        import time

        self.clock, self.sleep = clock or time.monotonic, sleep or time.sleep
        self.out = out or sys.stderr
        self.seconds, self.why = seconds, why
        self.deadline = self.clock() + seconds

    def grown(self, shortage: ResourceShortage, info, refresh):
        """``info`` once ``refresh()`` shows more CPUs, GPUs or nodes than when this began (adjusted by
        what the caller had already taken off ``info``); raises ``shortage`` with the time waited at the
        deadline."""
        from dataclasses import replace

        start = refresh()
        self._demand(shortage.bundles)
        shown = None
        try:
            while True:
                left = self.deadline - self.clock()
                if left <= 0:
                    raise ResourceShortage(f"{shortage} (waited {self.seconds:g} s for it: {self.why})",
                                           shortage.need, shortage.bundles)
                if shown is None or shown - left >= SHOW_EVERY_S:
                    m, s = divmod(int(left), 60)
                    print(f"waiting for resources ({self.why}): {shortage.need}; {m}:{s:02d} left (Ctrl-C stops)",
                          file=self.out, flush=True)
                    shown = left
                self.sleep(min(POLL_S, max(left, 0.0)))
                now = refresh()
                if (now.gpus, now.cpus, now.nodes) != (start.gpus, start.cpus, start.nodes):
                    print(f"the cluster now has {now.gpus:g} GPUs, {now.cpus:g} CPUs on {now.nodes} node(s)",
                          file=self.out, flush=True)
                    return replace(info, gpus=info.gpus + now.gpus - start.gpus, cpus=info.cpus + now.cpus - start.cpus,
                                   nodes=now.nodes, max_node_cpus=now.max_node_cpus)
        finally:
            self._demand(())

    @staticmethod
    def _demand(bundles) -> None:
        """Tell an autoscaler what the workers will ask for (an empty list withdraws it)."""
        try:
            import ray

            if not ray.is_initialized():
                return
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[dict(b) for b in bundles])
        except Exception:  # noqa: BLE001 - without an autoscaler there is no one to tell
            pass
