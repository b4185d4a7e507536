"""Learning-rate schedules: ``lr(step) = peak_lr × f(step)``, pure functions of the optimizer step.

This module must stay importable without torch (config loading imports it), and without
matplotlib until a plot is asked for.

Conventions, shared by every schedule:

* Steps are 0-based optimizer steps; ``total_steps`` is how many the run takes, so the last
  one is ``total_steps - 1``. ``steps_per_epoch`` is optimizer steps per epoch (after gradient
  accumulation), used by the schedules whose clock is counted in epochs.
* ``warmup`` is an int ``>= 0`` (steps) or a float in ``[0, 1)`` (a fraction of ``total_steps``,
  rounded half up, and at least 1 step when the fraction is > 0). A float ``>= 1`` is refused:
  ``warmup: 1.0`` could mean one step or the whole run, so steps are written as integers.
* Warmup is linear from 0 and does not waste the first step: with ``W`` warmup steps,
  ``f(s) = (s + 1) / W`` for ``s < W``, so ``lr(0) = peak_lr / W`` and ``lr(W - 1) = peak_lr``.
* The continuous schedules (linear, cosine, cosine_restarts, polynomial, inverse_sqrt,
  exponential per step, wsd, one_cycle) are curves ``g(x)`` on ``x ∈ [0, total_steps]``
  sampled at the *end* of each step, ``f(s) = g(s + 1)``, which is what makes the warmup
  above start at ``1/W``. The same rule puts the last step exactly on the curve's end value
  (the floor, for the decays), and the first step after warmup already slightly below peak.
  Decay progress after warmup is ``p = (s + 1 - W) / (total_steps - W)`` in ``(0, 1]``.
* The step-function schedules (step, multistep, exponential per epoch) change value at the
  start of the named step or epoch, counted from the start of the run (as recipes write
  them: "×0.1 at epochs 30 and 60"): milestone ``M`` means steps ``s >= M`` (or epochs
  ``s // steps_per_epoch >= M``) are decayed. ``check_run`` refuses a first decay that
  would fall inside the warmup, or a decay the run never reaches.
* ``min_lr_ratio`` is a floor: after warmup ``f >= min_lr_ratio`` for every schedule that has
  the field. ``constant`` has no floor (it never decays); ``one_cycle`` has no ``warmup``
  or ``min_lr_ratio`` because its own phases define both (``pct_start``, ``div_factor``,
  ``final_div_factor``).
* Steps past ``total_steps - 1`` hold the last step's value, so a loop whose step count came
  out one high does not crash on its final step.

``plateau`` is the one stateful schedule: ``lr_factor`` gives its warmup ramp only; the
reductions live in a ``Schedule`` object, which is fed validation metrics through
``observe`` and saved through ``state_dict``.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, field_validator, model_serializer, model_validator

from raydeep.errors import ConfigError
from raydeep.sections import Section


class _Warmup(Section):
    warmup: int | float = Field(
        0, description="steps (an int >= 0) or a fraction of the run (a float in [0, 1))"
    )

    @field_validator("warmup", mode="before")
    @classmethod
    def _warmup_value(cls, v: Any) -> Any:
        # bool is an int to Python; `warmup: true` is a typo, not one step.
        if isinstance(v, bool):
            raise ValueError("must be a number of steps (int >= 0) or a fraction of the run in [0, 1)")
        return v

    @field_validator("warmup")
    @classmethod
    def _warmup_range(cls, v: int | float) -> int | float:
        if isinstance(v, int):
            if v < 0:
                raise ValueError("must be >= 0 steps, or a fraction of the run in [0, 1)")
        elif not 0.0 <= v < 1.0:
            raise ValueError("a fraction of the run must be in [0, 1); give steps as a whole number, e.g. 100")
        return v


class _Decaying(_Warmup):
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="floor of f after warmup")


class ConstantSchedule(_Warmup):
    """Warmup, then ``f = 1``."""

    name: Literal["constant"] = "constant"


class LinearSchedule(_Decaying):
    """Warmup, then ``f = 1 - (1 - floor) · p``: reaches the floor on the last step."""

    name: Literal["linear"] = "linear"


class CosineSchedule(_Decaying):
    """Warmup, then ``f = floor + (1 - floor) · (1 + cos(π p)) / 2``."""

    name: Literal["cosine"] = "cosine"


class CosineRestartsSchedule(_Decaying):
    """Warmup, then cosine cycles from 1 down to the floor, each restarting at 1 (SGDR).

    Either ``cycles`` (how many cycles fill the post-warmup part of the run; default 3) or
    ``cycle_steps`` (the first cycle's length in steps; cycles repeat until the run ends and
    the last may be cut short) — not both. Each cycle is ``cycle_mult`` times as long as the
    one before. A cycle's last step sits on the floor; the next step starts the new cycle.
    """

    name: Literal["cosine_restarts"] = "cosine_restarts"
    cycles: int = Field(3, ge=1)
    cycle_steps: int | None = Field(None, ge=1)
    cycle_mult: float = Field(1.0, ge=1.0)

    @model_validator(mode="after")
    def _one_length(self) -> "CosineRestartsSchedule":
        if self.cycle_steps is not None and "cycles" in self.model_fields_set:
            raise ValueError("give cycles or cycle_steps, not both")
        return self

    @model_serializer(mode="wrap")
    def _dump_one_length(self, handler) -> dict[str, Any]:
        # With cycle_steps, `cycles` is unused; dumping its default beside cycle_steps would
        # write a config this model refuses (saved run/sweep configs, the workers' copy).
        d = handler(self)
        if self.cycle_steps is not None:
            d.pop("cycles", None)
        return d


class PolynomialSchedule(_Decaying):
    """Warmup, then ``f = floor + (1 - floor) · (1 - p) ** power`` (power 1 is linear)."""

    name: Literal["polynomial"] = "polynomial"
    power: float = Field(1.0, gt=0.0)


class StepSchedule(_Decaying):
    """``f = gamma ** (k // step_size)``, ``k`` the 0-based step or epoch index from the run start."""

    name: Literal["step"] = "step"
    step_size: int = Field(..., ge=1, description="steps or epochs (see `per`) between decays")
    per: Literal["step", "epoch"] = "epoch"
    gamma: float = Field(0.1, gt=0.0, lt=1.0)


class MultistepSchedule(_Decaying):
    """``f = gamma ** (number of milestones <= k)``, ``k`` the 0-based step or epoch index."""

    name: Literal["multistep"] = "multistep"
    milestones: list[int] = Field(..., min_length=1, description="steps or epochs (see `per`)")
    per: Literal["step", "epoch"] = "epoch"
    gamma: float = Field(0.1, gt=0.0, lt=1.0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v):
            raise ValueError("milestones must be positive")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("milestones must be strictly increasing")
        return v


class ExponentialSchedule(_Decaying):
    """``per: step``: ``f = gamma ** (s + 1 - W)`` after warmup (continuous, from the warmup end);
    ``per: epoch``: ``f = gamma ** (s // steps_per_epoch)`` (a step function from the run start)."""

    name: Literal["exponential"] = "exponential"
    gamma: float = Field(..., gt=0.0, lt=1.0)
    per: Literal["step", "epoch"] = "epoch"


class InverseSqrtSchedule(_Decaying):
    """Warmup, then ``f = sqrt(max(W, 1) / (s + 1))``: 1 at the warmup end (Vaswani et al. 2017)."""

    name: Literal["inverse_sqrt"] = "inverse_sqrt"


class OneCycleSchedule(Section):
    """Smith's 1cycle, three phases over ``x = s + 1 ∈ (0, total_steps]``, ``P = pct_start · total``:

    1. ``(0, P]``: from ``1/div_factor`` up to 1 (this is its warmup);
    2. ``(P, 2P]``: from 1 back down to ``1/div_factor``;
    3. ``(2P, total]``: annihilation from ``1/div_factor`` to ``1/(div_factor · final_div_factor)``,
       which the last step reaches exactly.

    ``anneal`` is the shape of each phase (Smith 2018 uses linear). ``pct_start < 0.5`` so the
    first two phases leave room for the third.
    """

    name: Literal["one_cycle"] = "one_cycle"
    pct_start: float = Field(0.3, gt=0.0, lt=0.5)
    div_factor: float = Field(25.0, ge=1.0)
    final_div_factor: float = Field(1e4, ge=1.0)
    anneal: Literal["linear", "cosine"] = "linear"


class WsdSchedule(_Decaying):
    """Warmup–stable–decay: warmup, ``f = 1``, then a decay over the last ``decay_fraction`` of the
    run (clipped to start no earlier than the warmup end) down to the floor on the last step.

    With decay progress ``q ∈ (0, 1]``: ``linear`` ``1 - (1 - floor) q``; ``cosine``
    ``floor + (1 - floor)(1 + cos πq)/2``; ``sqrt`` ``1 - (1 - floor) √q`` (the "1 - sqrt"
    cooldown of Hägele et al. 2024).
    """

    name: Literal["wsd"] = "wsd"
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0)
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"


