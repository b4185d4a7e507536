"""Schedulers on --resume: Ray 2.60 restores them as they were at the sweep's start, without
state; ours rebuild it from the trials' saved results and count epochs, not Tune iterations."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs

from raydeep.sweeps.schedulers import EpochASHA, ResumablePBT


class FakeTrial(SimpleNamespace):
    __hash__ = object.__hash__  # schedulers key their state by trial
    __eq__ = object.__eq__


def fake_trial(tmp_path: Path, trial_id: str, rows: list[dict], status: str = "PENDING"):
    saved, staging = tmp_path / "storage" / trial_id, tmp_path / "staging" / trial_id
    saved.mkdir(parents=True)
    if rows:  # a trial from before the interruption; the last line cut by the kill
        (saved / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": ')
    checkpoint_config = SimpleNamespace(num_to_keep=4)
    return FakeTrial(
        trial_id=trial_id, status=status, path=str(saved), local_path=str(staging), config={"params": {}},
        storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()), experiment_tag=trial_id,
        checkpoint=f"ckpt-{trial_id}" if rows else None,
        run_metadata=SimpleNamespace(checkpoint_manager=SimpleNamespace(checkpoint_config=checkpoint_config)),
        is_finished=lambda: status == "TERMINATED")


def epochs(*values: float) -> list[dict]:
    return [{"epoch": e, "val/macro_f1": v, "training_iteration": e + 1, "epochs_done": e + 1}
            for e, v in enumerate(values)]


def test_resumed_asha_keeps_its_rungs_and_counts_epochs_not_tune_iterations(tmp_path):
    asha = EpochASHA(metric="val/macro_f1", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    ctl = SimpleNamespace(search_alg=None)
    done = fake_trial(tmp_path, "done", epochs(0.8, 0.85, 0.9), "TERMINATED")
    stopped = fake_trial(tmp_path, "stopped", epochs(0.6), "TERMINATED")
    running = fake_trial(tmp_path, "running", epochs(0.7), "PENDING")  # its Train run resumes at epoch 1
    new = fake_trial(tmp_path, "new", [])
    for t in (done, stopped, running, new):
        asha.on_trial_add(ctl, t)
    rung1 = next(rec for milestone, rec in asha._brackets[0]._rungs if milestone == 1)
    assert rung1 == {"done": 0.8, "stopped": 0.6, "running": 0.7}
    # Tune's iteration count restarted at 1, but this is its second epoch: judged at rung 2
    # against "done"'s 0.85, not again at rung 1.
    assert asha.on_trial_result(ctl, running, {"epoch": 1, "val/macro_f1": 0.5, "training_iteration": 1}) == "STOP"
    # A trial that starts after the resume meets the rungs the others left.
    assert asha.on_trial_result(ctl, new, {"epoch": 0, "val/macro_f1": 0.1, "training_iteration": 1}) == "STOP"
    # The resumed trial appends to its saved history rather than starting a new one.
    assert [json.loads(x)["epoch"] for x in (tmp_path / "staging" / "running" / "result.json").read_text().splitlines()] \
        == [0]


def test_resumed_asha_stops_a_trial_it_had_decided_to_stop_before_the_interruption(tmp_path):
    asha = EpochASHA(metric="val/macro_f1", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    ctl = SimpleNamespace(search_alg=None)
    asha.on_trial_add(ctl, fake_trial(tmp_path, "good", epochs(0.9), "TERMINATED"))
    late = fake_trial(tmp_path, "late", epochs(0.1), "RUNNING")  # ASHA said STOP; the kill came first
    asha.on_trial_add(ctl, late)
    assert asha.on_trial_result(ctl, late, {"epoch": 1, "val/macro_f1": 0.95, "training_iteration": 1}) == "STOP"


def test_resumed_synchronous_pbt_knows_scores_and_waits_for_the_slowest_trial(tmp_path):
    pbt = ResumablePBT(time_attr="epochs_done", metric="val/macro_f1", mode="max", perturbation_interval=1,
                       hyperparam_mutations={"params": {"optim.lr": [1e-3, 1e-2]}}, synch=True)
    ctl = SimpleNamespace(search_alg=None)
    ahead = fake_trial(tmp_path, "ahead", epochs(0.5, 0.6, 0.7), "PAUSED")  # waiting at the round after 2
    behind = fake_trial(tmp_path, "behind", epochs(0.4, 0.45), "RUNNING")
    for t in (ahead, behind):
        pbt.on_trial_add(ctl, t)
    assert pbt._trial_state[ahead].last_score == 0.7 and pbt._trial_state[ahead].last_checkpoint == "ckpt-ahead"
    assert pbt._trial_state[behind].last_train_time == 2 and pbt._trial_state[behind].last_perturbation_time == 2
    # Ray's own restore would restart this at 1, so every later result would sync alone.
    assert pbt._next_perturbation_sync == 3


def test_synchronous_pbt_never_leaves_every_trial_waiting_past_its_sync_point(tmp_path):
    pbt = ResumablePBT(time_attr="epochs_done", metric="val/macro_f1", mode="max", perturbation_interval=1,
                       hyperparam_mutations={"params": {"optim.lr": [1e-3, 1e-2]}}, synch=True)
    a, b = fake_trial(tmp_path, "a", [], "PAUSED"), fake_trial(tmp_path, "b", [], "PAUSED")
    ctl = SimpleNamespace(search_alg=None, get_trials=lambda: [a, b])
    for t in (a, b):
        pbt.on_trial_add(ctl, t)
    # What a real resume left: both paused at epoch 2, the sync point at 2 (nothing behind it).
    pbt._trial_state[a].last_train_time, pbt._trial_state[b].last_train_time = 2, 3
    pbt._next_perturbation_sync = 2
    assert pbt.choose_trial_to_run(ctl) is a and pbt._next_perturbation_sync == 3  # the one behind goes first
    b.status = "RUNNING"  # while one runs, the others wait as PBT means them to
    pbt._next_perturbation_sync = 2
    assert pbt.choose_trial_to_run(ctl) is None and pbt._next_perturbation_sync == 2
