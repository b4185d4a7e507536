"""The base class of every config section, and the metric names a config may name.

A leaf (pydantic only): ``config.py``, the modules that own a section (``schedules``,
``class_weights``, ``storage``, ``sweeps/space``) and the tasks all import it, so none of them
needs another's module to agree on what a section is or which metrics a task reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One part of the run config: unknown keys are refused, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# What a task's worker loop reports every epoch and a config may rank by (run.early_stopping,
# a plateau schedule's metric, tune.metric). trainers/tasks.py makes them, one Task per entry.
CLASSIFICATION_METRICS = ("val/macro_f1", "val/accuracy", "val/balanced_accuracy", "val/macro_precision",
                          "val/macro_recall", "val/loss", "train/loss")
PER_CLASS = ("val/recall/", "val/f1/")  # + a label name
PER_CLASS_TASKS = ("classification",)  # the tasks that report per-class metrics
REGRESSION_ONLY = ("val/mse", "val/rmse", "val/mae", "val/r2")
REGRESSION_METRICS = ("val/loss", *REGRESSION_ONLY, "train/loss")
CAUSAL_LM_ONLY = ("val/perplexity",)
CAUSAL_LM_METRICS = ("val/loss", *CAUSAL_LM_ONLY, "train/loss")  # loss: mean next-token NLL per real token
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATION_METRICS,
    "regression": REGRESSION_METRICS,
    "causal_lm": CAUSAL_LM_METRICS,
}


@dataclass(frozen=True)
class TaskDefaults:
    """What a task's config gets when it names none, and which losses it trains with."""

    loss: str  # imbalance.loss
    losses: tuple[str, ...]  # the imbalance.loss values the task accepts
    early_stopping_metric: str  # also what the best checkpoint is chosen by
    tune_metric: str
    example_metric: str  # named in "pick a ... metric such as ..."


TASK_DEFAULTS: dict[str, TaskDefaults] = {
    # the sections' own defaults (ImbalanceConfig, EarlyStoppingConfig, TuneConfig) are classification's
    "classification": TaskDefaults("cross_entropy", ("cross_entropy", "focal", "hinge"), "val/macro_f1",
                                   "val/macro_f1", example_metric="val/macro_f1"),
    # tune.metric val/loss (= val/mse) ranks trials as val/rmse does
    "regression": TaskDefaults("mse", ("mse",), "val/rmse", "val/loss", example_metric="val/rmse"),
    "causal_lm": TaskDefaults("cross_entropy", ("cross_entropy",), "val/loss", "val/loss",
                              example_metric="val/perplexity"),
}


def improves_upward(metric: str) -> bool:
    """Whether ``metric`` grows with a better model: not for losses, errors (mse, rmse, mae) and perplexity."""
    return not (metric.endswith("loss") or metric in ("val/mse", "val/rmse", "val/mae", "val/perplexity"))


def metric_mode(metric: str) -> str:
    """The direction in which ``metric`` improves: ``min`` for losses and errors, else ``max``."""
    return "max" if improves_upward(metric) else "min"


def is_known_metric(metric: str) -> bool:
    """Whether some task reports ``metric`` (per-class names are checked against labels later)."""
    return any(metric in names for names in TASK_METRICS.values()) or metric.startswith(PER_CLASS)


def metric_task_error(key: str, metric: str, task: str) -> str | None:
    """Why ``metric`` (at config ``key``) is one the run's ``task`` does not report; None when it
    does, or when it is no task's metric at all (the field's own validator names those)."""
    reported = TASK_METRICS[task]
    if metric in reported or (metric.startswith(PER_CLASS) and task in PER_CLASS_TASKS):
        return None
    if task not in PER_CLASS_TASKS:  # a closed list: name it
        return f"{key} = {metric!r}: a model.task: {task} run reports {', '.join(reported)}"
    owner = next((t for t, names in TASK_METRICS.items() if metric in names), None)
    if owner is None:
        return None
    return (f"{key} = {metric!r} is a {owner} metric; set model.task: {owner}, "
            f"or pick a {task} metric such as {TASK_DEFAULTS[task].example_metric}")


def loss_task_error(loss: str, task: str) -> str | None:
    """Why ``imbalance.loss`` is not one the run's ``task`` trains with; None when it is."""
    accepted = TASK_DEFAULTS[task].losses
    if loss in accepted:
        return None
    owner = next((t for t, d in TASK_DEFAULTS.items() if loss in d.losses), None)
    if len(accepted) == 1:
        return (f"imbalance.loss = {loss!r} is a {owner} loss; model.task: {task} "
                f"trains with imbalance.loss: {accepted[0]}")
    return (f"imbalance.loss = {loss!r} is the {owner} loss; set model.task: {owner}, "
            f"or use {', '.join(accepted[:-1])} or {accepted[-1]}")
