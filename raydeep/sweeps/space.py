"""The ``tune:`` config section and what its parameters do to a config: pure (no Ray, no torch,
no data, no ``raydeep.config``, which imports ``TuneConfig`` from here).

* the section's models: ``TuneConfig``, ``Distribution`` (one searched parameter),
  ``SchedulerConfig``, ``SearchConfig``;
* which parameters apply to a trial (``imbalance.beta`` only with ``effective_number``, a
  schedule's own fields only for that schedule, ...): a trial's config is the base config with
  the parameters that apply, and the others are ``None`` in its parameters, so two trials
  never differ only in values that change nothing (``apply_params``, ``canonical``).

Checking the space against the config models lives in ``sweeps.plan``; a trial's validated
config in ``sweeps.trial``.
"""

from __future__ import annotations

import copy
import difflib
import math
import random
import re
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_serializer, model_validator

from raydeep.sections import CLASSIFICATION_METRICS as METRICS
from raydeep.sections import CAUSAL_LM_ONLY, PER_CLASS, REGRESSION_ONLY, Section, improves_upward
from raydeep.trainers.schedules import SCHEDULES

# ---------------------------------------------------------------------------------------------
# The tune: section


DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
_CALL = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")


class Distribution(Section):
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
            v = {m.group(1): [_scalar(a) for a in m.group(2).split(",") if a.strip()]}
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

    @model_serializer(mode="plain")
    def _as_written(self) -> Any:
        # Saved configs (run dirs, sweep dirs) read back the way users write it.
        return self.to_yaml()

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


def _scalar(text: str) -> Any:
    """One argument of the call form: a number (YAML would read 1e-4 as a string), else YAML."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


SCHEDULER_PARAMS = {
    "asha": ("grace_period", "reduction_factor"),
    "pbt": ("perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
    "none": (),
}


class SchedulerConfig(Section):
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

    @model_serializer(mode="wrap")
    def _own_only(self, handler) -> dict:
        return {k: v for k, v in handler(self).items() if k == "name" or k in SCHEDULER_PARAMS[self.name]}

    @model_validator(mode="after")
    def _own_params(self) -> "SchedulerConfig":
        # A foreign key at its default is what a saved config (every field dumped) holds: allowed.
        foreign = sorted(f for f in self.model_fields_set - {"name"} - set(SCHEDULER_PARAMS[self.name])
                         if getattr(self, f) != type(self).model_fields[f].default)
        if foreign:
            takes = ", ".join(SCHEDULER_PARAMS[self.name]) or "no parameters"
            raise ValueError(f"{', '.join(foreign)}: not a parameter of scheduler {self.name} (it takes {takes})")
        return self


class SearchConfig(Section):
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


class TuneConfig(Section):
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
        per_class = v.startswith(PER_CLASS) and v.count("/") == 2 and not v.endswith("/")
        if v in METRICS or v in REGRESSION_ONLY or v in CAUSAL_LM_ONLY or per_class:
            return v
        close = difflib.get_close_matches(v, METRICS + REGRESSION_ONLY + CAUSAL_LM_ONLY, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"{hint}the workers report {', '.join(METRICS)}, and val/recall/<class>, val/f1/<class>; "
                         f"a model.task: regression run {', '.join(REGRESSION_ONLY)}, val/loss and train/loss; "
                         f"a causal_lm run val/loss, {', '.join(CAUSAL_LM_ONLY)} and train/loss")

    @field_validator("max_concurrent_trials")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _direction(self) -> "TuneConfig":
        wanted = "max" if improves_upward(self.metric) else "min"
        if self.mode != wanted:
            raise ValueError(f"metric {self.metric} with mode: {self.mode} would favour the worst trials; "
                             f"use mode: {wanted}")
        return self


# ---------------------------------------------------------------------------------------------
# Which parameters apply, and the raw config of a trial


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
    "model.num_classes": "it is the data's number of classes",
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


def _selector(raw: dict, key: str) -> Any:
    """A selector's value in ``raw``, which spells out every selector (``plan.base_raw`` does):
    their defaults live in the config models, which this module does not import."""
    value = _get(raw, key)
    if value is None:
        raise KeyError(f"the base config does not spell out the selector {key}; build it with base_raw")
    return value


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


def representative(space: dict[str, Distribution]) -> dict[str, Any]:
    """One point of the space: each distribution's first value or lower bound."""
    return {k: (d.values[0] if d.kind in ("choice", "grid") else
                int(d.low) if d.kind == "randint" else d.low) for k, d in space.items()}


def pbt_mutable(key: str) -> bool:
    """Whether PBT perturbs ``key``: the learning rate and the schedule's parameters."""
    return key == "optim.lr" or key.startswith("schedule.")