class PlateauSchedule(_Decaying):
    """Warmup, then ``f = scale``, where ``scale`` starts at 1 and is multiplied by ``factor``
    (never below ``min_lr_ratio``) when ``metric`` has not improved for more than ``patience``
    validations; after a reduction, ``cooldown`` validations are not counted. Improvement is
    ``threshold`` relative (``rel``: better than best·(1 ∓ threshold)) or absolute (``abs``),
    as in ``torch.optim.lr_scheduler.ReduceLROnPlateau``, whose rules this follows exactly.
    """

    name: Literal["plateau"] = "plateau"
    metric: str = Field("val/loss", description="the validation metric the loop passes to observe()")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(2, ge=0)
    factor: float = Field(0.1, gt=0.0, lt=1.0)
    cooldown: int = Field(0, ge=0)
    threshold: float = Field(1e-4, ge=0.0)
    threshold_mode: Literal["rel", "abs"] = "rel"


ScheduleConfig = Annotated[
    Union[
        ConstantSchedule,
        LinearSchedule,
        CosineSchedule,
        CosineRestartsSchedule,
        PolynomialSchedule,
        StepSchedule,
        MultistepSchedule,
        ExponentialSchedule,
        InverseSqrtSchedule,
        OneCycleSchedule,
        WsdSchedule,
        PlateauSchedule,
    ],
    Field(discriminator="name"),
]

