"""How many trials of a sweep run at once, for ``raydeep plan`` (the same arithmetic ``tune`` uses:
``plan_run`` with the trial's token CPU taken off, then ``max_concurrent``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from raydeep.cluster.connect import ClusterInfo
from raydeep.config import Config
from raydeep.errors import ResourceError
from raydeep.sweeps.plan import TRIAL_CPU, initial_trials, max_concurrent, trial_resources
from raydeep.trainers.plan import DataPlan, plan_run


@dataclass(frozen=True)
class SweepFit:
    trials: int | None  # None: optuna draws them as it goes (tune.search.num_samples of them)
    at_once: int  # 0: not one trial fits
    cpus_per_trial: float
    gpus_per_trial: float
    why: str = ""  # when none fits

    def describe(self) -> str:
        n = f"{self.trials} trials" if self.trials is not None else "optuna trials"
        shape = f"each {self.cpus_per_trial:g} CPU" + (f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else "")
        return f"{n}, {shape}; {self.at_once} at once" + (f" ({self.why})" if self.why else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_fit(cfg: Config, info: ClusterInfo, data: DataPlan) -> SweepFit:
    trials = initial_trials(cfg)
    plan = plan_run(cfg, replace(info, cpus=info.cpus - TRIAL_CPU), data)
    cpus, gpus = trial_resources(plan)
    n = len(trials) if trials is not None else cfg.tune.search.trials
    try:
        at_once = max_concurrent(cfg.tune.max_concurrent_trials, plan=plan, cluster_cpus=info.cpus,
                                 cluster_gpus=info.gpus, num_trials=n)
        why = ""
    except ResourceError as exc:
        at_once, why = 0, str(exc)
    return SweepFit(None if trials is None else len(trials), at_once, cpus, gpus, why)
