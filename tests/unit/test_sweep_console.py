"""raydeep's sweep view: Tune's own Trial objects (no Ray cluster) rendered as the console shows them."""

from __future__ import annotations

import io
import pickle

from ray.tune.experiment import Trial
from rich.console import Console

from raydeep.sweeps.console import SweepConsole, short_names


def trial(trial_id: str, lr: float, scores: list[float], status: str) -> Trial:
    t = Trial("run_trial", config={"params": {"optim.lr": lr}}, trial_id=trial_id, stub=True)
    for epoch, score in enumerate(scores):
        t.update_last_result({"epoch": epoch, "val/macro_f1": score, "training_iteration": epoch + 1})
    t.set_status(status)
    return t


def view(trials: list[Trial], **kw) -> tuple[SweepConsole, str]:
    out = io.StringIO()
    c = SweepConsole(metric="val/macro_f1", mode="max", epochs=3, keys=["optim.lr"],
                     console=Console(file=out, width=120), min_interval_s=0, **kw)
    c.report(trials, done=False)
    return c, out.getvalue()


def test_one_row_per_trial_with_status_epochs_metric_best_params_and_a_footer():
    trials = [trial("t_00000", 1e-2, [0.3, 0.5, 0.45], Trial.TERMINATED),  # all 3 epochs: finished
              trial("t_00001", 1e3, [0.1], Trial.TERMINATED),  # ended after 1 of 3: ASHA stopped it
              trial("t_00002", 3e-3, [0.2], Trial.RUNNING),
              trial("t_00003", 1e-4, [], Trial.PENDING)]
    _, text = view(trials)
    assert text.splitlines()[0].split() == ["trial", "status", "epoch", "val/macro_f1", "best", "lr"]
    assert short_names(["optim.lr", "schedule.name", "imbalance.loss", "model.loss"]) == [
        "lr", "schedule", "imbalance.loss", "model.loss"]
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("t_")}
    assert rows["t_00000"] == ["t_00000", "finished", "3/3", "0.45", "0.5", "0.01"]  # now 0.45, best 0.5
    assert rows["t_00001"] == ["t_00001", "stopped", "1/3", "0.1", "0.1", "1e+03"]  # early: in the footer
    assert rows["t_00002"] == ["t_00002", "running", "1/3", "0.2", "0.2", "0.003"]
    assert rows["t_00003"] == ["t_00003", "pending", "0/3", "-", "-", "0.0001"]
    footer = text.strip().splitlines()[-1]
    assert footer.startswith("2/4 done: 1 finished, 1 stopped early; 1 running, 1 waiting; 0:00:"), footer
    assert len(footer) < 80  # one line in an 80-column log


def test_the_footer_counts_the_trials_a_search_has_not_created_yet():
    out = io.StringIO()
    c = SweepConsole(metric="val/macro_f1", mode="max", epochs=3, keys=["optim.lr"],
                     console=Console(file=out, width=120), min_interval_s=0)
    c.setup(start_time=None, total_samples=16)  # as Tune calls it: random search, 16 samples
    c.report([trial("t_00000", 1e-2, [0.3, 0.5, 0.45], Trial.TERMINATED),
              trial("t_00001", 3e-3, [0.2], Trial.RUNNING)], done=False)
    assert out.getvalue().strip().splitlines()[-1].startswith("1/16 done: 1 finished; 1 running, 14 waiting; 0:00:")


def test_in_a_log_it_prints_only_when_something_changed():
    t = trial("t_00000", 1e-2, [0.3], Trial.RUNNING)
    c, _ = view([t], )
    c.min_interval_s = 0
    assert not c.console.is_terminal
    assert not c.should_report([t])  # nothing new since the last table
    t.update_last_result({"epoch": 1, "val/macro_f1": 0.4, "training_iteration": 2})
    assert c.should_report([t])
    assert c.should_report([t], done=True)


def test_it_survives_tunes_pickling_of_the_run_config():
    c = SweepConsole(metric="val/loss", mode="min", epochs=2, keys=["optim.lr"], console=Console(file=io.StringIO()))
    back = pickle.loads(pickle.dumps(c))
    assert (back.metric, back.mode, back.epochs, back.keys) == ("val/loss", "min", 2, ["optim.lr"])
    assert back.console is not None and back.live is None


def test_a_failed_trials_line_appears_once_tune_has_written_its_error():
    """Tune turns a trial's status to error before its error file exists: the view shows
    ``error`` until then and the real line after (CI on 50f5776 kept the placeholder)."""
    t = trial("t_00000", 1e30, [], Trial.ERROR)
    calls = []

    def get_error():
        calls.append(1)
        return "" if len(calls) == 1 else "Traceback ...\nRaydeepError: the training loss is inf at epoch 1/1"

    t.get_error = get_error
    c, first = view([t])
    assert "t_00000: error" in first
    out = io.StringIO()
    c.console = Console(file=out, width=120)
    c.report([t], done=True)
    c.report([t], done=True)
    assert "t_00000: RaydeepError: the training loss is inf at epoch 1/1" in out.getvalue()
    assert len(calls) == 2  # read until it exists, then once
