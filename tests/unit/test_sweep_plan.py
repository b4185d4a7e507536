"""Planning a sweep before Ray starts: the space checked against the config models in one line
per mistake, the trials listed each distinct, the concurrency fitted to the cluster, the
sweep's directory and storage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from raydeep.config import validate
from raydeep.errors import ResourceError
from raydeep.sweeps.plan import SweepStorage, base_raw, initial_trials, max_concurrent, new_sweep_dir, sweep_storage
from raydeep.sweeps.trial import trial_config
from tests.helpers import write_config
from tests.unit.sweep_helpers import check, error_of, plan, sweep_cfg

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# One clear line per mistake


@pytest.mark.parametrize("key, expected", [
    ("optim.lrr", "tune.space.optim.lrr: unknown key 'lrr' in optim (did you mean 'optim.lr'?)"),
    ("optimm.lr", "unknown key 'optimm' in the config (did you mean 'optim'?)"),
    ("schedule.warmpu", "unknown key 'warmpu' in schedule (did you mean 'schedule.warmup'?)"),
    ("run.early_stopping.patienc", "did you mean 'run.early_stopping.patience'?"),
    ("optim", "tune.space.optim: is a section; search one of its keys, e.g. optim.name"),
    ("optim.lr.peak", "optim.lr is a value, not a section"),
    ("scaling.num_workers", "cannot be searched: every trial reserves the same workers"),
    ("run.epochs", "cannot be searched: it is every trial's budget"),
    ("data.train", "cannot be searched: the data is opened and counted once"),
])
def test_unknown_or_fixed_keys(key, expected):
    assert expected in error_of({key: {"choice": [1, 2]}})


@pytest.mark.parametrize("space, tune, expected", [
    ({"optim.lr": {"loguniform": [1e-4, 1e-2]}}, {"search": "grid"},
     "tune.space.optim.lr: search: grid cannot enumerate loguniform(0.0001, 0.01); use grid: [...] or choice"),
    ({"optim.lr": {"grid": [1e-3, 1e-2]}}, {"search": "optuna"},
     "search: optuna draws its own points and cannot run a grid; use choice: [0.001, 0.01]"),
    ({"optim.lr": {"loguniform": [1e-4, 1e-2]}}, {"search": "optuna", "scheduler": "pbt"},
     "tune.search: optuna cannot drive scheduler pbt"),
    ({"imbalance.weighting": {"choice": ["none", "inverse"]}}, {"scheduler": "pbt"},
     "scheduler pbt perturbs optim.lr and schedule parameters, and the space has none of them"),
    ({"schedule.name": {"choice": ["cosine", "plateau"]}}, {"scheduler": "pbt"},
     "pbt cannot switch a trial to or from plateau"),
    ({"optim.lr": {"loguniform": [1e-4, 1e-2]}}, {"scheduler": {"name": "asha", "grace_period": 4}},
     "tune.scheduler.grace_period = 4: every trial runs at least that many of its run.epochs = 4"),
])
def test_distributions_the_scheduler_or_search_cannot_use(space, tune, expected):
    assert expected in error_of(space, **tune)


@pytest.mark.parametrize("space, expected", [
    ({"optim.lr": {"uniform": [-1.0, 1.0]}},
     "tune.space.optim.lr: the lower bound -1.0 makes an invalid config: optim.lr = -1.0: Input should be greater than 0"),
    ({"imbalance.beta": {"choice": [0.99, 1.5]}, "imbalance.weighting": {"choice": ["effective_number"]}},
     "tune.space.imbalance.beta: the choice value 1.5 makes an invalid config: imbalance.beta = 1.5"),
    ({"schedule.name": {"choice": ["cosine", "cosin"]}},
     "tune.space.schedule.name: the choice value 'cosin' makes an invalid config: schedule.name: expected one of"),
    ({"schedule.name": {"choice": ["cosine", "step"]}},
     "the choice value 'step' makes an invalid config: schedule.step_size: required key is missing"),
    ({"model.layers": {"uniform": [1, 4]}},
     "model.layers: the value between the bounds 2.5 makes an invalid config: model.layers = 2.5"),
    ({"schedule.warmup": {"uniform": [0.0, 1.5]}},
     "schedule.warmup: the upper bound 1.5 makes an invalid config: schedule.warmup = 1.5"),
    ({"imbalance.beta": {"choice": [0.99, 0.999]}},
     "tune.space.imbalance.beta: never applies (only with imbalance.weighting: effective_number), and "
     "neither the base config nor the space chooses that"),
])
def test_values_the_config_models_reject(space, expected):
    assert expected in error_of(space)


def test_cli_refuses_a_bad_space_in_one_line_before_starting_ray(tmp_path):
    raw = sweep_cfg({"optim.lrr": {"loguniform": [1e-4, 1e-2]}})
    path = write_config(tmp_path / "bad.yaml", raw)
    proc = subprocess.run([str(Path(sys.executable).parent / "raydeep"), "tune", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"raydeep: error: {path}: tune.space.optim.lrr: unknown key 'lrr' in optim "
                     f"(did you mean 'optim.lr'?)"]


# ---------------------------------------------------------------------------------------------
# Trials: each distinct, each valid


def test_grid_never_runs_the_same_config_twice():
    cfg = check({"imbalance.weighting": {"grid": ["none", "inverse", "effective_number"]},
                 "imbalance.beta": {"grid": [0.99, 0.999]}}, search="grid")
    trials = initial_trials(cfg)
    assert sorted(trials, key=json.dumps) == sorted([
        {"imbalance.weighting": "none", "imbalance.beta": None},
        {"imbalance.weighting": "inverse", "imbalance.beta": None},
        {"imbalance.weighting": "effective_number", "imbalance.beta": 0.99},
        {"imbalance.weighting": "effective_number", "imbalance.beta": 0.999},
    ], key=json.dumps)


def test_random_search_draws_distinct_canonical_configs_and_stops_when_the_space_runs_out():
    cfg = check({"imbalance.weighting": {"choice": ["none", "effective_number"]},
                 "imbalance.beta": {"choice": [0.99, 0.999]}}, search={"name": "random", "num_samples": 10})
    trials = initial_trials(cfg)
    assert len(trials) == 3  # none; effective_number x 2 betas
    assert {json.dumps(t, sort_keys=True) for t in trials} == {
        json.dumps(t, sort_keys=True) for t in [
            {"imbalance.weighting": "none", "imbalance.beta": None},
            {"imbalance.weighting": "effective_number", "imbalance.beta": 0.99},
            {"imbalance.weighting": "effective_number", "imbalance.beta": 0.999}]}
    again = initial_trials(cfg)
    assert again == trials  # seeded: the same sweep twice is the same sweep


def test_random_search_with_a_grid_key_draws_num_samples_per_grid_point():
    cfg = check({"schedule.name": {"grid": ["cosine", "linear"]}, "optim.lr": {"loguniform": [1e-4, 1e-2]}},
                search={"name": "random", "num_samples": 3})
    trials = initial_trials(cfg)
    assert [t["schedule.name"] for t in trials] == ["cosine"] * 3 + ["linear"] * 3
    assert all(1e-4 <= t["optim.lr"] <= 1e-2 for t in trials)


def test_pbt_keeps_numbers_it_perturbs_and_the_trial_says_what_it_ignored():
    cfg = check({"schedule.name": {"grid": ["constant", "cosine"]}, "schedule.min_lr_ratio": {"uniform": [0.0, 0.2]},
                 "optim.lr": {"loguniform": [1e-3, 1e-2]}},
                scheduler={"name": "pbt", "perturbation_interval": 1}, search={"name": "random", "num_samples": 2})
    trials = initial_trials(cfg)
    constant = [t for t in trials if t["schedule.name"] == "constant"]
    assert constant and all(isinstance(t["schedule.min_lr_ratio"], float) for t in constant)  # PBT multiplies it
    tcfg, ignored = trial_config(base_raw(cfg), cfg.tune.space, constant[0])
    assert ignored == {"schedule.min_lr_ratio": "schedule constant has no min_lr_ratio"}
    assert tcfg.schedule.name == "constant"
    # PBT's x1.2 can leave the declared range: the trial clamps it back.
    tcfg, _ = trial_config(base_raw(cfg), cfg.tune.space,
                           {"schedule.name": "cosine", "schedule.min_lr_ratio": 0.24, "optim.lr": 0.012})
    assert tcfg.schedule.min_lr_ratio == 0.2 and tcfg.optim.lr == 0.01


def test_every_listed_trial_is_checked_against_the_schedule_and_values():
    # one_cycle has no warmup; the trial with it ignores warmup rather than failing
    cfg = check({"schedule.name": {"grid": ["one_cycle", "cosine"]}, "schedule.warmup": {"grid": [0.0, 0.1]}},
                search="grid")
    trials = initial_trials(cfg)
    assert len(trials) == 3
    for t in trials:
        trial_config(base_raw(cfg), cfg.tune.space, t)


# ---------------------------------------------------------------------------------------------
# Concurrency


def test_auto_concurrency_leaves_a_cpu_for_ray_data_and_counts_the_trial_token():
    # 4 CPUs - 1 for Ray Data = 3; a trial takes 2 x 0.5 + 0.1 = 1.1 -> 2 fit
    assert max_concurrent("auto", plan=plan(), cluster_cpus=4, cluster_gpus=0, num_trials=10) == 2
    assert max_concurrent("auto", plan=plan(), cluster_cpus=4, cluster_gpus=0, num_trials=1) == 1
    assert max_concurrent("auto", plan=plan(cpw=1), cluster_cpus=16, cluster_gpus=0, num_trials=None) == 7
    # GPUs bound it too: 2 GPU workers per trial on 4 GPUs -> 2
    assert max_concurrent("auto", plan=plan(cpw=1, use_gpu=True), cluster_cpus=64, cluster_gpus=4,
                          num_trials=8) == 2


def test_an_explicit_concurrency_that_cannot_fit_is_refused_with_the_numbers():
    with pytest.raises(ResourceError) as exc:
        max_concurrent(3, plan=plan(), cluster_cpus=4, cluster_gpus=0, num_trials=4)
    assert str(exc.value) == (
        "tune.max_concurrent_trials = 3: each trial takes 2 workers x 0.5 CPU + 0.1 for the trial itself = 1.1 CPU; "
        "3 trials need 3.3 of the cluster's 4 CPUs, leaving 0.7 for Ray Data, which needs 1 (the sweep would hang); "
        "at most 2 fit (or use auto)")
    assert max_concurrent(2, plan=plan(), cluster_cpus=4, cluster_gpus=0, num_trials=4) == 2
    with pytest.raises(ResourceError, match="the cluster has 2 CPUs and Ray Data needs 1"):
        max_concurrent("auto", plan=plan(), cluster_cpus=2, cluster_gpus=0, num_trials=4)


# ---------------------------------------------------------------------------------------------
# Where the sweep goes


def test_sweep_dir_and_storage_local_and_s3(tmp_path):
    # Local run.storage: the sweep dir is under it and holds Tune's state. s3://: the sweep dir
    # (leaderboard, best.yaml, trials.jsonl) is local under runs/, Tune's state and the trials'
    # Train runs go to <run.storage>/<sweep dir name>.
    raw = sweep_cfg({"optim.lr": {"choice": [1e-3, 1e-2]}})
    raw["run"]["storage"] = str(tmp_path / "store")
    cfg = validate(raw, "sweep.yaml")
    d = new_sweep_dir(cfg)
    assert d.parent == tmp_path / "store" and d.name.startswith(f"{cfg.name}-sweep-")
    st = sweep_storage(cfg, d)
    assert st.remote is None and st.fs is None and st.path == str(d.resolve())
    assert st.uri("tune") == str(d.resolve() / "tune") and st.trials().root == f"{d.resolve()}/trials"

    raw["run"]["storage"] = "s3://bucket/sweeps/"
    d = new_sweep_dir(validate(raw, "sweep.yaml"))
    assert d.parent == Path("runs")


def test_sweep_storage_exists_on_the_local_filesystem(tmp_path):
    st = SweepStorage(str(tmp_path))
    assert not st.exists("tune")
    (tmp_path / "tune").mkdir()
    assert st.exists("tune")