# name -> config class, e.g. for a did-you-mean on a foreign key.
SCHEDULES: dict[str, type[Section]] = {
    cls.model_fields["name"].default: cls for cls in get_args(get_args(ScheduleConfig)[0])
}
SCHEDULE_NAMES: tuple[str, ...] = tuple(SCHEDULES)


# ---------------------------------------------------------------------------------------------
# The pure part


def _check_lengths(total_steps: int, steps_per_epoch: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")


def warmup_steps(cfg: Any, total_steps: int) -> int:
    """Warmup length in steps: the int as given, or a fraction of ``total_steps`` rounded half up
    (at least 1 when the fraction is > 0). ``one_cycle``: its first phase, ``pct_start · total``."""
    if isinstance(cfg, OneCycleSchedule):
        return max(1, math.floor(cfg.pct_start * total_steps + 0.5))
    w = cfg.warmup
    if isinstance(w, int):
        return w
    if w == 0.0:
        return 0
    return max(1, math.floor(w * total_steps + 0.5))


def _first_decay_step(cfg: Any, steps_per_epoch: int) -> int | None:
    """The first step a step-function schedule decays at (None for the continuous ones)."""
    unit = steps_per_epoch if getattr(cfg, "per", "step") == "epoch" else 1
    if isinstance(cfg, StepSchedule):
        return cfg.step_size * unit
    if isinstance(cfg, MultistepSchedule):
        return cfg.milestones[0] * unit
    if isinstance(cfg, ExponentialSchedule) and cfg.per == "epoch":
        return unit
    return None


def check_run(cfg: Any, total_steps: int, steps_per_epoch: int) -> None:
    """Refuse a schedule that does not fit this run's step count (ConfigError naming the key).

    Called by ``Schedule``; ``lr_factor`` itself does not re-check on every step.
    """
    _check_lengths(total_steps, steps_per_epoch)
    w = warmup_steps(cfg, total_steps)
    if w > total_steps:
        raise ConfigError(
            f"schedule.warmup = {cfg.warmup!r} is {w} steps, longer than the run's {total_steps} "
            f"optimizer steps; use fewer steps or a fraction in [0, 1)"
        )
    first = _first_decay_step(cfg, steps_per_epoch)
    if first is None:
        return
    key = {"step": "step_size", "multistep": "milestones", "exponential": "per"}[cfg.name]
    if first < w:
        raise ConfigError(
            f"schedule.{key}: the first decay (step {first}) falls inside the {w}-step warmup; "
            f"shorten the warmup or move the decay later"
        )
    if first >= total_steps:
        unit = f"epoch {first // steps_per_epoch}" if cfg.per == "epoch" else f"step {first}"
        raise ConfigError(
            f"schedule.{key}: the first decay ({unit}) is past the run's end "
            f"({total_steps} steps, {math.ceil(total_steps / steps_per_epoch)} epochs); "
            f"check `per` (step or epoch) and the run length"
        )
    if isinstance(cfg, MultistepSchedule):
        late = [m for m in cfg.milestones if m * (steps_per_epoch if cfg.per == "epoch" else 1) >= total_steps]
        if late:
            raise ConfigError(
                f"schedule.milestones: {late} are past the run's end ({total_steps} steps, "
                f"{steps_per_epoch} per epoch); check `per` (step or epoch) and the run length"
            )


def _ramp(u: float, shape: str) -> float:
    """0 -> 1 over u in [0, 1], linear or half-cosine."""
    return u if shape == "linear" else (1.0 - math.cos(math.pi * u)) / 2.0


def _one_cycle(cfg: OneCycleSchedule, x: float, total: int) -> float:
    lo = 1.0 / cfg.div_factor
    end = lo / cfg.final_div_factor
    p = cfg.pct_start * total
    if x <= p:
        return lo + (1.0 - lo) * _ramp(x / p, cfg.anneal)
    if x <= 2 * p:
        return 1.0 - (1.0 - lo) * _ramp((x - p) / p, cfg.anneal)
    return lo - (lo - end) * _ramp((x - 2 * p) / (total - 2 * p), cfg.anneal)


def _cosine_restarts(cfg: CosineRestartsSchedule, u: float, decay: int, floor: float) -> float:
    """u in (0, decay]: steps since the warmup end, at the end of the current step."""
    m = cfg.cycle_mult
    if cfg.cycle_steps is not None:
        length, last = float(cfg.cycle_steps), None
    else:
        # L + Lm + ... + Lm^(N-1) = decay
        n = cfg.cycles
        length = decay / (n if m == 1.0 else (m**n - 1.0) / (m - 1.0))
        last = n - 1
    start, k = 0.0, 0
    # Cycles are half-open (start, start + length]: the boundary step ends a cycle on the floor.
    while u > start + length * (1.0 + 1e-12) and (last is None or k < last):
        start += length
        length *= m
        k += 1
    q = min(1.0, (u - start) / length)
    return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * q)) / 2.0


