"""The runner's driver-side parts without a Tuner: optuna's conditional space, the sweep log,
and --resume's check of the cluster against the saved concurrency."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from raydeep.config import load_config, validate
from raydeep.errors import ResourceError
from raydeep.sweeps.plan import base_raw
from raydeep.sweeps.runner import SWEEP_FILE, OptunaSpace, SweepLog, check_resumed_concurrency, read_sweep_file
from tests.unit.sweep_helpers import check, plan, sweep_cfg


def test_optuna_draws_a_parameter_only_where_it_applies():
    import optuna  # in the test extras: a missing optuna fails here rather than skipping
    cfg = check({"imbalance.weighting": {"choice": ["none", "effective_number"]},
                 "imbalance.beta": {"choice": [0.99, 0.999]}, "optim.lr": {"loguniform": [1e-4, 1e-2]}},
                search="optuna")
    space = OptunaSpace(base_raw(cfg), dict(cfg.tune.space))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        constants = space(trial)
        drawn = {k.removeprefix("params/") for k in trial.params}
        weighting = trial.params["params/imbalance.weighting"]
        assert ("imbalance.beta" in drawn) == (weighting == "effective_number")
        assert constants == ({} if weighting == "effective_number" else {"params/imbalance.beta": None})
        seen.add(weighting)
        study.tell(trial, 0.5)
    assert seen == {"none", "effective_number"}


def test_sweep_log_writes_trial_configs_and_events_on_the_driver(tmp_path):
    # The Tune callback's work, given what Tune hands it (a trial's id, config and last result).
    cfg = validate(sweep_cfg({"optim.lr": {"choice": [1e-3, 1e-2]}}), "sweep.yaml")
    (tmp_path / "trials").mkdir()
    log = SweepLog(str(tmp_path), base_raw(cfg), dict(cfg.tune.space))
    a = SimpleNamespace(trial_id="t_a", config={"params": {"optim.lr": 1e-2}}, last_result={})
    b = SimpleNamespace(trial_id="t_b", config={"params": {"optim.lr": 1e-3}}, last_result={})
    log.on_trial_start(a)
    log.on_trial_start(b)
    log.on_trial_result(a, {"epochs_done": 1, "from_epochs": 0, "cloned_from": ""})  # not a clone
    log.on_trial_result(b, {"epochs_done": 2, "from_epochs": 1, "cloned_from": "t_a", "resumed_from_step": 8})
    b.last_result = {"epoch": 1, "epochs_done": 2, "global_step": 16}
    log.on_trial_end(b, "terminated")
    log.on_trial_end(a, "error")

    events = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["event"]) for e in events] == [
        ("t_a", "start"), ("t_b", "start"), ("t_b", "clone"), ("t_b", "end"), ("t_a", "end")]
    assert events[0]["params"] == {"optim.lr": 1e-2}
    assert {k: events[2][k] for k in ("donor", "epochs_done", "global_step")} == {
        "donor": "t_a", "epochs_done": 1, "global_step": 8}
    assert {k: events[3][k] for k in ("status", "epoch", "epochs_done", "global_step")} == {
        "status": "terminated", "epoch": 1, "epochs_done": 2, "global_step": 16}
    assert events[4]["status"] == "error" and events[4]["global_step"] is None
    trial = load_config(tmp_path / "trials" / "t_a.yaml")  # the trial's whole config, loadable as is
    assert trial.optim.lr == 1e-2 and trial.model_dump(exclude={"optim", "tune"}) == cfg.model_dump(exclude={"optim", "tune"})


def test_resume_refuses_a_cluster_too_small_for_the_concurrency_the_sweep_started_with(tmp_path):
    # Tune.restore keeps the saved max_concurrent_trials; raydeep checks it against the new cluster.
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"max_concurrent_trials": 3, "storage": None}))
    saved = read_sweep_file(tmp_path)
    s = SimpleNamespace(sweep_dir=tmp_path, plan=plan())
    check_resumed_concurrency(s, SimpleNamespace(cpus=8, gpus=0), saved)
    with pytest.raises(ResourceError) as exc:
        check_resumed_concurrency(s, SimpleNamespace(cpus=4, gpus=0), saved)
    assert str(exc.value) == (
        f"--resume {tmp_path}: the sweep runs 3 trials at once (fixed when it started), more than this cluster "
        "holds: each trial takes 2 workers x 0.5 CPU + 0.1 for the trial itself = 1.1 CPU; 3 trials need 3.3 of "
        "the cluster's 4 CPUs, leaving 0.7 for Ray Data, which needs 1 (the sweep would hang); at most 2 fit; "
        "resume it on a cluster like the one it started on")
    (tmp_path / SWEEP_FILE).unlink()  # a sweep dir from before the file: nothing to check
    assert read_sweep_file(tmp_path) == {}
    check_resumed_concurrency(s, SimpleNamespace(cpus=4, gpus=0), read_sweep_file(tmp_path))
