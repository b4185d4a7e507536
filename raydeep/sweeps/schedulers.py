"""Tune schedulers that survive ``raydeep tune --resume``.

Ray 2.60 does not save a scheduler's state with the experiment: ``Tuner.restore`` unpickles
the scheduler as it was when the sweep started (``tuner.pkl``) and calls ``on_trial_add`` for
every saved trial. Left alone, that means after a resume

* ASHA has empty rungs: trials that finished or were stopped before the interruption no longer
  count, so a bad trial that reaches a rung first after the resume is never stopped; and a
  trial whose Train run resumes from its own checkpoint (ASHA trials report through
  ``TuneReportCallback`` and hold no Tune checkpoint) restarts Tune's ``training_iteration`` at
  1, so on iterations it would be judged at the wrong rungs;
* PBT knows no trial's score, and its synchronous mode's next sync point restarts at the first
  segment, so after the first post-resume round every result triggers a "synchronous" round on
  the others' stale scores, pausing trials mid-segment;
* a trial without a Tune checkpoint (ASHA, none) starts a new, empty ``result.json`` when the
  resume runs in a new Ray session, which the next sync writes over the saved history.

These subclasses rebuild that state in ``on_trial_add`` from the trial's saved ``result.json``
(the history Tune itself keeps), and both measure time in epochs done (ASHA: ``epoch + 1``, which
the worker loop reports and which a resumed Train run continues; PBT: each segment's
``epochs_done``), not Tune iterations, which a restored trial restarts from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
EPOCHS_DONE = "epochs_done"  # ASHA's time attribute: epochs the trial's Train run has completed


def saved_results(trial: Trial) -> list[dict[str, Any]]:
    """The results this trial reported before an interruption (empty for a new trial), and
    restore them to the driver's staging copy if this Ray session has none, so that Tune's
    logger appends to the history instead of replacing it."""
    try:
        fs = trial.storage.storage_filesystem
        remote = Path(trial.path, RESULT_FILE).as_posix()
        with fs.open_input_stream(remote) as f:
            text = f.readall().decode()
    except Exception:  # no file yet (a new trial), or no storage context: nothing to restore
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # the last line of a file cut by a kill
    try:
        local = Path(trial.local_path, RESULT_FILE)
        if rows and not local.exists() and local.as_posix() != remote:
            os.makedirs(local.parent, exist_ok=True)
            local.write_text("".join(json.dumps(r) + "\n" for r in rows))
    except Exception as exc:  # the history in the leaderboard is a nicety; the sweep goes on
        logger.warning("could not restore %s's result history: %s", trial.trial_id, exc)
    return rows


class ResumableFIFO(FIFOScheduler):
    """``scheduler: none``: keeps a resumed trial's result history."""

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        saved_results(trial)


class EpochASHA(AsyncHyperBandScheduler):
    """ASHA on epochs done, whose rungs a resume rebuilds from the trials' saved results."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(time_attr=EPOCHS_DONE, **kwargs)
        self._stop_next: set[str] = set()

    @staticmethod
    def _timed(result: dict) -> dict:
        epoch = result.get("epoch")
        if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
            return {**result, EPOCHS_DONE: int(epoch) + 1}
        return result

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        stopped = False
        for result in saved_results(trial):
            stopped |= self.on_trial_result(tune_controller, trial, result) == TrialScheduler.STOP
        if stopped and trial.status != Trial.TERMINATED:
            # ASHA decided to stop it, but the sweep was interrupted before Tune did.
            self._stop_next.add(trial.trial_id)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if trial.trial_id in self._stop_next:
            self._stop_next.discard(trial.trial_id)
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, self._timed(result))

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._stop_next.discard(trial.trial_id)
        super().on_trial_complete(tune_controller, trial, self._timed(result))


class ResumablePBT(PopulationBasedTraining):
    """PBT whose per-trial state (last score, result, time, checkpoint) and synchronous-mode
    sync point a resume rebuilds from the trials' last saved results."""

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        rows = [r for r in saved_results(trial) if self._time_attr in r and self._metric in r]
        if not rows:
            return
        last = rows[-1]
        score = self._metric_op * last[self._metric]
        if not (isinstance(score, (int, float)) and math.isfinite(score)):
            return
        state = self._trial_state[trial]
        time = last[self._time_attr]
        state.last_score, state.last_result = score, last
        state.last_train_time = time
        # Time is epochs done; every segment but a short last one ends on a perturbation point.
        state.last_perturbation_time = time - time % self._perturbation_interval
        state.last_checkpoint = trial.checkpoint  # what a clone of it would continue from
        if self._synch and trial.status != Trial.TERMINATED:
            # The next sync is one interval after the slowest unfinished trial, as it was.
            live = [s.last_train_time for t, s in self._trial_state.items()
                    if t.status != Trial.TERMINATED and s.last_score is not None]
            self._next_perturbation_sync = max(self._perturbation_interval, min(live) + self._perturbation_interval)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """Synchronous PBT runs a waiting trial only while it is behind the next sync point. If
        every unfinished trial waits and none is behind it, nothing can ever run. A resume can
        get there when the state rebuilt from saved results does not match the checkpoints the
        trials restart from (Tune saves its experiment state every ~10 s, results and
        checkpoints as they come): seen in a real resume, both trials PAUSED at epoch 2 with the
        sync point at 2, forever. Move the point on instead."""
        trial = super().choose_trial_to_run(tune_controller)
        if trial is not None or not self._synch:
            return trial
        trials = tune_controller.get_trials()
        waiting = [t for t in trials if t.status in (Trial.PENDING, Trial.PAUSED)]
        if not waiting or any(t.status == Trial.RUNNING for t in trials):
            return None
        behind = min(self._trial_state[t].last_train_time for t in waiting)
        logger.warning("PBT: every trial waits at epoch %s or later with the sync point at %s; moving it to %s",
                       behind, self._next_perturbation_sync, behind + self._perturbation_interval)
        self._next_perturbation_sync = behind + self._perturbation_interval
        return super().choose_trial_to_run(tune_controller)