def lr_factor(cfg: Any, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """``f(step)``, the multiple of the peak LR for 0-based optimizer step ``step`` (pure).

    See the module docstring for the conventions. ``plateau`` gives its warmup ramp and then 1;
    its reductions live in ``Schedule``.
    """
    _check_lengths(total_steps, steps_per_epoch)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    s = min(step, total_steps - 1)
    x = s + 1  # the continuous curves are sampled at the end of the step
    if isinstance(cfg, OneCycleSchedule):
        return _one_cycle(cfg, x, total_steps)

    w = warmup_steps(cfg, total_steps)
    if s < w:
        return x / w
    if isinstance(cfg, (ConstantSchedule, PlateauSchedule)):
        return 1.0

    floor = cfg.min_lr_ratio
    decay = total_steps - w  # >= 1 here, since s >= w
    p = (x - w) / decay
    if isinstance(cfg, LinearSchedule):
        f = 1.0 - (1.0 - floor) * p
    elif isinstance(cfg, CosineSchedule):
        f = floor + (1.0 - floor) * (1.0 + math.cos(math.pi * p)) / 2.0
    elif isinstance(cfg, CosineRestartsSchedule):
        f = _cosine_restarts(cfg, x - w, decay, floor)
    elif isinstance(cfg, PolynomialSchedule):
        f = floor + (1.0 - floor) * (1.0 - p) ** cfg.power
    elif isinstance(cfg, InverseSqrtSchedule):
        f = math.sqrt(max(w, 1) / x)
    elif isinstance(cfg, WsdSchedule):
        start = max(float(w), total_steps * (1.0 - cfg.decay_fraction))
        if x <= start:
            f = 1.0
        else:
            q = (x - start) / (total_steps - start)
            if cfg.decay_shape == "linear":
                f = 1.0 - (1.0 - floor) * q
            elif cfg.decay_shape == "cosine":
                f = floor + (1.0 - floor) * (1.0 + math.cos(math.pi * q)) / 2.0
            else:
                f = 1.0 - (1.0 - floor) * math.sqrt(q)
    elif isinstance(cfg, ExponentialSchedule) and cfg.per == "step":
        f = cfg.gamma ** (x - w)
    else:  # step functions, counted from the run start
        k = s // steps_per_epoch if cfg.per == "epoch" else s
        if isinstance(cfg, StepSchedule):
            f = cfg.gamma ** (k // cfg.step_size)
        elif isinstance(cfg, MultistepSchedule):
            f = cfg.gamma ** sum(1 for m in cfg.milestones if k >= m)
        elif isinstance(cfg, ExponentialSchedule):
            f = cfg.gamma**k
        else:
            raise TypeError(f"not a schedule config: {type(cfg).__name__}")
    return max(floor, f)


# ---------------------------------------------------------------------------------------------
# What the training loop holds


class Schedule:
    """The LR for each optimizer step, plus ``plateau``'s state (saved in checkpoints).

    ``schedule(step)`` is the LR to set before optimizer step ``step``; ``observe(epoch, metric)``
    is called after each validation with the value of ``cfg.metric`` (only ``plateau`` uses it).
    """

    def __init__(self, cfg: Any, peak_lr: float, total_steps: int, steps_per_epoch: int) -> None:
        if not peak_lr > 0:
            raise ValueError(f"peak_lr must be > 0, got {peak_lr}")
        check_run(cfg, total_steps, steps_per_epoch)
        self.cfg = cfg
        self.peak_lr = float(peak_lr)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        # plateau state; inert for the other schedules
        self.scale = 1.0
        self.best: float | None = None  # None until the first observation (JSON-safe, unlike inf)
        self.num_bad = 0
        self.cooldown_left = 0
        self.last_epoch: int | None = None
        self.reductions: list[int] = []  # epochs after which the LR was reduced, for the log

    def __call__(self, step: int) -> float:
        f = lr_factor(self.cfg, step, self.total_steps, self.steps_per_epoch)
        return self.peak_lr * f * self.scale

    def _improved(self, metric: float) -> bool:
        c = self.cfg
        if not math.isfinite(metric):  # NaN or inf is never better (an inf best would stall the LR)
            return False
        if self.best is None:
            return True
        best = self.best
        if c.mode == "min":
            bound = best * (1.0 - c.threshold) if c.threshold_mode == "rel" else best - c.threshold
            return metric < bound
        bound = best * (1.0 + c.threshold) if c.threshold_mode == "rel" else best + c.threshold
        return metric > bound

    def observe(self, epoch: int, metric: float) -> None:
        """Feed one validation result; only ``plateau`` reacts. Epochs must increase."""
        if not isinstance(self.cfg, PlateauSchedule):
            return
        if self.last_epoch is not None and epoch <= self.last_epoch:
            # A repeated epoch would count one validation twice toward patience.
            raise ValueError(f"observe(epoch={epoch}) after epoch {self.last_epoch} was already observed")
        self.last_epoch = epoch
        c = self.cfg
        metric = float(metric)
        if self._improved(metric):
            self.best = metric
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0
        if self.num_bad > c.patience:
            new = max(self.scale * c.factor, c.min_lr_ratio)
            if new < self.scale:
                self.scale = new
                self.reductions.append(epoch)
            self.cooldown_left = c.cooldown
            self.num_bad = 0

    def state_dict(self) -> dict:
        """Plain JSON-able values: the schedule name and ``plateau``'s counters."""
        return {
            "name": self.cfg.name,
            "scale": self.scale,
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_left": self.cooldown_left,
            "last_epoch": self.last_epoch,
            "reductions": list(self.reductions),
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore ``plateau``'s state; the other schedules are pure and take nothing from ``d``
        (so a run may resume under a different stateless schedule)."""
        if not isinstance(self.cfg, PlateauSchedule):
            return
        if d.get("name") != "plateau":
            raise ConfigError(
                f"schedule.name = plateau, but the checkpoint was saved with schedule "
                f"{d.get('name')!r} and holds no plateau state; resume with that schedule or start fresh"
            )
        self.scale = float(d["scale"])
        self.best = None if d["best"] is None else float(d["best"])
        self.num_bad = int(d["num_bad"])
        self.cooldown_left = int(d["cooldown_left"])
        self.last_epoch = None if d["last_epoch"] is None else int(d["last_epoch"])
        self.reductions = [int(e) for e in d["reductions"]]


def lr_curve(cfg: Any, peak_lr: float, total_steps: int, steps_per_epoch: int) -> list[float]:
    """The LR at every step of the run (``plateau``: as if the metric never stalled)."""
    sched = Schedule(cfg, peak_lr, total_steps, steps_per_epoch)
    return [sched(s) for s in range(total_steps)]


def plot_schedules(
    items: list[tuple[str, Any]],
    peak_lr: float,
    total_steps: int,
    steps_per_epoch: int,
    out_png: str,
) -> None:
    """Draw each ``(label, cfg)`` curve over the run's real step count into ``out_png``.

    Uses the Agg canvas directly (no pyplot, so no global backend state), and writes to a
    temporary file beside ``out_png`` before renaming, so a reader never sees half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not items:
        raise ValueError("plot_schedules needs at least one (label, schedule) pair")
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = list(range(total_steps))
    for label, cfg in items:
        ax.plot(steps, lr_curve(cfg, peak_lr, total_steps, steps_per_epoch), label=label, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_xlim(0, max(total_steps - 1, 1))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    epochs = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
    epochs.set_xlabel("epoch")
    ax.legend(loc="best")
    ax.set_title(f"peak lr {peak_lr:g}, {total_steps} steps, {steps_per_epoch} per epoch")

    out_dir = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".schedules-", suffix=".png", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=120)
        os.replace(tmp, out_png)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
