"""Tune's trial events forwarded to raydeep's sweep logs (trials.jsonl + TensorBoard, MLflow).

Runs on the sweep's driver. A log that fails must never stop the sweep: ``TrialEvents`` catches
what the target raises and hands it to ``failed`` (a method, not a function passed in: Tune
pickles its callbacks with the experiment state, so ``tune --resume`` restores them).
"""

from __future__ import annotations

from typing import Any

from ray import tune


class TrialEvents(tune.Callback):
    """``target.on_trial_start(trial)``, ``on_trial_result(trial, result)`` and
    ``on_trial_end(trial, "terminated" | "error")`` as a ``ray.tune.Callback``."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def failed(self, exc: Exception) -> None:
        raise NotImplementedError

    def _safe(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a log must never fail a sweep
            self.failed(exc)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safe(self.target.on_trial_start, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._safe(self.target.on_trial_result, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._safe(self.target.on_trial_end, trial, "terminated")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._safe(self.target.on_trial_end, trial, "error")
