"""A sweep in MLflow (``run.mlflow`` of a ``raydeep tune`` config): one parent run for the sweep
(the base config and its search space as params; at the end the leaderboard, ``sweep.png``,
``best.yaml`` and the best value) and one nested run per trial (its sampled params, its metrics
per epoch), written on the driver by a Tune callback like the sweep log: trials never talk to
MLflow, so trials on other nodes need no route to the tracking server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raydeep.sweeps.callbacks import TrialEvents
from raydeep.sweeps.space import canonical
from raydeep.sweeps.trial import trial_params
from raydeep.trainers.mlflow_log import (
    MAX_PARAM_VALUE,
    SWEEP_ARTIFACT_NAMES,
    MlflowRun,
    MlflowTarget,
    clean,
    ended_status,
    run_artifacts,
)
from raydeep.trainers.tracking import trial_dirname

TRIAL_TAG = "raydeep.trial_id"


class MlflowSweep:
    """The nested runs of a sweep's trials under ``parent_run_id``; driven like ``SweepLog`` (what
    Tune hands a callback, without Tune's signatures). Pickled with Tune's experiment state: it
    holds ids and names, and each run makes its client again when it needs one."""

    def __init__(self, target: MlflowTarget, parent_run_id: str, base: dict) -> None:
        self.target, self.parent_run_id, self.base = target, parent_run_id, base
        self.runs: dict[str, MlflowRun] = {}
        self.ended: set[str] = set()

    def on_trial_start(self, trial) -> None:
        if trial.trial_id in self.runs:  # a PBT segment or a restarted trial: the same run
            self.ended.discard(trial.trial_id)
            return
        params = {k: v for k, v in canonical(self.base, trial_params(trial.config)).items() if v is not None}
        existing = self._existing(trial.trial_id)  # a trial that --resume continues
        target = MlflowTarget(self.target.tracking_uri, self.target.experiment,
                              trial_dirname(trial.trial_id, params), {TRIAL_TAG: trial.trial_id})
        self.runs[trial.trial_id] = MlflowRun.start(target, clean(params, MAX_PARAM_VALUE),
                                                    parent_run_id=self.parent_run_id, resume_id=existing)

    def _existing(self, trial_id: str) -> str | None:
        from mlflow.tracking import MlflowClient  # deferred: the optional extra

        client = MlflowClient(tracking_uri=self.target.tracking_uri)
        parent = client.get_run(self.parent_run_id)
        found = client.search_runs([parent.info.experiment_id], max_results=1,
                                   filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and "
                                                 f"tags.`{TRIAL_TAG}` = '{trial_id}'")
        return found[0].info.run_id if found else None

    def on_trial_result(self, trial, result: dict) -> None:
        run = self.runs.get(trial.trial_id)
        if run is not None:  # the workers' metrics, not Tune's own counters
            run.epoch({k: v for k, v in result.items() if "/" in k or k in ("lr", "epoch", "global_step")})

    def on_trial_end(self, trial, status: str) -> None:
        run = self.runs.get(trial.trial_id)
        if run is not None:
            run.end("FAILED" if status == "error" else "FINISHED")
            self.ended.add(trial.trial_id)

    def end_open(self, status: str) -> None:
        """The trials still running when the sweep stopped (Ctrl-C): ``status`` (KILLED)."""
        for trial_id, run in self.runs.items():
            if trial_id not in self.ended:
                run.end(status)
                self.ended.add(trial_id)


class MlflowSweepCallback(TrialEvents):
    """An ``MlflowSweep`` as a ``ray.tune.Callback``; a failure is printed once, never raised."""

    def __init__(self, sweep: MlflowSweep) -> None:
        super().__init__(sweep)
        self.warned = False

    @property
    def sweep(self) -> MlflowSweep:
        return self.target

    def failed(self, exc: Exception) -> None:
        if not self.warned:
            self.warned = True
            print(f"raydeep: mlflow: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''} "
                  "(the sweep goes on; further MLflow errors are not shown)")


def end_sweep(parent: MlflowRun, callback: MlflowSweepCallback | None, sweep_dir: Path,
              summary: dict[str, Any] | None, exc: BaseException | None = None) -> None:
    """The sweep's own run at its end: the best value, its files, and its status (FAILED on an
    error; KILLED on Ctrl-C or a sweep Tune stopped with trials unfinished). Trials left open
    end KILLED."""
    status = ended_status(exc) if exc is not None or summary is None else \
        "KILLED" if summary.get("interrupted") else "FINISHED"
    if callback is not None:
        callback.sweep.end_open("KILLED")
    best = (summary or {}).get("best") or {}
    if isinstance(best.get("value"), (int, float)):
        parent.metrics({f"best/{summary['metric']}": best["value"]})
        parent.tags({"raydeep.best_trial": str(best.get("trial_id"))})
    parent.artifacts(run_artifacts(sweep_dir, SWEEP_ARTIFACT_NAMES))
    parent.end(status)
