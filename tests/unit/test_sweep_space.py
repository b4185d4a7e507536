"""The tune: section and what its parameters do to a config, without Ray: one clear line per
malformed section, saved configs read back, conditional parameters never make
distinct-but-identical trials."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from raydeep.config import Config, load_config, to_yaml, validate
from raydeep.errors import ConfigError
from raydeep.sweeps.plan import base_raw, check_space, initial_trials
from raydeep.sweeps.results import TrialRow, write_best
from raydeep.sweeps.space import apply_params, canonical
from raydeep.sweeps.trial import trial_config
from raydeep.trainers.schedules import SCHEDULE_NAMES
from tests.helpers import tiny_config, write_config
from tests.unit.sweep_helpers import check, sweep_cfg

ROOT = Path(__file__).resolve().parents[2]


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


# ---------------------------------------------------------------------------------------------
# Saved configs read back


@pytest.mark.parametrize("scheduler", ["asha", "pbt", "none"])
def test_a_saved_config_reads_back_the_same(scheduler):
    # run and sweep directories keep config.yaml (every field dumped); --resume reads it back
    cfg = load_config(ROOT / "configs" / "sweep-digits-lt.yaml", [f"tune.scheduler={scheduler}"])
    text = to_yaml(cfg)
    assert validate(yaml.safe_load(text), "saved") == cfg
    assert "optim.lr:\n      loguniform:" in text  # written the way users write it
    if scheduler == "none":
        assert "grace_period" not in text


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
    assert {v["name"] for v in SCHEDULE_VARIANTS} == set(SCHEDULE_NAMES)


@pytest.mark.parametrize("schedule", SCHEDULE_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_every_schedule_reads_back_from_to_yaml_best_yaml_and_the_workers_copy(schedule, tmp_path):
    # config.yaml of a run or sweep dir (to_yaml, read by --resume), best.yaml (write_best) and
    # the copy each worker validates (model_dump) must all load back to the same config.
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
# One clear line per malformed section


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
