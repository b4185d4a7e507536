"""``raydeep tune``: the ``tune:`` config section, its search space, and the sweep driver.

A sweep runs the same multi-worker DeepSpeed ``TorchTrainer`` that ``raydeep train`` fits
(``driver.build_trainer``) as the body of every Ray Tune trial. Ray 2.60's ``Tuner`` refuses a
Train V2 trainer, so each trial is a small Tune *function* that applies its parameters to the
base config, plans the run against data opened once on the driver, and fits:

* ``asha`` and ``none``: one fit per trial; ``TuneReportCallback`` turns every epoch's
  ``ray.train.report`` into one Tune iteration, so ASHA can stop a trial after any epoch. The
  Train run is named after the trial, so a trial restarted by ``--resume`` continues from its
  own latest checkpoint.
* ``pbt``: one short fit per Tune iteration ("segment", ``perturbation_interval`` epochs). A
  segment's Train run folder (its checkpoints and snapshot) is handed to Tune as the trial's
  checkpoint; the next segment, of this trial or of a trial that clones it, copies that folder
  to a new Train run name, which Train V2 resumes: same global step, same optimizer state.

This module is imported by ``raydeep.config`` (for ``TuneConfig``), so it imports neither torch
nor ray nor ``raydeep.config`` at module level.
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raydeep.errors import ConfigError, RaydeepError, ResourceError
from raydeep.trainers.schedules import SCHEDULES

if TYPE_CHECKING:  # pragma: no cover
    from raydeep.cluster.connect import ClusterInfo
    from raydeep.config import Config
    from raydeep.trainers.driver import DataPlan, RunPlan

# The Tune trial itself only builds, fits and follows a TorchTrainer; its workers reserve their
# own placement group. Tune refuses {"CPU": 0}, so a token.
TRIAL_CPU = 0.1
# Metrics the worker loop reports every epoch that a sweep may rank by.
METRICS = ("val/macro_f1", "val/accuracy", "val/balanced_accuracy", "val/macro_precision",
           "val/macro_recall", "val/loss", "train/loss")
PER_CLASS = ("val/recall/", "val/f1/")


class _Section(BaseModel):
    # Same as raydeep.config.Section; defined here because config.py imports this module.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------------
# The tune: section


DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")


class Distribution(_Section):
    """One searched parameter: exactly one of

    * ``choice: [a, b, ...]`` -- sampled (random, optuna) or, under ``search: grid``, enumerated;
    * ``grid: [a, b, ...]`` -- every value, in every search (Tune's ``grid_search``);
    * ``uniform: [low, high]``, ``loguniform: [low, high]`` -- floats, ``0 < low`` for log;
    * ``randint: [low, high]`` -- integers, both ends included.

    Shorthands: a bare list is a ``choice``; ``"loguniform(1e-4, 3e-3)"`` is the call form.
    """

    kind: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    values: list[Any] = Field(default_factory=list, description="choice/grid")
    low: float | None = None
    high: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, list):
            return {"kind": "choice", "values": v}
        if isinstance(v, str):
            m = _CALL.match(v)
            if not m:
                raise ValueError(f"expected e.g. {{loguniform: [1.0e-4, 3.0e-3]}} or {{choice: [a, b]}}, got {v!r}")
            import yaml

            args = yaml.safe_load(f"[{m.group(2)}]")
            v = {m.group(1): args}
        if not isinstance(v, dict) or "kind" in v:
            return v
        if len(v) != 1:
            raise ValueError(f"give exactly one distribution ({', '.join(DISTRIBUTIONS)}), got {sorted(v)}")
        (kind, args), = v.items()
        if kind not in DISTRIBUTIONS:
            close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"one of {', '.join(DISTRIBUTIONS)}"
            raise ValueError(f"unknown distribution {kind!r} ({hint})")
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                raise ValueError(f"{kind} needs a non-empty list of values")
            return {"kind": kind, "values": args}
        if not isinstance(args, list) or len(args) != 2 or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            raise ValueError(f"{kind} needs [low, high] (two numbers), got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) or float(a).is_integer() for a in args):
            raise ValueError(f"randint needs whole-number bounds, got {args!r}")
        return {"kind": kind, "low": args[0], "high": args[1]}

    @model_validator(mode="after")
    def _range(self) -> "Distribution":
        if self.kind in ("choice", "grid"):
            seen = []
            for x in self.values:
                if x in seen:
                    raise ValueError(f"{self.kind} lists {x!r} twice")
                seen.append(x)
            return self
        if not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high, got [{self.low:g}, {self.high:g}]")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs 0 < low, got {self.low:g}")
        return self

    @property
    def finite(self) -> bool:
        return self.kind in ("choice", "grid", "randint")

    def enumerate(self) -> list[Any]:
        if self.kind == "randint":
            return list(range(int(self.low), int(self.high) + 1))
        return list(self.values)

    def sample(self, rng: random.Random) -> Any:
        if self.kind in ("choice", "grid"):
            return rng.choice(self.values)
        if self.kind == "randint":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "uniform":
            x = rng.uniform(self.low, self.high)
        else:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return self.clamp(float(f"{x:.4g}"))  # 4 significant digits: readable tables, same search

    def clamp(self, x: Any) -> Any:
        """PBT multiplies values by 0.8 or 1.2; keep them inside the declared range."""
        if self.kind in ("uniform", "loguniform") and isinstance(x, (int, float)):
            return min(max(float(x), self.low), self.high)
        if self.kind == "randint" and isinstance(x, (int, float)):
            return int(min(max(round(x), self.low), self.high))
        return x

    def to_yaml(self) -> Any:
        if self.kind in ("choice", "grid"):
            return {self.kind: list(self.values)}
        low, high = (int(self.low), int(self.high)) if self.kind == "randint" else (self.low, self.high)
        return {self.kind: [low, high]}

    def describe(self) -> str:
        a = self.to_yaml()[self.kind]
        return f"{self.kind}({', '.join(map(str, a))})"


SCHEDULER_PARAMS = {
    "asha": ("grace_period", "reduction_factor"),
    "pbt": ("perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
    "none": (),
}


class SchedulerConfig(_Section):
    """How trials are stopped or evolved. ``scheduler: asha`` is short for ``{name: asha}``."""

    name: Literal["asha", "pbt", "none"] = "asha"
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, description="asha: keep the top 1/reduction_factor at each rung")
    perturbation_interval: int = Field(
        1, ge=1, description="pbt: epochs per segment; trials exploit and explore between segments")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="pbt: bottom fraction that clones the top")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="pbt: resample instead of x0.8/x1.2")
    synch: bool = Field(False, description="pbt: perturb all trials together at each segment boundary")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _own_params(self) -> "SchedulerConfig":
        foreign = sorted(self.model_fields_set - {"name"} - set(SCHEDULER_PARAMS[self.name]))
        if foreign:
            takes = ", ".join(SCHEDULER_PARAMS[self.name]) or "no parameters"
            raise ValueError(f"{', '.join(foreign)}: not a parameter of scheduler {self.name} (it takes {takes})")
        return self


class SearchConfig(_Section):
    """How trial parameters are chosen. ``search: random`` is short for ``{name: random}``."""

    name: Literal["random", "grid", "optuna"] = "random"
    num_samples: int | None = Field(
        None, ge=1, description="random/optuna: number of trials (default 8); grid: every grid point once")
    seed: int | None = Field(None, description="random search seed (default: run.seed)")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _grid_once(self) -> "SearchConfig":
        if self.name == "grid" and self.num_samples not in (None, 1):
            raise ValueError("search: grid runs each grid point once (repeats would be identical runs); "
                             "to repeat with other seeds, search run.seed: {grid: [0, 1, 2]}")
        return self

    @property
    def trials(self) -> int:
        return 1 if self.name == "grid" else (self.num_samples or 8)


class TuneConfig(_Section):
    """The ``tune:`` section: what ``raydeep tune`` searches; ``raydeep train`` ignores it."""

    metric: str = Field("val/macro_f1", description="a validation metric the workers report every epoch")
    mode: Literal["max", "min"] = "max"
    scheduler: SchedulerConfig = SchedulerConfig()
    search: SearchConfig = SearchConfig()
    max_concurrent_trials: int | Literal["auto"] = Field(
        "auto", description="auto: as many as the cluster's CPUs (and GPUs) hold, leaving CPU for Ray Data")
    space: dict[str, Distribution] = Field(..., min_length=1, description="dotted config key -> distribution")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v in METRICS or (v.startswith(PER_CLASS) and v.count("/") == 2 and not v.endswith("/")):
            return v
        close = difflib.get_close_matches(v, METRICS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"{hint}the workers report {', '.join(METRICS)}, and val/recall/<class>, val/f1/<class>")

    @field_validator("max_concurrent_trials")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _direction(self) -> "TuneConfig":
        if self.metric.endswith("loss") and self.mode == "max":
            raise ValueError(f"metric {self.metric} with mode: max would favour the worst trials; use mode: min")
        if not self.metric.endswith("loss") and self.mode == "min":
            raise ValueError(f"metric {self.metric} with mode: min would favour the worst trials; use mode: max")
        return self


# ---------------------------------------------------------------------------------------------
# Which parameters apply, and a trial's config from the base config plus its parameters


# Parameters that decide whether others mean anything: applied first.
SELECTORS = ("schedule.name", "optim.name", "imbalance.weighting", "imbalance.loss")
_WEIGHTED = ("inverse", "sqrt_inverse", "effective_number")
# parameter -> (selector, the selector values it applies with, the neutral value it is reset to
# when it does not apply and its base value would be refused, or None)
CONDITIONS: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "imbalance.beta": ("imbalance.weighting", ("effective_number",), None),
    "imbalance.zero_count": ("imbalance.weighting", _WEIGHTED, None),
    "imbalance.drw_start_epoch": ("imbalance.weighting", _WEIGHTED, None),
    "imbalance.gamma": ("imbalance.loss", ("focal",), None),
    "imbalance.label_smoothing": ("imbalance.loss", ("cross_entropy",), 0.0),
    "optim.momentum": ("optim.name", ("sgd", "rmsprop"), None),
    "optim.nesterov": ("optim.name", ("sgd",), None),
    "optim.betas": ("optim.name", ("adam", "adamw"), None),
}
# Not searchable: the sweep sizes, plans and stores every trial from the base config's values.
FIXED = {
    "name": "it names the sweep",
    "tune": "it describes the sweep itself",
    "data.train": "the data is opened and counted once for all trials",
    "data.val": "the data is opened and counted once for all trials",
    "data.test": "the data is opened and counted once for all trials",
    "scaling": "every trial reserves the same workers, which is how the sweep sizes its concurrency",
    "run.epochs": "it is every trial's budget (ASHA's max_t, PBT's horizon); set it in the base config",
    "run.storage": "the sweep decides where trials store checkpoints",
    "deepspeed.config_file": "a DeepSpeed JSON file is used as is",
}


def _get(raw: dict, key: str, default: Any = None) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _set(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _field_default(key: str) -> Any:
    from raydeep.config import Config

    model: Any = Config
    *parents, leaf = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf].default


def _selector(raw: dict, key: str) -> Any:
    if key == "schedule.name":
        return _get(raw, key, "constant")
    return _get(raw, key, _field_default(key))


def why_not_applied(key: str, raw: dict) -> str | None:
    """Why ``key`` means nothing in the config ``raw`` (None: it applies)."""
    if key.startswith("schedule.") and key != "schedule.name":
        name = _selector(raw, "schedule.name")
        fields = getattr(SCHEDULES.get(name), "model_fields", {})
        if key.split(".", 1)[1] not in fields:
            return f"schedule {name} has no {key.split('.', 1)[1]}"
        return None
    if key in CONDITIONS:
        sel, values, _ = CONDITIONS[key]
        if _selector(raw, sel) not in values:
            return f"only with {sel}: {' or '.join(values)}"
    return None


def apply_params(base: dict, params: dict[str, Any]) -> tuple[dict, dict[str, str]]:
    """The raw config of one trial: ``base`` (a raw config dict) with ``params`` set.

    Selectors are applied first. A new ``schedule.name`` substitutes the whole schedule section,
    keeping the base schedule's fields that the new schedule also has (e.g. ``warmup``). A
    parameter that does not apply with the chosen selectors is not set, and returned in
    ``ignored`` with the reason; a ``None`` value is the canonical "does not apply" and is
    skipped. Fields whose base value the new selectors would refuse (``label_smoothing`` with a
    loss other than cross_entropy) are reset to their neutral value.
    """
    raw = copy.deepcopy(base)
    ignored: dict[str, str] = {}
    for key in sorted(params, key=lambda k: (k not in SELECTORS, SELECTORS.index(k) if k in SELECTORS else 0)):
        value = params[key]
        if value is None:
            continue
        if key == "schedule.name":
            old = raw.get("schedule") or {"name": "constant"}
            if value != old.get("name"):
                fields = getattr(SCHEDULES.get(value), "model_fields", {})
                raw["schedule"] = {"name": value, **{k: v for k, v in old.items() if k in fields and k != "name"}}
            continue
        reason = why_not_applied(key, raw)
        if reason:
            ignored[key] = reason
            continue
        _set(raw, key, value)
    for key, (_, _, neutral) in CONDITIONS.items():
        if neutral is not None and key not in params and why_not_applied(key, raw) \
                and _get(raw, key, neutral) != neutral:
            _set(raw, key, neutral)
    return raw, ignored


def canonical(base: dict, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every parameter that does not apply replaced by None."""
    _, ignored = apply_params(base, params)
    return {k: (None if k in ignored else v) for k, v in params.items()}


def base_raw(cfg: "Config") -> dict:
    """The base config as a raw dict, without the tune section, in the user's own shape
    (fields left at their defaults stay out, so a substituted schedule gets its own defaults)."""
    return cfg.model_dump(mode="json", exclude_unset=True, exclude={"tune"})


def _validate(raw: dict) -> tuple["Config | None", str | None]:
    from raydeep.config import validate

    try:
        return validate(raw, "-"), None
    except ConfigError as exc:
        return None, str(exc).removeprefix("-: ")


def trial_config(base: dict, space: dict[str, Distribution], params: dict[str, Any]
                 ) -> tuple["Config", dict[str, str]]:
    """The validated config of one trial, and the parameters it ignored (with reasons)."""
    clamped = {k: (space[k].clamp(v) if k in space else v) for k, v in params.items()}
    raw, ignored = apply_params(base, clamped)
    cfg, err = _validate(raw)
    if cfg is None:
        shown = ", ".join(f"{k}={v!r}" for k, v in clamped.items() if k not in ignored)
        raise ConfigError(f"trial with {shown}: {err}")
    return cfg, ignored


# ---------------------------------------------------------------------------------------------
# Checking the space before anything starts


def _check_key(key: str, where: str) -> None:
    """An unknown key (with a did-you-mean), a section, or a key the sweep fixes: one line."""
    from raydeep.config import Config

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


def _representative(space: dict[str, Distribution]) -> dict[str, Any]:
    return {k: (d.values[0] if d.kind in ("choice", "grid") else
                int(d.low) if d.kind == "randint" else d.low) for k, d in space.items()}


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


def check_space(cfg: "Config", source: str) -> None:
    """Refuse, in one line, a space the sweep cannot run: an unknown or fixed key, a value the
    config models reject, a parameter that never applies, or a distribution the scheduler or
    search cannot use. Pure: no Ray, no data."""
    t = cfg.tune
    if t is None:
        raise ConfigError(f"{source}: no tune: section; add one (see configs/sweep-digits-lt.yaml), "
                          f"or run it with raydeep train")
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
        if not any(_pbt_mutable(k) for k in space):
            raise ConfigError(f"{where}: scheduler pbt perturbs optim.lr and schedule parameters, and the space "
                              f"has none of them; add e.g. optim.lr: {{loguniform: [1.0e-4, 3.0e-3]}}")
        names = space["schedule.name"].values if "schedule.name" in space and space["schedule.name"].kind in (
            "choice", "grid") else []
        if "plateau" in names and len(names) > 1:
            raise ConfigError(f"{where}.schedule.name: pbt cannot switch a trial to or from plateau (its LR "
                              f"reductions live in the checkpoint); drop plateau from the choice")

    base = base_raw(cfg)
    rep = _representative(space)
    for key, d in space.items():
        for label, value in _test_values(d):
            reasons = []
            for ctx in _contexts(space):
                params = {**rep, **ctx, key: value}
                raw, ignored = apply_params(base, params)
                if key in ignored:
                    reasons.append(ignored[key])
                    continue
                _, err = _validate(raw)
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


def _pbt_mutable(key: str) -> bool:
    return key == "optim.lr" or key.startswith("schedule.")


def _grid_size(space: dict[str, Distribution]) -> int:
    return math.prod(len(d.values) for d in space.values() if d.kind == "grid")


# ---------------------------------------------------------------------------------------------
# Trials: the explicit list for random and grid search


def initial_trials(cfg: "Config") -> list[dict[str, Any]] | None:
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
            trials.append({k: (params[k] if pbt and _pbt_mutable(k) else canon[k]) for k in space})
    return trials


def check_trials(cfg: "Config", trials: list[dict[str, Any]], source: str) -> None:
    """Every listed trial's config validates (pure)."""
    base = base_raw(cfg)
    for params in trials:
        try:
            trial_config(base, cfg.tune.space, params)
        except ConfigError as exc:
            raise ConfigError(f"{source}: tune.space: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Resources


def trial_resources(plan: "RunPlan") -> tuple[float, float]:
    """CPUs and GPUs one trial holds: its workers plus the trial's own token CPU."""
    gpus = plan.world * plan.cfg.scaling.gpus_per_worker if plan.use_gpu else 0.0
    return plan.world * plan.cpus_per_worker + TRIAL_CPU, gpus


def max_concurrent(setting: int | str, *, plan: "RunPlan", cluster_cpus: float, cluster_gpus: float,
                   num_trials: int | None) -> int:
    """How many trials run at once: all that fit beside ``DATA_CPUS`` for Ray Data (auto), or
    the explicit number if it fits. Never more than fit, or trials would wait on each other's
    CPUs and Ray Data's reads would get none (a hang, not an error)."""
    from raydeep.cluster.resources import DATA_CPUS

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
# The trial (runs in a Tune trial actor)


@dataclass
class TrialContext:
    """What every trial needs, planned once on the driver and shipped with tune.with_parameters."""

    base: dict
    space: dict[str, Distribution]
    scheduler: SchedulerConfig
    metric: str
    info: Any  # ClusterInfo, with the trial's token CPU taken out
    data: Any  # DataPlan: the data opened and counted once
    sweep_dir: str
    trials_dir: str


def trial_params(config: dict) -> dict[str, Any]:
    return dict(config.get("params") or {})


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: one trial, the same TorchTrainer ``raydeep train`` fits."""
    import ray.data
    import ray.tune

    from raydeep.trainers.driver import plan_run

    ray.data.DataContext.get_current().enable_progress_bars = False
    trial_id = ray.tune.get_context().get_trial_id()
    params = trial_params(config)
    cfg, ignored = trial_config(ctx.base, ctx.space, params)
    plan = plan_run(cfg, ctx.info, ctx.data)
    write_trial_config(Path(ctx.trials_dir) / f"{trial_id}.yaml", cfg, params, ignored, trial_id)
    log_event(ctx, trial_id, "start", params=canonical(ctx.base, params))
    if ctx.scheduler.name == "pbt":
        run_segments(plan, ctx, trial_id)
    else:
        from raydeep.trainers.driver import build_trainer
        from ray.tune.integration.ray_train import TuneReportCallback

        # Named after the trial: a trial restarted by --resume continues its own Train run.
        trainer = build_trainer(plan, name=trial_id, storage_path=ctx.trials_dir,
                                callbacks=[TuneReportCallback()])
        result = trainer.fit()
        final = result.return_value or {}
        log_event(ctx, trial_id, "end", epoch=final.get("epoch"), global_step=final.get("global_step"))


SEGMENT_FILE = "segment.json"


def run_segments(plan: "RunPlan", ctx: TrialContext, trial_id: str) -> None:
    """PBT: one short fit per Tune iteration, each continuing the Train run it was handed."""
    import ray.tune

    from raydeep.trainers.driver import build_trainer

    root = Path(ctx.trials_dir)
    total = plan.cfg.run.epochs
    done, source, cloned_from, prev = 0, None, None, None
    checkpoint = ray.tune.get_checkpoint()
    tmp = Path(tempfile.mkdtemp(prefix="raydeep-pbt-"))
    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                meta = json.loads((Path(d) / SEGMENT_FILE).read_text())
                done = int(meta["epochs_done"])
                source = tmp / "from"
                shutil.copytree(Path(d) / "train", source)
            if meta["trial_id"] != trial_id:
                cloned_from = meta["trial_id"]
                log_event(ctx, trial_id, "clone", donor=cloned_from, epochs_done=done,
                          global_step=meta.get("global_step"))
        while done < total:
            end = min(done + ctx.scheduler.perturbation_interval, total)
            name = f"{trial_id}-e{end:03d}"
            run_dir = root / name
            shutil.rmtree(run_dir, ignore_errors=True)  # a segment this trial began before a restart
            if source is not None:
                # Train V2 resumes a run whose folder holds a snapshot: the copy continues it.
                shutil.copytree(source, run_dir)
            seg_cfg = plan.cfg.model_copy(update={"run": plan.cfg.run.model_copy(update={"epochs": end})})
            seg_plan = replace(plan, cfg=seg_cfg)  # total_steps stays the whole run's: one LR schedule
            final = build_trainer(seg_plan, name=name, storage_path=str(root)).fit().return_value or {}
            pack = tmp / "pack"
            shutil.rmtree(pack, ignore_errors=True)
            shutil.copytree(run_dir, pack / "train")
            (pack / SEGMENT_FILE).write_text(json.dumps(
                {"trial_id": trial_id, "epochs_done": end, "global_step": final.get("global_step")}))
            metrics = {k: v for k, v in final.items() if k != "val/confusion"}
            metrics.update(epochs_done=end, cloned_from=cloned_from or "")
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(pack)))
            # Tune now holds its own copy; keep only this trial's latest Train run folder.
            if prev is not None:
                shutil.rmtree(prev, ignore_errors=True)
            prev, source, done, cloned_from = run_dir, run_dir, end, None
            if final.get("stopped_early"):
                break
        log_event(ctx, trial_id, "end", epochs_done=done)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def log_event(ctx: TrialContext, trial_id: str, event: str, **fields: Any) -> None:
    """One JSON line per trial start, clone and end in <sweep>/trials.jsonl (O_APPEND: one
    write per line, so concurrent trials on one filesystem do not interleave)."""
    line = json.dumps({"time": round(time.time(), 3), "trial_id": trial_id, "event": event, **fields}) + "\n"
    fd = os.open(Path(ctx.sweep_dir) / "trials.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def write_trial_config(path: Path, cfg: "Config", params: dict, ignored: dict[str, str], trial_id: str) -> None:
    from raydeep.config import to_yaml
    from raydeep.fileio import atomic_write_text

    lines = [f"# trial {trial_id}: the base config with these searched values"]
    lines += [f"#   {k}: {v!r}" for k, v in params.items() if k not in ignored and v is not None]
    for k, why in ignored.items():
        lines.append(f"#   {k}: not applied ({why}); the trial's config does not use it")
    atomic_write_text(path, "\n".join(lines) + "\n" + to_yaml(cfg))


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class Sweep:
    cfg: Any  # Config
    source: str
    sweep_dir: Path
    data: Any  # DataPlan
    info: Any  # ClusterInfo as the trials see it
    plan: Any  # RunPlan of the base config: the resource shape every trial shares
    trials: list[dict[str, Any]] | None
    concurrency: int
    context: TrialContext = field(repr=False, default=None)


def new_sweep_dir(cfg: "Config") -> Path:
    root = Path(cfg.run.storage) if cfg.run.storage else Path("runs")
    return root / f"{cfg.name}-sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def plan_sweep(cfg: "Config", source: str, sweep_dir: Path, info: "ClusterInfo", data: "DataPlan") -> Sweep:
    """Everything the sweep checks once Ray is up: every listed trial plans (resources, LR
    schedule against the real step counts), and the concurrency fits the cluster."""
    from raydeep.trainers.driver import plan_run
    from raydeep.trainers.schedules import check_run

    t = cfg.tune
    if t.metric.startswith(PER_CLASS) and t.metric.rsplit("/", 1)[1] not in data.label_names:
        raise ConfigError(f"{source}: tune.metric = {t.metric!r}: the data's classes are "
                          f"{', '.join(data.label_names)}")
    trial_info = replace(info, cpus=info.cpus - TRIAL_CPU)  # "auto" worker CPUs leave the trial its token
    base = base_raw(cfg)
    plan = plan_run(cfg, trial_info, data)
    trials = initial_trials(cfg)
    checked = trials if trials is not None else [_representative(t.space)]
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
                       data=data, sweep_dir=str(sweep_dir), trials_dir=str(sweep_dir / "trials"))
    return Sweep(cfg, source, sweep_dir, data, trial_info, plan, trials, concurrency, ctx)


def describe_sweep(s: Sweep) -> str:
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


def _param_space(s: Sweep) -> dict:
    from ray import tune

    if s.trials is None:
        return {}
    return {"params": tune.grid_search(s.trials)}


def _scheduler(s: Sweep):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    t = s.cfg.tune
    sc = t.scheduler
    if sc.name == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.cfg.run.epochs,
                             grace_period=sc.grace_period, reduction_factor=sc.reduction_factor)
    if sc.name == "pbt":
        mutations = {}
        for key, d in t.space.items():
            if not _pbt_mutable(key):
                continue
            if d.kind in ("choice", "grid"):
                mutations[key] = list(d.values)
            elif d.kind == "uniform":
                mutations[key] = tune.uniform(d.low, d.high)
            elif d.kind == "loguniform":
                mutations[key] = tune.loguniform(d.low, d.high)
            else:
                mutations[key] = tune.randint(int(d.low), int(d.high) + 1)
        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=1, hyperparam_mutations={"params": mutations},
            quantile_fraction=sc.quantile_fraction, resample_probability=sc.resample_probability,
            synch=sc.synch)
    return FIFOScheduler()


def _search_alg(s: Sweep):
    t = s.cfg.tune
    if t.search.name != "optuna":
        return None
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise RaydeepError("tune.search: optuna needs the optuna package: pip install 'raydeep[optuna]'") from None
    space, base = t.space, s.context.base

    def define(trial) -> None:
        # Define-by-run: a parameter is only drawn where it applies (TPE models conditionals).
        chosen: dict[str, Any] = {}
        for key in sorted(space, key=lambda k: (k not in SELECTORS, k)):
            raw, _ = apply_params(base, chosen)
            if why_not_applied(key, raw):
                continue
            d, name = space[key], f"params/{key}"  # OptunaSearch unflattens "/" into nested dicts
            if d.kind == "choice":
                chosen[key] = trial.suggest_categorical(name, d.values)
            elif d.kind == "randint":
                chosen[key] = trial.suggest_int(name, int(d.low), int(d.high))
            else:
                chosen[key] = trial.suggest_float(name, d.low, d.high, log=d.kind == "loguniform")

    seed = t.search.seed if t.search.seed is not None else s.cfg.run.seed
    return OptunaSearch(space=define, metric=t.metric, mode=t.mode, seed=seed)


def _trainable(s: Sweep):
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, ctx=s.context), {"CPU": TRIAL_CPU})


def _reporter(s: Sweep):
    from ray.tune import CLIReporter

    t = s.cfg.tune
    return CLIReporter(
        parameter_columns={f"params/{k}": k for k in t.space},
        metric_columns={"epoch": "epoch", t.metric: t.metric, "val/loss": "val loss"} if t.metric != "val/loss"
        else {"epoch": "epoch", "val/loss": "val loss"},
        sort_by_metric=True, max_report_frequency=10,  # metric and mode: from TuneConfig
    )


def _quiet_tune() -> None:
    # Tune's new output engine infers its table's columns from the param space, which here is a
    # list of whole trials; the classic reporter takes our columns (the searched keys).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def _tuner(s: Sweep, verbose: bool):
    from ray import tune

    t = s.cfg.tune
    search_alg = _search_alg(s)
    return tune.Tuner(
        _trainable(s),
        param_space=_param_space(s),
        tune_config=tune.TuneConfig(
            metric=t.metric, mode=t.mode,
            scheduler=_scheduler(s), search_alg=search_alg,
            num_samples=1 if s.trials is not None else t.search.trials,
            max_concurrent_trials=s.concurrency, reuse_actors=False,
            trial_name_creator=lambda trial: trial.trial_id,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(s.sweep_dir),
            progress_reporter=_reporter(s), verbose=2 if verbose else 1,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if t.scheduler.name == "pbt" else None),
        ),
    )


def run_sweep(cfg: "Config", *, source: str = "config", run_dir: str | os.PathLike | None = None,
              address: str | None = None, verbose: bool = False, console=None) -> dict[str, Any]:
    """``raydeep tune CONFIG``: check, plan, run the trials, then leaderboard, best.yaml, sweep.png."""
    from rich.console import Console

    from raydeep.cluster.connect import connect
    from raydeep.config import to_yaml
    from raydeep.fileio import atomic_write_text
    from raydeep.trainers.driver import plan_data

    console = console or Console()
    check_space(cfg, source)  # before any data or Ray
    trials = initial_trials(cfg)
    if trials is not None:
        check_trials(cfg, trials, source)
    _check_storage(cfg, source)
    data = plan_data(cfg)
    sweep_dir = Path(run_dir) if run_dir else new_sweep_dir(cfg)
    if (sweep_dir / "tune").exists():
        raise ConfigError(f"--run-dir {sweep_dir}: holds a sweep already; continue it with "
                          f"raydeep tune --resume {sweep_dir}, or pick a new directory")
    info = connect(address, verbose=verbose)
    s = plan_sweep(cfg, source, sweep_dir, info, data)
    (s.sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    atomic_write_text(s.sweep_dir / "config.yaml", to_yaml(cfg))
    console.print(describe_sweep(s))
    console.print(f"sweep dir: {s.sweep_dir}" + (f"   dashboard: {info.dashboard_url}" if info.dashboard_url else ""))
    _quiet_tune()
    t0 = time.time()
    results = _tuner(s, verbose).fit()
    return finish(s, results, console, wall_time_s=time.time() - t0)


def resume_sweep(sweep_dir: str | os.PathLike, *, address: str | None = None, verbose: bool = False,
                 console=None) -> dict[str, Any]:
    """``raydeep tune --resume DIR``: finished trials stay finished; unfinished ones continue
    (ASHA: from their Train run's latest checkpoint; PBT: from their last segment); errored
    ones restart."""
    from rich.console import Console
    from ray import tune

    from raydeep.cluster.connect import connect
    from raydeep.config import load_config
    from raydeep.trainers.driver import plan_data

    console = console or Console()
    sweep_dir = Path(sweep_dir)
    source = str(sweep_dir / "config.yaml")
    if not (sweep_dir / "config.yaml").is_file() or not (sweep_dir / "tune").is_dir():
        raise ConfigError(f"--resume {sweep_dir}: not a sweep directory (no config.yaml and tune/ in it)")
    cfg = load_config(source)
    check_space(cfg, source)
    data = plan_data(cfg)
    info = connect(address, verbose=verbose)
    s = plan_sweep(cfg, source, sweep_dir, info, data)
    if not tune.Tuner.can_restore(str(s.sweep_dir / "tune")):
        raise RaydeepError(f"--resume {sweep_dir}: Tune saved no experiment state there yet; start the sweep again")
    console.print(f"resuming {describe_sweep(s)}")
    _quiet_tune()
    t0 = time.time()
    tuner = tune.Tuner.restore(str(s.sweep_dir / "tune"), trainable=_trainable(s),
                               resume_unfinished=True, restart_errored=True)
    results = tuner.fit()
    return finish(s, results, console, wall_time_s=time.time() - t0)


def _check_storage(cfg: "Config", source: str) -> None:
    if cfg.run.storage and "://" in cfg.run.storage:
        raise ConfigError(f"{source}: run.storage = {cfg.run.storage!r}: sweeps store trials on a local or shared "
                          f"filesystem path for now; use --run-dir on one")


# ---------------------------------------------------------------------------------------------
# After the sweep: leaderboard, best.yaml, sweep.png


@dataclass
class TrialRow:
    trial_id: str
    status: str  # finished | stopped early | error | unfinished
    best: float | None
    best_epoch: int | None
    epochs: int
    params: dict[str, Any]  # canonical: None where a parameter did not apply
    history: list[tuple[int, float]]  # (epochs done, metric)
    error: str | None = None
    rank: int | None = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def collect_rows(s: Sweep, results) -> list[TrialRow]:
    t = s.cfg.tune
    statuses = {}
    analysis = getattr(results, "_experiment_analysis", None)
    for trial in getattr(analysis, "trials", None) or []:
        statuses[trial.trial_id] = trial.status
    rows = []
    for r in results:
        trial_id = Path(r.path).name
        df = r.metrics_dataframe
        history: list[tuple[int, float]] = []
        if df is not None and len(df) and "epoch" in df:
            for epoch, value in zip(df["epoch"], df[t.metric] if t.metric in df else [None] * len(df)):
                if _finite(epoch):
                    history.append((int(epoch) + 1, float(value) if _finite(value) else float("nan")))
        epochs = max((e for e, _ in history), default=0)
        scored = [(v, e) for e, v in history if math.isfinite(v)]
        pick = max if t.mode == "max" else min
        best, best_epoch = pick(scored) if scored else (None, None)
        status = statuses.get(trial_id, "TERMINATED")
        if r.error is not None:
            label = "error"
        elif status != "TERMINATED":
            label = "unfinished"
        elif epochs >= s.cfg.run.epochs:
            label = "finished"
        else:
            label = "stopped early"
        err = None
        if r.error is not None:
            text = str(r.error).strip().splitlines()
            err = next((ln for ln in reversed(text) if ln.strip()), type(r.error).__name__)
        params = canonical(s.context.base, trial_params(r.config or {}))
        rows.append(TrialRow(trial_id, label, best, best_epoch, epochs, params, history, err))
    sign = -1 if t.mode == "max" else 1
    rows.sort(key=lambda row: (row.best is None, sign * row.best if row.best is not None else 0, row.trial_id))
    for i, row in enumerate(r for r in rows if r.best is not None):
        row.rank = i + 1
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_leaderboard(s: Sweep, rows: list[TrialRow], path: Path) -> None:
    from raydeep.fileio import atomic_write_text

    keys = list(s.cfg.tune.space)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "trial_id", s.cfg.tune.metric, "best_epoch", "epochs_run", "status", *keys])
    for row in rows:
        w.writerow([row.rank or "", row.trial_id, "" if row.best is None else f"{row.best:.6g}",
                    row.best_epoch or "", row.epochs, row.status,
                    *("" if row.params.get(k) is None else row.params[k] for k in keys)])
    atomic_write_text(path, buf.getvalue())


def leaderboard_table(s: Sweep, rows: list[TrialRow], top: int = 10):
    from rich.table import Table

    t = s.cfg.tune
    table = Table(title=f"leaderboard: {t.mode} {t.metric} ('-': does not apply to that trial)", title_justify="left")
    for col in ("rank", t.metric, "epochs", "status", *t.space, "trial"):
        table.add_column(col, justify="right" if col in ("rank", t.metric, "epochs") else "left")
    for row in rows[:top]:
        table.add_row(str(row.rank or "-"), _fmt(row.best), str(row.epochs), row.status,
                      *(_fmt(row.params.get(k)) for k in t.space), row.trial_id)
    if len(rows) > top:
        table.caption = f"{len(rows) - top} more in leaderboard.csv"
    return table


def write_best(s: Sweep, row: TrialRow, path: Path) -> "Config":
    """best.yaml: the winning trial's complete config, without a tune: section, so that
    ``raydeep train best.yaml`` runs it as is."""
    import yaml

    from raydeep.fileio import atomic_write_text

    cfg, ignored = trial_config(s.context.base, s.context.space, {k: v for k, v in row.params.items()})
    t = s.cfg.tune
    dump = cfg.model_dump(mode="json", exclude={"tune"})
    # The schedule as set (not every default): a dump of every field can contradict itself
    # (cosine_restarts' cycles beside cycle_steps) when loaded back.
    dump["schedule"] = cfg.schedule.model_dump(mode="json", exclude_unset=True)
    dump["schedule"]["name"] = cfg.schedule.name
    header = [f"# Best trial of the sweep {s.sweep_dir.name} ({row.trial_id}): {t.metric} = {row.best:.4f} "
              f"at epoch {row.best_epoch} of {row.epochs}.",
              f"# Run it: raydeep train {path}"]
    header += [f"#   searched {k}: {v!r}" for k, v in row.params.items() if v is not None]
    if t.scheduler.name == "pbt":
        header.append("# PBT changed this trial's hyperparameters while it trained (see tune/pbt_policy_*.txt); "
                      "these are its last values.")
    atomic_write_text(path, "\n".join(header) + "\n" + yaml.safe_dump(dump, sort_keys=False))
    return cfg


def finish(s: Sweep, results, console, *, wall_time_s: float) -> dict[str, Any]:
    from raydeep.fileio import atomic_write_text

    t = s.cfg.tune
    rows = collect_rows(s, results)
    interrupted = any(r.status == "unfinished" for r in rows)
    console.print(leaderboard_table(s, rows))
    write_leaderboard(s, rows, s.sweep_dir / "leaderboard.csv")
    scored = [r for r in rows if r.best is not None]
    summary: dict[str, Any] = {
        "name": s.cfg.name, "sweep_dir": str(s.sweep_dir), "metric": t.metric, "mode": t.mode,
        "trials": len(rows), "errors": sum(r.status == "error" for r in rows),
        "stopped_early": sum(r.status == "stopped early" for r in rows),
        "epochs_run": sum(r.epochs for r in rows), "interrupted": interrupted, "wall_time_s": wall_time_s,
        "best": None,
    }
    for row in rows:
        if row.status == "error":
            console.print(f"[red]trial {row.trial_id} failed: {row.error}")
    if scored:
        best = scored[0]
        write_best(s, best, s.sweep_dir / "best.yaml")
        summary["best"] = {"trial_id": best.trial_id, "value": best.best, "epoch": best.best_epoch,
                           "params": best.params, "config": str(s.sweep_dir / "best.yaml")}
        try:
            from raydeep.trainers.sweep_plots import plot_sweep

            plot_sweep(s, rows, s.sweep_dir / "sweep.png")
        except Exception as exc:  # a plot must never fail a finished sweep
            console.print(f"[yellow]could not draw sweep.png: {exc}")
        console.print(f"best {t.metric}: {best.best:.4f} (trial {best.trial_id}, epoch {best.best_epoch})   "
                      f"config: {s.sweep_dir / 'best.yaml'}")
    atomic_write_text(s.sweep_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    console.print(f"{len(rows)} trials, {summary['epochs_run']} epochs in {wall_time_s:.0f} s   "
                  f"leaderboard: {s.sweep_dir / 'leaderboard.csv'}")
    if interrupted:
        console.print(f"[yellow]the sweep was interrupted; continue it with: raydeep tune --resume {s.sweep_dir}")
    elif not scored:
        raise RaydeepError(f"no trial reported {t.metric}; see the errors above and {s.sweep_dir / 'tune'}")
    return summary
