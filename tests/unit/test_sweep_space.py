"""The tune: section and its search space, without Ray: validation errors are one clear line,
conditional parameters never make distinct-but-identical trials, concurrency fits the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from raydeep.config import load_config, validate
from raydeep.errors import ConfigError, ResourceError
from raydeep.trainers.sweeps import (
    apply_params,
    base_raw,
    canonical,
    check_space,
    initial_trials,
    max_concurrent,
    trial_config,
)
from tests.helpers import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


def sweep_cfg(space: dict, **tune) -> dict:
    raw = tiny_config(run={"epochs": 4, "seed": 0})
    raw["tune"] = {"space": space, **tune}
    return raw


def check(space: dict, **tune):
    cfg = validate(sweep_cfg(space, **tune), "sweep.yaml")
    check_space(cfg, "sweep.yaml")
    return cfg


def error_of(space: dict, **tune) -> str:
    with pytest.raises(ConfigError) as exc:
        check(space, **tune)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert msg.startswith("sweep.yaml: "), msg
    return msg


# ---------------------------------------------------------------------------------------------
# The shipped example


def test_example_sweep_config_is_valid_and_its_trials_are_distinct_and_canonical():
    cfg = load_config(ROOT / "configs" / "sweep-digits-lt.yaml")
    check_space(cfg, "configs/sweep-digits-lt.yaml")
    trials = initial_trials(cfg)
    assert len(trials) == cfg.tune.search.num_samples
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == len(trials)
    for t in trials:
        assert (t["imbalance.beta"] is None) == (t["imbalance.weighting"] != "effective_number")
        assert (t["schedule.warmup"] is None) == (t["schedule.name"] == "one_cycle")  # its phases are its warmup
        assert 1e-4 <= t["optim.lr"] <= 3e-3
        trial_config(base_raw(cfg), cfg.tune.space, t)  # every trial validates


def test_example_sweep_starts_from_the_demo_config():
    sweep = load_config(ROOT / "configs" / "sweep-digits-lt.yaml")
    demo = load_config(ROOT / "configs" / "digits-lt.yaml")
    assert sweep.model_dump(exclude={"tune"}) == demo.model_dump(exclude={"tune"})


def test_train_ignores_the_tune_section_and_configs_without_one_still_load(tmp_path):
    assert validate(tiny_config(), "t").tune is None
    cfg = validate(sweep_cfg({"optim.lr": {"loguniform": [1e-4, 1e-2]}}), "t")
    assert cfg.tune.metric == "val/macro_f1" and cfg.tune.scheduler.name == "asha"


@pytest.mark.parametrize("scheduler", ["asha", "pbt", "none"])
def test_a_saved_config_reads_back_the_same(scheduler):
    # run and sweep directories keep config.yaml (every field dumped); --resume reads it back
    from raydeep.config import to_yaml

    cfg = load_config(ROOT / "configs" / "sweep-digits-lt.yaml", [f"tune.scheduler={scheduler}"])
    text = to_yaml(cfg)
    assert validate(yaml.safe_load(text), "saved") == cfg
    assert "optim.lr:\n      loguniform:" in text  # written the way users write it
    if scheduler == "none":
        assert "grace_period" not in text


# Every schedule, and the variants whose fields are alternatives or non-defaults.
SCHEDULE_VARIANTS = [
    {"name": "constant"},
    {"name": "constant", "warmup": 0.05},
    {"name": "linear", "warmup": 3, "min_lr_ratio": 0.1},
    {"name": "cosine", "warmup": 0.1, "min_lr_ratio": 0.05},
    {"name": "cosine_restarts"},
    {"name": "cosine_restarts", "cycles": 2, "cycle_mult": 2.0},
    {"name": "cosine_restarts", "cycle_steps": 40},
    {"name": "cosine_restarts", "cycle_steps": 10, "cycle_mult": 1.5, "warmup": 5, "min_lr_ratio": 0.1},
    {"name": "polynomial", "power": 2.0},
    {"name": "step", "step_size": 2},
    {"name": "step", "step_size": 5, "per": "step", "gamma": 0.5},
    {"name": "multistep", "milestones": [1, 3]},
    {"name": "multistep", "milestones": [10, 20], "per": "step", "gamma": 0.3},
    {"name": "exponential", "gamma": 0.9},
    {"name": "exponential", "gamma": 0.99, "per": "step", "warmup": 2},
    {"name": "inverse_sqrt", "warmup": 4},
    {"name": "one_cycle"},
    {"name": "one_cycle", "pct_start": 0.2, "div_factor": 10.0, "final_div_factor": 100.0, "anneal": "cosine"},
    {"name": "wsd"},
    {"name": "wsd", "decay_fraction": 0.5, "decay_shape": "sqrt", "min_lr_ratio": 0.01},
    {"name": "plateau"},
    {"name": "plateau", "metric": "val/macro_f1", "mode": "max", "patience": 0, "threshold_mode": "abs"},
]


def test_the_variants_cover_every_schedule():
    from raydeep.trainers.schedules import SCHEDULE_NAMES

    assert {v["name"] for v in SCHEDULE_VARIANTS} == set(SCHEDULE_NAMES)


@pytest.mark.parametrize("schedule", SCHEDULE_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_every_schedule_reads_back_from_to_yaml_best_yaml_and_the_workers_copy(schedule, tmp_path):
    # config.yaml of a run or sweep dir (to_yaml, read by --resume), best.yaml (write_best) and
    # the copy each worker validates (model_dump) must all load back to the same config.
    from raydeep.config import Config, to_yaml
    from raydeep.trainers.sweeps import TrialRow, write_best

    cfg = validate({**sweep_cfg({"optim.lr": {"choice": [1e-3, 3e-3]}}), "schedule": schedule}, "sweep.yaml")
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg
    dumped = yaml.safe_load(saved.read_text())["schedule"]
    assert next(iter(dumped)) == "name"
    if schedule["name"] == "cosine_restarts":  # the alternative not in use is not written
        assert ("cycles" in dumped) == ("cycle_steps" not in schedule), dumped

    s = SimpleNamespace(cfg=cfg, sweep_dir=tmp_path,
                        context=SimpleNamespace(base=base_raw(cfg), space=dict(cfg.tune.space)))
    row = TrialRow("t1", "finished", 0.5, 3, 4, {"optim.lr": 3e-3}, [(4, 0.5)])
    trial = write_best(s, row, tmp_path / "best.yaml")
    best = load_config(tmp_path / "best.yaml")
    assert best == trial and best.tune is None and best.optim.lr == 3e-3
    assert best.schedule == cfg.schedule


def test_a_sweep_switching_to_cosine_restarts_with_cycle_steps_reads_back(tmp_path):
    from raydeep.config import to_yaml

    raw = sweep_cfg({"schedule.name": {"grid": ["cosine", "cosine_restarts"]}}, search="grid")
    raw["schedule"] = {"name": "cosine_restarts", "cycle_steps": 8, "warmup": 2}
    cfg = validate(raw, "sweep.yaml")
    check_space(cfg, "sweep.yaml")
    for params in initial_trials(cfg):
        trial, _ = trial_config(base_raw(cfg), cfg.tune.space, params)
        assert validate(yaml.safe_load(to_yaml(trial)), "saved") == trial


def test_importing_the_config_does_not_import_torch_or_ray():
    code = "import sys, raydeep.config; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


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


@pytest.mark.parametrize("tune, expected", [
    ({"space": {"optim.lr": {"loguniformm": [1e-4, 1e-2]}}}, "unknown distribution 'loguniformm' (did you mean 'loguniform'?)"),
    ({"space": {"optim.lr": {"uniform": [0.1, 0.01]}}}, "uniform needs low < high"),
    ({"space": {"optim.lr": {"loguniform": [0, 0.01]}}}, "loguniform needs 0 < low"),
    ({"space": {"optim.lr": {"choice": []}}}, "choice needs a non-empty list"),
    ({"space": {"optim.lr": {"choice": [0.1], "grid": [0.2]}}}, "give exactly one distribution"),
    ({"space": {"model.layers": {"randint": [1, 2.5]}}}, "randint needs whole-number bounds"),
    ({"space": {}}, "tune.space"),
    ({"metric": "val/macro-f1", "space": {"optim.lr": [0.1]}}, "did you mean 'val/macro_f1'?"),
    ({"metric": "val/loss", "space": {"optim.lr": [0.1]}}, "use mode: min"),
    ({"scheduler": {"name": "asha", "perturbation_interval": 2}, "space": {"optim.lr": [0.1]}},
     "perturbation_interval: not a parameter of scheduler asha (it takes grace_period, reduction_factor)"),
    ({"scheduler": {"name": "asha", "grace_perod": 2}, "space": {"optim.lr": [0.1]}},
     "tune.scheduler.grace_perod: unknown key (did you mean 'grace_period'?)"),
    ({"search": {"name": "grid", "num_samples": 3}, "space": {"optim.lr": [0.1]}}, "search: grid runs each grid point once"),
    ({"max_concurrent_trials": 0, "space": {"optim.lr": [0.1]}}, "must be >= 1 or 'auto'"),
])
def test_malformed_tune_sections_fail_at_load_with_one_line(tmp_path, tune, expected):
    raw = tiny_config()
    raw["tune"] = tune
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path / "s.yaml", raw))
    assert expected in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith(str(tmp_path / "s.yaml"))


def test_shorthands():
    cfg = check({"optim.lr": "loguniform(1e-4, 3e-3)", "schedule.name": ["cosine", "linear"]},
                scheduler="none", search="random")
    assert cfg.tune.space["optim.lr"].kind == "loguniform"
    assert (cfg.tune.space["optim.lr"].low, cfg.tune.space["optim.lr"].high) == (1e-4, 3e-3)
    assert cfg.tune.space["schedule.name"].values == ["cosine", "linear"]
    assert cfg.tune.scheduler.name == "none" and cfg.tune.search.name == "random"


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
# Conditional parameters


def base() -> dict:
    return base_raw(validate(tiny_config(schedule={"name": "cosine", "warmup": 0.1, "min_lr_ratio": 0.05},
                                         imbalance={"weighting": "inverse", "label_smoothing": 0.1}), "t"))


def test_a_new_schedule_name_substitutes_the_section_keeping_shared_fields():
    raw, ignored = apply_params(base(), {"schedule.name": "wsd", "schedule.decay_fraction": 0.3})
    assert raw["schedule"] == {"name": "wsd", "warmup": 0.1, "min_lr_ratio": 0.05, "decay_fraction": 0.3}
    assert ignored == {}
    raw, ignored = apply_params(base(), {"schedule.name": "one_cycle", "schedule.warmup": 0.05})
    assert raw["schedule"] == {"name": "one_cycle"}  # no warmup or floor: its phases define both
    assert ignored == {"schedule.warmup": "schedule one_cycle has no warmup"}
    raw, _ = apply_params(base(), {"schedule.name": "constant"})
    assert raw["schedule"] == {"name": "constant", "warmup": 0.1}
    validate(raw, "t")


def test_parameters_that_do_not_apply_are_ignored_and_fields_the_new_loss_refuses_are_neutralized():
    raw, ignored = apply_params(base(), {"imbalance.beta": 0.99, "imbalance.loss": "focal", "imbalance.gamma": 1.0})
    assert ignored == {"imbalance.beta": "only with imbalance.weighting: effective_number"}
    assert raw["imbalance"]["gamma"] == 1.0 and "beta" not in raw["imbalance"]
    assert raw["imbalance"]["label_smoothing"] == 0.0  # the base's 0.1 is refused with focal
    validate(raw, "t")
    assert canonical(base(), {"imbalance.beta": 0.99, "imbalance.weighting": "effective_number"}) == \
        {"imbalance.beta": 0.99, "imbalance.weighting": "effective_number"}
    assert canonical(base(), {"optim.momentum": 0.8, "optim.name": "adamw"}) == {"optim.momentum": None,
                                                                                 "optim.name": "adamw"}


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


def plan(world=2, cpw=0.5, use_gpu=False, gpw=1.0):
    return SimpleNamespace(world=world, cpus_per_worker=cpw, use_gpu=use_gpu,
                           cfg=SimpleNamespace(scaling=SimpleNamespace(gpus_per_worker=gpw)))


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


def test_optuna_draws_a_parameter_only_where_it_applies():
    optuna = pytest.importorskip("optuna")
    from raydeep.trainers.sweeps import OptunaSpace

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


# ---------------------------------------------------------------------------------------------
# Schedulers on --resume: Ray 2.60 restores them as they were at the sweep's start, without state


class FakeTrial(SimpleNamespace):
    __hash__ = object.__hash__  # schedulers key their state by trial
    __eq__ = object.__eq__


def fake_trial(tmp_path: Path, trial_id: str, rows: list[dict], status: str = "PENDING"):
    import pyarrow.fs

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
    from raydeep.trainers.sweep_schedulers import EpochASHA

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
    from raydeep.trainers.sweep_schedulers import EpochASHA

    asha = EpochASHA(metric="val/macro_f1", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    ctl = SimpleNamespace(search_alg=None)
    asha.on_trial_add(ctl, fake_trial(tmp_path, "good", epochs(0.9), "TERMINATED"))
    late = fake_trial(tmp_path, "late", epochs(0.1), "RUNNING")  # ASHA said STOP; the kill came first
    asha.on_trial_add(ctl, late)
    assert asha.on_trial_result(ctl, late, {"epoch": 1, "val/macro_f1": 0.95, "training_iteration": 1}) == "STOP"


def test_resumed_synchronous_pbt_knows_scores_and_waits_for_the_slowest_trial(tmp_path):
    from raydeep.trainers.sweep_schedulers import ResumablePBT

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
    from raydeep.trainers.sweep_schedulers import ResumablePBT

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


def test_sweep_dir_and_storage_local_and_s3(tmp_path):
    # Local run.storage: the sweep dir is under it and holds Tune's state. s3://: the sweep dir
    # (leaderboard, best.yaml, trials.jsonl) is local under runs/, Tune's state and the trials'
    # Train runs go to <run.storage>/<sweep dir name>.
    from raydeep.trainers.sweeps import new_sweep_dir, sweep_storage

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


def test_sweep_log_writes_trial_configs_and_events_on_the_driver(tmp_path):
    # The Tune callback's work, given what Tune hands it (a trial's id, config and last result).
    from raydeep.trainers.sweeps import SweepLog

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


def test_trial_storage_segment_folders_copy_move_on_a_local_filesystem(tmp_path):
    # What a PBT trial does between segments, through the same pyarrow calls it makes on S3.
    from raydeep.trainers.sweeps import TrialStorage

    store = TrialStorage(str(tmp_path / "trials"))
    assert store.segment_folders("t_a") == []  # the folder does not exist yet
    donor = tmp_path / "tune" / "t_b" / "checkpoint_000000"
    (donor / "checkpoint_000000").mkdir(parents=True)
    (donor / "checkpoint_000000" / "rank0.pt").write_bytes(b"x" * 100)
    (donor / "segment.json").write_text('{"trial_id": "t_b", "epochs_done": 1}')
    carry = store.path("t_a-e001")
    store.copy_in(str(donor), store.filesystem, carry)
    store.move(carry, store.path("t_a-e002"))
    store.write_json(store.path("t_a-e002") + "/extra.json", {"k": 1})
    (tmp_path / "trials" / "t_ab-e001").mkdir()  # another trial whose id starts alike
    (tmp_path / "trials" / "t_a.yaml").write_text("")
    assert store.segment_folders("t_a") == [store.path("t_a-e002")]
    got = tmp_path / "trials" / "t_a-e002"
    assert (got / "checkpoint_000000" / "rank0.pt").read_bytes() == b"x" * 100
    assert json.loads((got / "extra.json").read_text()) == {"k": 1} and not (tmp_path / "trials" / "t_a-e001").exists()
    store.remove(store.path("t_a-e002"))
    assert store.segment_folders("t_a") == [] and donor.is_dir()


def test_resume_refuses_a_cluster_too_small_for_the_concurrency_the_sweep_started_with(tmp_path):
    # Tune.restore keeps the saved max_concurrent_trials; raydeep checks it against the new cluster.
    from raydeep.trainers.sweeps import SWEEP_FILE, check_resumed_concurrency, read_sweep_file

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


def test_sweep_storage_exists_on_the_local_filesystem(tmp_path):
    from raydeep.trainers.sweeps import SweepStorage

    st = SweepStorage(str(tmp_path))
    assert not st.exists("tune")
    (tmp_path / "tune").mkdir()
    assert st.exists("tune")
