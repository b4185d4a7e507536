"""What a run asks of the cluster, checked before anything is launched."""

from __future__ import annotations

import math

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
            raise ResourceError(
                f"scaling: the cluster has {cluster_cpus:g} CPUs; {num_workers} workers plus "
                f"{DATA_CPUS:g} CPU for Ray Data need more. Lower scaling.num_workers"
            )
    else:
        cpw = float(requested)
    need = cpw * num_workers
    if need > cluster_cpus - DATA_CPUS + 1e-9:  # 1.9 - 1.0 is 0.8999999999999999 in floats
        best = (cluster_cpus - DATA_CPUS) / num_workers
        hint = f"set scaling.cpus_per_worker <= {best:g} (or 'auto')" if best > 0 else "lower scaling.num_workers"
        raise ResourceError(
            f"scaling: {num_workers} workers x {cpw:g} CPU = {need:g} of the cluster's {cluster_cpus:g} CPUs "
            f"leaves {cluster_cpus - need:g} for Ray Data, which needs {DATA_CPUS:g} to read data "
            f"(training would hang); {hint}"
        )
    if cpw > max_node_cpus:
        raise ResourceError(
            f"scaling.cpus_per_worker = {cpw:g}: no node has that many CPUs (largest: {max_node_cpus:g})"
        )
    return cpw
