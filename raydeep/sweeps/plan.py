"""What a sweep is before it runs, decided on the driver: the space checked against the config
models, the trials listed, the resources each trial holds, where the sweep stores its state.

Before anything starts (pure: no Ray, no data):

* whether the space is runnable: every key exists (did-you-mean otherwise) and may be searched;
  every choice and both bounds (and a point between them) of every distribution give a config
  the models accept; the scheduler and search can use every distribution (``check_space``);
* the trials of a random or grid search, listed up front, each distinct (``initial_trials``).

Once Ray is up: every listed trial plans against the real data and the concurrency fits the
cluster without starving Ray Data (``plan_sweep``, ``max_concurrent``), giving the ``Sweep``
that ``runner`` runs and ``results`` reports on.

Where things go: the sweep directory (``runs/<name>-sweep-<time>`` or ``--run-dir``) is the
driver's: ``config.yaml``, ``trials.jsonl`` and ``trials/<id>.yaml``, the leaderboard,
``best.yaml``, ``sweep.png``. Tune's experiment state and the trials' Train runs go to the
sweep's *storage*: the same directory by default, or ``<run.storage>/<sweep name>/`` when
``run.storage`` is ``s3://...``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import random
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel

from raydeep.cluster.connect import ClusterInfo
from raydeep.cluster.resources import DATA_CPUS
from raydeep.config import Config
from raydeep.datasets.storage import resolve_storage
from raydeep.errors import ConfigError, ResourceError
from raydeep.sections import PER_CLASS
from raydeep.sweeps.space import (
    FIXED,
    SELECTORS,
    Distribution,
    apply_params,
    canonical,
    pbt_mutable,
    representative,
)
from raydeep.sweeps.trial import TrialContext, TrialStorage, trial_config, validate_raw
from raydeep.trainers.plan import DataPlan, RunPlan, plan_run
from raydeep.trainers.schedules import SCHEDULES, check_run

# The Tune trial itself only builds, fits and follows a TorchTrainer; its workers reserve their
# own placement group. Tune refuses {"CPU": 0}, so a token.
TRIAL_CPU = 0.1


# ---------------------------------------------------------------------------------------------
# Checking the space before anything starts


def base_raw(cfg: Config) -> dict:
    """The base config as a raw dict, without the tune section, in the user's own shape
    (fields left at their defaults stay out, so a substituted schedule gets its own defaults),
    except the selectors, spelled out: ``space.apply_params`` reads them without the models."""
    raw = cfg.model_dump(mode="json", exclude_unset=True, exclude={"tune"})
    for key in SELECTORS:  # schedule.name: the union needs its tag, even for the default
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = getattr(getattr(cfg, section), name)
    return raw


def _check_key(key: str, where: str) -> None:
    """An unknown key (with a did-you-mean), a section, or a key the sweep fixes: one line."""
    for fixed, why in FIXED.items():
        if key == fixed or key.startswith(fixed + "."):
            raise ConfigError(f"{where}.{key}: cannot be searched: {why}")
    parts = key.split(".")

    def unknown(i: int, names: list[str]) -> ConfigError:
        close = difflib.get_close_matches(parts[i], names, n=1)
        hint = f"did you mean '{'.'.join(parts[:i] + [close[0]])}'?" if close else f"allowed: {', '.join(names)}"
        return ConfigError(f"{where}.{key}: unknown key '{parts[i]}' in {'.'.join(parts[:i]) or 'the config'} "
                           f"({hint})")

    if parts[0] == "schedule":  # a discriminated union: a key of any schedule may be searched
        names = ["name"] + sorted({f for cls in SCHEDULES.values() for f in cls.model_fields} - {"name"})
        if len(parts) == 1:
            raise ConfigError(f"{where}.{key}: is a section; search one of its keys, e.g. schedule.name")
        if parts[1] not in names:
            raise unknown(1, names)
        if len(parts) > 2:
            raise ConfigError(f"{where}.{key}: schedule.{parts[1]} is a value, not a section")
        return
    model: Any = Config
    for i, part in enumerate(parts):
        if model is None:
            raise ConfigError(f"{where}.{key}: {'.'.join(parts[:i])} is a value, not a section")
        names = [f for f in model.model_fields if not (model is Config and f in ("tune", "name"))]
        if part not in names:
            raise unknown(i, names)
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if model is not None:
        raise ConfigError(f"{where}.{key}: is a section; search one of its keys, "
                          f"e.g. {key}.{next(iter(model.model_fields))}")


def _contexts(space: dict[str, Distribution]):
    """Assignments of the searched selectors, the representative one first."""
    sels = [k for k in SELECTORS if k in space and space[k].kind in ("choice", "grid")]
    yield {}
    for combo in itertools.product(*(space[k].values for k in sels)):
        yield dict(zip(sels, combo))


def _test_values(d: Distribution) -> list[tuple[str, Any]]:
    if d.kind in ("choice", "grid"):
        return [(f"{d.kind} value", v) for v in d.values]
    if d.kind == "randint":
        return [("lower bound", int(d.low)), ("upper bound", int(d.high))]
    mid = (d.low + d.high) / 2 if d.kind == "uniform" else math.sqrt(d.low * d.high)
    return [("lower bound", d.low), ("upper bound", d.high), ("value between the bounds", mid)]


def check_space(cfg: Config, source: str) -> None:
    """Refuse, in one line, a space the sweep cannot run: an unknown or fixed key, a value the
    config models reject, a parameter that never applies, or a distribution the scheduler or
    search cannot use. Pure: no Ray, no data."""
    t = cfg.tune
    if t is None:
        raise ConfigError(f"{source}: no tune: section; add one (see configs/sweep-digits-lt.yaml), "
                          f"or run it with raydeep train")
    if cfg.run.checkpoints.mid_epoch:  # a trial reports once per epoch (ASHA's rungs, PBT's segments)
        raise ConfigError(f"{source}: run.checkpoint_every = {cfg.run.checkpoints.model_dump(exclude_none=True)}: "
                          "a sweep checkpoints per epoch only; use an integer (epochs), or raydeep train for "
                          "steps/minutes")
    where = f"{source}: tune.space"
    space = t.space
    for key in space:
        _check_key(key, where)

    search, sched = t.search.name, t.scheduler.name
    for key, d in space.items():
        if search == "grid" and not d.finite:
            raise ConfigError(f"{where}.{key}: search: grid cannot enumerate {d.describe()}; "
                              f"use grid: [...] or choice: [...], or search: random")
        if search == "optuna" and d.kind == "grid":
            raise ConfigError(f"{where}.{key}: search: optuna draws its own points and cannot run a grid; "
                              f"use choice: {list(d.values)}")
    if sched == "pbt":
        if search == "optuna":
            raise ConfigError(f"{source}: tune.search: optuna cannot drive scheduler pbt, which evolves its own "
                              f"population; use search: random or grid")
        if not any(pbt_mutable(k) for k in space):
            raise ConfigError(f"{where}: scheduler pbt perturbs optim.lr and schedule parameters, and the space "
                              f"has none of them; add e.g. optim.lr: {{loguniform: [1.0e-4, 3.0e-3]}}")
        names = space["schedule.name"].values if "schedule.name" in space and space["schedule.name"].kind in (
            "choice", "grid") else []
        if "plateau" in names and len(names) > 1:
            raise ConfigError(f"{where}.schedule.name: pbt cannot switch a trial to or from plateau (its LR "
                              f"reductions live in the checkpoint); drop plateau from the choice")

    base = base_raw(cfg)
    rep = representative(space)
    for key, d in space.items():
        for label, value in _test_values(d):
            reasons = []
            for ctx in _contexts(space):
                params = {**rep, **ctx, key: value}
                raw, ignored = apply_params(base, params)
                if key in ignored:
                    reasons.append(ignored[key])
                    continue
                _, err = validate_raw(raw)
                if err:
                    raise ConfigError(f"{where}.{key}: the {label} {value!r} makes an invalid config: {err}")
                break
            else:
                raise ConfigError(f"{where}.{key}: never applies ({reasons[0]}), and neither the base config "
                                  f"nor the space chooses that; drop it from the space")

    epochs = cfg.run.epochs
    if sched == "asha" and t.scheduler.grace_period >= epochs:
        raise ConfigError(f"{source}: tune.scheduler.grace_period = {t.scheduler.grace_period}: every trial runs "
                          f"at least that many of its run.epochs = {epochs}, so ASHA could never stop one early; "
                          f"lower it or raise run.epochs")
    if sched == "pbt":
        if t.scheduler.perturbation_interval >= epochs:
            raise ConfigError(f"{source}: tune.scheduler.perturbation_interval = {t.scheduler.perturbation_interval}"
                              f" epochs: with run.epochs = {epochs} no trial would ever be perturbed")
        if t.search.trials * _grid_size(space) < 2:
            raise ConfigError(f"{source}: tune: scheduler pbt needs a population of at least 2 trials; "
                              f"raise tune.search.num_samples")


def _grid_size(space: dict[str, Distribution]) -> int:
    return math.prod(len(d.values) for d in space.values() if d.kind == "grid")


# ---------------------------------------------------------------------------------------------
# Trials: the explicit list for random and grid search


def initial_trials(cfg: Config) -> list[dict[str, Any]] | None:
    """The parameters of every trial for random and grid search (None for optuna, which draws
    them as it goes), each canonical and each distinct.

    Under ``pbt`` the parameters PBT perturbs keep a number even where they do not apply (PBT
    multiplies them); the trial ignores them then, and says so in its config file.
    """
    t = cfg.tune
    space = t.space
    if t.search.name == "optuna":
        return None
    base = base_raw(cfg)
    pbt = t.scheduler.name == "pbt"
    grid_keys = [k for k, d in space.items() if d.kind == "grid" or (t.search.name == "grid" and d.finite)]
    grid_points = [dict(zip(grid_keys, combo)) for combo in
                   itertools.product(*(space[k].enumerate() for k in grid_keys))] or [{}]
    rng = random.Random(t.search.seed if t.search.seed is not None else cfg.run.seed)
    draws = t.search.trials
    seen: set[str] = set()
    trials: list[dict[str, Any]] = []
    for point in grid_points:
        for _ in range(draws):
            for _attempt in range(100):
                params = {k: (point[k] if k in point else space[k].sample(rng)) for k in space}
                canon = canonical(base, params)
                sig = json.dumps(canon, sort_keys=True)
                if sig not in seen:
                    break
            else:
                continue  # this corner of the space has no new configs left
            seen.add(sig)
            trials.append({k: (params[k] if pbt and pbt_mutable(k) else canon[k]) for k in space})
    return trials


def check_trials(cfg: Config, trials: list[dict[str, Any]], source: str) -> None:
    """Every listed trial's config validates (pure)."""
    base = base_raw(cfg)
    for params in trials:
        try:
            trial_config(base, cfg.tune.space, params)
        except ConfigError as exc:
            raise ConfigError(f"{source}: tune.space: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Resources


def trial_resources(plan: RunPlan) -> tuple[float, float]:
    """CPUs and GPUs one trial holds: its workers plus the trial's own token CPU."""
    gpus = plan.world * plan.cfg.scaling.gpus_per_worker if plan.use_gpu else 0.0
    return plan.world * plan.cpus_per_worker + TRIAL_CPU, gpus


def max_concurrent(setting: int | str, *, plan: RunPlan, cluster_cpus: float, cluster_gpus: float,
                   num_trials: int | None) -> int:
    """How many trials run at once: all that fit beside ``DATA_CPUS`` for Ray Data (auto), or
    the explicit number if it fits. Never more than fit, or trials would wait on each other's
    CPUs and Ray Data's reads would get none (a hang, not an error)."""
    cpus, gpus = trial_resources(plan)
    free = cluster_cpus - DATA_CPUS
    fit = math.floor(free / cpus + 1e-9)
    if gpus:
        fit = min(fit, math.floor(cluster_gpus / gpus + 1e-9))
    shape = (f"each trial takes {plan.world} workers x {plan.cpus_per_worker:g} CPU + {TRIAL_CPU:g} for the "
             f"trial itself = {cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else ""))
    if fit < 1:
        raise ResourceError(f"tune: {shape}, but the cluster has {cluster_cpus:g} CPUs and Ray Data needs "
                            f"{DATA_CPUS:g}; lower scaling.cpus_per_worker or scaling.num_workers")
    if setting == "auto":
        return max(1, min(fit, num_trials or fit))
    if setting > fit:
        need = setting * cpus
        raise ResourceError(
            f"tune.max_concurrent_trials = {setting}: {shape}; {setting} trials need {need:g} of the cluster's "
            f"{cluster_cpus:g} CPUs" + (f" and {setting * gpus:g} of its {cluster_gpus:g} GPUs" if gpus else "")
            + f", leaving {cluster_cpus - need:g} for Ray Data, which needs {DATA_CPUS:g} (the sweep would hang); "
            f"at most {fit} fit (or use auto)")
    return int(setting)


# ---------------------------------------------------------------------------------------------
# The sweep, once Ray is up


@dataclass
class SweepStorage:
    """Where Tune's experiment state and the trials' Train runs go: the sweep directory itself
    (``remote`` None), or ``remote`` = ``s3://bucket/prefix/<sweep name>``."""

    path: str  # Tune's storage_path: a local directory, or bucket/prefix/<sweep name> in fs
    fs: pafs.FileSystem | None = None  # S3; None: local
    remote: str | None = None

    def uri(self, name: str) -> str:
        return f"{self.remote}/{name}" if self.remote else str(Path(self.path) / name)

    def trials(self) -> TrialStorage:
        return TrialStorage(f"{self.path}/trials", self.fs)

    def exists(self, name: str) -> bool:
        return self.trials().filesystem.get_file_info(f"{self.path}/{name}").type != pafs.FileType.NotFound


@dataclass
class Sweep:
    """A planned sweep: the base config, its data and trials, and where everything goes."""

    cfg: Config
    source: str
    sweep_dir: Path
    data: DataPlan
    info: ClusterInfo  # as the trials see it
    plan: RunPlan  # of the base config: the resource shape every trial shares
    trials: list[dict[str, Any]] | None
    concurrency: int
    context: TrialContext = field(repr=False)
    storage: SweepStorage

    @property
    def tune_dir(self) -> str:
        """Tune's experiment folder, as a user would name it (a local path or s3://...)."""
        return self.storage.uri("tune")


def new_sweep_dir(cfg: Config) -> Path:
    """``<run.storage>/<name>-sweep-<time>`` for a local run.storage; else under ``runs/`` (for
    ``s3://`` storage the sweep's state goes to ``<run.storage>/<that folder's name>``)."""
    local = cfg.run.storage and "://" not in cfg.run.storage
    root = Path(cfg.run.storage) if local else Path("runs")
    return root / f"{cfg.name}-sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def sweep_storage(cfg: Config, sweep_dir: Path, remote: str | None = None) -> SweepStorage:
    """The sweep's storage; for ``s3://`` the bucket is checked now, before Ray starts (a missing
    bucket or bad credentials fail in a second). ``remote``: a resumed sweep's own location."""
    if remote is None and cfg.run.storage and "://" in cfg.run.storage:
        remote = f"{cfg.run.storage.rstrip('/')}/{sweep_dir.name}"
    if remote is None:
        return SweepStorage(str(sweep_dir.resolve()))
    path, fs = resolve_storage(remote, cfg.storage, key="run.storage")
    if fs is None:  # file://
        return SweepStorage(path)
    return SweepStorage(path, fs, remote)


def plan_sweep(cfg: Config, source: str, sweep_dir: Path, info: ClusterInfo, data: DataPlan,
               storage: SweepStorage) -> Sweep:
    """Everything the sweep checks once Ray is up: every listed trial plans (resources, LR
    schedule against the real step counts), and the concurrency fits the cluster."""
    t = cfg.tune
    if t.metric.startswith(PER_CLASS) and t.metric.rsplit("/", 1)[1] not in data.label_names:
        raise ConfigError(f"{source}: tune.metric = {t.metric!r}: the data's classes are "
                          f"{', '.join(data.label_names)}")
    trial_info = replace(info, cpus=info.cpus - TRIAL_CPU)  # "auto" worker CPUs leave the trial its token
    base = base_raw(cfg)
    plan = plan_run(cfg, trial_info, data)
    trials = initial_trials(cfg)
    checked = trials if trials is not None else [representative(t.space)]
    for params in checked:
        tcfg, _ = trial_config(base, t.space, params)
        p = plan_run(tcfg, trial_info, data)
        try:
            check_run(tcfg.schedule, p.total_steps, p.steps_per_epoch)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if v is not None)
            raise ConfigError(f"{source}: tune.space: the trial with {shown}: {exc}") from None
    if trials is not None and not trials:
        raise ConfigError(f"{source}: tune.space: no trials to run")
    n = len(trials) if trials is not None else t.search.trials
    concurrency = max_concurrent(t.max_concurrent_trials, plan=plan, cluster_cpus=info.cpus,
                                 cluster_gpus=info.gpus, num_trials=n)
    sweep_dir = sweep_dir.resolve()
    ctx = TrialContext(base=base, space=dict(t.space), scheduler=t.scheduler, metric=t.metric, info=trial_info,
                       data=data, trials=storage.trials())
    return Sweep(cfg, source, sweep_dir, data, trial_info, plan, trials, concurrency, ctx, storage)


def describe_sweep(s: Sweep) -> str:
    """The sweep's one-line plan: trials, search, scheduler, each trial's resources."""
    t = s.cfg.tune
    n = f"{len(s.trials)} trials" if s.trials is not None else f"{t.search.trials} trials (optuna TPE)"
    cpus, gpus = trial_resources(s.plan)
    sched = t.scheduler.name + {
        "asha": f" (grace {t.scheduler.grace_period}, reduction x{t.scheduler.reduction_factor:g})",
        "pbt": f" (segments of {t.scheduler.perturbation_interval} epochs)", "none": ""}[t.scheduler.name]
    return (f"[bold]{s.cfg.name}[/] sweep: {n}, {t.search.name} search, scheduler {sched}, "
            f"{t.mode} {t.metric}; each trial {s.plan.world} workers x {s.plan.cpus_per_worker:g} CPU "
            f"(+{TRIAL_CPU:g}) = {cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
            + f", up to {s.concurrency} at once, {s.cfg.run.epochs} epochs each "
            f"({s.plan.steps_per_epoch} steps/epoch)")
