"""LR schedules: hand-computed values at the warmup end, mid-run, the last step and boundaries;
plateau on a scripted metric sequence; config validation through the discriminated union."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from pydantic import TypeAdapter, ValidationError

import raydeep
from raydeep.errors import ConfigError
from raydeep.trainers.schedules import (
    SCHEDULE_NAMES,
    ConstantSchedule,
    CosineRestartsSchedule,
    CosineSchedule,
    ExponentialSchedule,
    InverseSqrtSchedule,
    LinearSchedule,
    MultistepSchedule,
    OneCycleSchedule,
    PlateauSchedule,
    PolynomialSchedule,
    Schedule,
    ScheduleConfig,
    StepSchedule,
    WsdSchedule,
    check_run,
    lr_curve,
    lr_factor,
    plot_schedules,
    warmup_steps,
)

ADAPTER = TypeAdapter(ScheduleConfig)
# The run most tests use: 100 optimizer steps, 10 per epoch, 10 warmup steps, floor 0.1,
# so the decay has D = 90 steps and step s sits at progress p = (s + 1 - 10) / 90.
TOTAL, SPE, W, FLOOR = 100, 10, 10, 0.1


def f(cfg, step: int, total: int = TOTAL, spe: int = SPE) -> float:
    return lr_factor(cfg, step, total, spe)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def cos_decay(p: float, floor: float = FLOOR) -> float:
    return floor + (1 - floor) * (1 + math.cos(math.pi * p)) / 2


# ---------------------------------------------------------------------------------------------
# warmup


def test_warmup_starts_at_one_over_w_and_reaches_peak_on_its_last_step():
    cfg = LinearSchedule(warmup=W, min_lr_ratio=FLOOR)
    assert f(cfg, 0) == approx(1 / 10)  # lr(0) = peak / W: the first step is not spent at 0
    assert f(cfg, 4) == approx(5 / 10)
    assert f(cfg, 9) == approx(1.0)  # warmup end
    assert f(cfg, 10) < 1.0  # the first decay step is already below peak


@pytest.mark.parametrize(
    "warmup, expected",
    [(0, 0), (0.0, 0), (7, 7), (0.05, 5), (0.25, 25), (0.005, 1), (0.001, 1), (0.125, 13)],
)
def test_warmup_steps_from_int_or_fraction(warmup, expected):
    # 0.125 * 100 = 12.5 rounds half up to 13; a positive fraction is at least one step.
    assert warmup_steps(ConstantSchedule(warmup=warmup), 100) == expected


def test_warmup_fraction_of_a_short_run_rounds_half_up():
    assert warmup_steps(ConstantSchedule(warmup=0.25), 10) == 3  # 2.5 -> 3, not banker's 2


@pytest.mark.parametrize("bad", [1.0, 1.5, 100.0, -1, -0.1, True])
def test_warmup_refuses_fractions_at_or_above_one_negatives_and_bools(bad):
    with pytest.raises(ValidationError):
        ConstantSchedule(warmup=bad)


def test_warmup_longer_than_the_run_is_a_config_error():
    with pytest.raises(ConfigError, match=r"schedule\.warmup = 150 is 150 steps"):
        Schedule(ConstantSchedule(warmup=150), 1e-3, total_steps=100, steps_per_epoch=10)
    Schedule(ConstantSchedule(warmup=100), 1e-3, total_steps=100, steps_per_epoch=10)  # all warmup is fine


def test_constant():
    assert [f(ConstantSchedule(), s) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    cfg = ConstantSchedule(warmup=0.05)  # 5 steps
    assert f(cfg, 0) == approx(1 / 5)
    assert f(cfg, 4) == 1.0 and f(cfg, 99) == 1.0


def test_steps_past_the_end_hold_the_last_value():
    cfg = LinearSchedule(warmup=W, min_lr_ratio=FLOOR)
    assert f(cfg, 100) == f(cfg, 99) == f(cfg, 10_000) == approx(FLOOR)
    with pytest.raises(ValueError):
        f(cfg, -1)


# ---------------------------------------------------------------------------------------------
# continuous decays


def test_linear():
    cfg = LinearSchedule(warmup=W, min_lr_ratio=FLOOR)
    assert f(cfg, 10) == approx(1 - 0.9 * (1 / 90))  # p = 1/90
    assert f(cfg, 54) == approx(1 - 0.9 * 0.5)  # p = 45/90: 0.55
    assert f(cfg, 99) == approx(0.1)  # p = 1: the floor on the last step


def test_linear_without_warmup_or_floor():
    cfg = LinearSchedule()
    assert f(cfg, 0) == approx(1 - 1 / 100)
    assert f(cfg, 49) == approx(0.5)
    assert f(cfg, 99) == 0.0


def test_cosine():
    cfg = CosineSchedule(warmup=W, min_lr_ratio=FLOOR)
    assert f(cfg, 9) == approx(1.0)
    assert f(cfg, 39) == approx(0.1 + 0.9 * (1 + 0.5) / 2)  # p = 30/90 = 1/3, cos(π/3) = 1/2: 0.775
    assert f(cfg, 54) == approx(0.1 + 0.9 * 0.5)  # midpoint of the decay: floor + (1 - floor) * 0.5
    assert f(cfg, 99) == approx(0.1)


def test_polynomial():
    cfg = PolynomialSchedule(warmup=W, min_lr_ratio=FLOOR, power=2.0)
    assert f(cfg, 54) == approx(0.1 + 0.9 * 0.5**2)  # 0.325
    assert f(cfg, 39) == approx(0.1 + 0.9 * (2 / 3) ** 2)  # p = 1/3: 0.5
    assert f(cfg, 99) == approx(0.1)
    # power 1 is the linear decay
    one = PolynomialSchedule(warmup=W, min_lr_ratio=FLOOR)
    lin = LinearSchedule(warmup=W, min_lr_ratio=FLOOR)
    assert [f(one, s) for s in range(TOTAL)] == pytest.approx([f(lin, s) for s in range(TOTAL)], rel=1e-12)


def test_cosine_restarts_equal_cycles():
    # 3 cycles of 30 steps after a 10-step warmup: cycle k covers u = s + 1 - 10 in (30k, 30(k+1)].
    cfg = CosineRestartsSchedule(warmup=W, min_lr_ratio=FLOOR, cycles=3)
    assert f(cfg, 9) == approx(1.0)
    assert f(cfg, 24) == approx(cos_decay(15 / 30))  # middle of cycle 1: 0.55
    assert f(cfg, 39) == approx(0.1)  # u = 30: the cycle ends on the floor
    assert f(cfg, 40) == approx(cos_decay(1 / 30))  # u = 31: restarted, one step into cycle 2
    assert f(cfg, 54) == approx(0.55)  # u = 45: middle of cycle 2
    assert f(cfg, 69) == approx(0.1)  # u = 60
    assert f(cfg, 70) == approx(cos_decay(1 / 30))
    assert f(cfg, 99) == approx(0.1)  # the last step ends cycle 3


def test_cosine_restarts_with_a_length_multiplier():
    # cycles 2, mult 2: L + 2L = 90 -> L = 30, then 60.
    cfg = CosineRestartsSchedule(warmup=W, min_lr_ratio=FLOOR, cycles=2, cycle_mult=2.0)
    assert f(cfg, 24) == approx(cos_decay(0.5))  # u = 15
    assert f(cfg, 39) == approx(0.1)  # u = 30: first boundary
    assert f(cfg, 40) == approx(cos_decay(1 / 60))
    assert f(cfg, 69) == approx(cos_decay(30 / 60))  # u = 60: middle of the 60-step cycle
    assert f(cfg, 99) == approx(0.1)


def test_cosine_restarts_by_cycle_steps_cuts_the_last_cycle_short():
    # 40-step cycles: (0, 40], (40, 80], then (80, 90] is a quarter of a third cycle.
    cfg = CosineRestartsSchedule(warmup=W, min_lr_ratio=FLOOR, cycle_steps=40)
    assert f(cfg, 49) == approx(0.1)  # u = 40
    assert f(cfg, 50) == approx(cos_decay(1 / 40))
    assert f(cfg, 89) == approx(0.1)  # u = 80
    assert f(cfg, 99) == approx(cos_decay(10 / 40))  # u = 90: 0.1 + 0.9 (1 + cos π/4) / 2


def test_cosine_restarts_cycles_or_cycle_steps_not_both():
    with pytest.raises(ValidationError, match="not both"):
        CosineRestartsSchedule(cycles=2, cycle_steps=10)
    assert CosineRestartsSchedule(cycle_steps=10).cycle_steps == 10


def test_inverse_sqrt():
    cfg = InverseSqrtSchedule(warmup=16)
    assert f(cfg, 0) == approx(1 / 16)
    assert f(cfg, 15) == approx(1.0)  # sqrt(16 / 16)
    assert f(cfg, 63) == approx(0.5)  # sqrt(16 / 64)
    assert f(cfg, 99) == approx(0.4)  # sqrt(16 / 100)
    no_warmup = InverseSqrtSchedule()
    assert f(no_warmup, 0) == 1.0 and f(no_warmup, 3) == approx(0.5)  # sqrt(1 / 4)
    floored = InverseSqrtSchedule(warmup=16, min_lr_ratio=0.45)
    assert f(floored, 99) == approx(0.45)


def test_exponential_per_step_continues_from_the_warmup_end():
    cfg = ExponentialSchedule(warmup=W, gamma=0.99, per="step")
    assert f(cfg, 9) == approx(1.0)
    assert f(cfg, 10) == approx(0.99)
    assert f(cfg, 99) == approx(0.99**90)
    floored = ExponentialSchedule(warmup=W, gamma=0.5, per="step", min_lr_ratio=FLOOR)
    assert f(floored, 12) == approx(0.125)  # 0.5 ** 3
    assert f(floored, 13) == approx(0.1)  # 0.0625 is below the floor


def test_wsd_shapes():
    # decay over the last 20% of 100 steps: x = s + 1 in (80, 100], q = (x - 80) / 20
    for shape, mid in [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))]:
        cfg = WsdSchedule(warmup=W, decay_fraction=0.2, decay_shape=shape)
        assert f(cfg, 9) == approx(1.0), shape
        assert f(cfg, 50) == 1.0 and f(cfg, 79) == 1.0, shape  # stable until x = 80
        assert f(cfg, 89) == approx(mid), shape  # q = 0.5
        assert f(cfg, 99) == 0.0, shape
    floored = WsdSchedule(warmup=W, decay_fraction=0.2, min_lr_ratio=FLOOR)
    assert f(floored, 89) == approx(1 - 0.9 * 0.5)
    assert f(floored, 99) == approx(0.1)


def test_wsd_decay_fraction_one_is_the_linear_decay_after_warmup():
    wsd = WsdSchedule(warmup=W, decay_fraction=1.0, min_lr_ratio=FLOOR)
    lin = LinearSchedule(warmup=W, min_lr_ratio=FLOOR)
    assert [f(wsd, s) for s in range(TOTAL)] == pytest.approx([f(lin, s) for s in range(TOTAL)], rel=1e-12)


def test_one_cycle_three_phases():
    # P = 0.25 * 100 = 25; initial 1/10, final (1/10)/100 = 0.001
    cfg = OneCycleSchedule(pct_start=0.25, div_factor=10, final_div_factor=100)
    assert warmup_steps(cfg, 100) == 25
    assert f(cfg, 0) == approx(0.1 + 0.9 * (1 / 25))  # x = 1
    assert f(cfg, 24) == approx(1.0)  # x = 25: peak
    assert f(cfg, 36) == approx(1 - 0.9 * (12 / 25))  # x = 37, coming down: 0.568
    assert f(cfg, 49) == approx(0.1)  # x = 50: back to the initial lr
    assert f(cfg, 74) == approx(0.1 - 0.099 * 0.5)  # x = 75, halfway through annihilation: 0.0505
    assert f(cfg, 99) == approx(0.001)


def test_one_cycle_cosine_anneal():
    cfg = OneCycleSchedule(pct_start=0.2, div_factor=10, final_div_factor=100, anneal="cosine")
    assert f(cfg, 9) == approx(0.1 + 0.9 * 0.5)  # x = 10 = P/2: the half-cosine ramp is at 1/2
    assert f(cfg, 19) == approx(1.0)
    assert f(cfg, 39) == approx(0.1)
    assert f(cfg, 69) == approx(0.1 - 0.099 * 0.5)  # x = 70: halfway through (40, 100]
    assert f(cfg, 99) == approx(0.001)


# ---------------------------------------------------------------------------------------------
# step functions (counted from the run start)


def test_step_per_epoch():
    # 10 steps per epoch, x0.5 every 3 epochs: epochs 0-2 at 1, 3-5 at 0.5, 6-8 at 0.25, 9 at 0.125
    cfg = StepSchedule(warmup=W, step_size=3, gamma=0.5, per="epoch", min_lr_ratio=FLOOR)
    assert f(cfg, 9) == approx(1.0)  # warmup end
    assert f(cfg, 29) == 1.0  # last step of epoch 2
    assert f(cfg, 30) == 0.5  # first step of epoch 3
    assert f(cfg, 60) == 0.25
    assert f(cfg, 99) == 0.125
    floored = StepSchedule(warmup=W, step_size=3, gamma=0.1, min_lr_ratio=FLOOR)
    assert f(floored, 60) == approx(0.1)  # 0.01 is below the floor


def test_step_per_step():
    cfg = StepSchedule(warmup=W, step_size=25, gamma=0.5, per="step")
    assert f(cfg, 24) == 1.0 and f(cfg, 25) == 0.5 and f(cfg, 50) == 0.25 and f(cfg, 99) == 0.125


def test_multistep_milestone_boundaries():
    cfg = MultistepSchedule(warmup=W, milestones=[2, 5], gamma=0.1)
    assert f(cfg, 19) == 1.0  # epoch 1
    assert f(cfg, 20) == approx(0.1)  # epoch 2: the first milestone
    assert f(cfg, 49) == approx(0.1)
    assert f(cfg, 50) == approx(0.01)  # epoch 5
    assert f(cfg, 99) == approx(0.01)
    per_step = MultistepSchedule(milestones=[30, 60], gamma=0.5, per="step", min_lr_ratio=0.3)
    assert f(per_step, 29) == 1.0 and f(per_step, 30) == 0.5 and f(per_step, 60) == 0.3  # floor


def test_exponential_per_epoch():
    cfg = ExponentialSchedule(warmup=W, gamma=0.5)  # per: epoch by default
    assert f(cfg, 9) == approx(1.0)
    assert f(cfg, 10) == 0.5
    assert f(cfg, 99) == 0.5**9


def test_check_run_refuses_decays_inside_warmup_or_past_the_end():
    with pytest.raises(ConfigError, match="inside the 10-step warmup"):
        check_run(StepSchedule(warmup=W, step_size=5, per="step"), TOTAL, SPE)
    with pytest.raises(ConfigError, match=r"schedule\.step_size: the first decay \(epoch 20\) is past the run's end"):
        check_run(StepSchedule(step_size=20), TOTAL, SPE)
    with pytest.raises(ConfigError, match=r"schedule\.milestones: \[30\] are past"):
        check_run(MultistepSchedule(milestones=[2, 30]), TOTAL, SPE)  # steps written with per: epoch
    with pytest.raises(ConfigError, match="schedule.per"):
        check_run(ExponentialSchedule(warmup=15, gamma=0.9), TOTAL, SPE)  # warmup spans epoch 1's decay
    check_run(MultistepSchedule(milestones=[30, 60], per="step", warmup=W), TOTAL, SPE)


# ---------------------------------------------------------------------------------------------
# floors, curves and the Schedule object


@pytest.mark.parametrize(
    "cfg",
    [
        LinearSchedule(warmup=W, min_lr_ratio=0.2),
        CosineSchedule(warmup=W, min_lr_ratio=0.2),
        CosineRestartsSchedule(warmup=W, min_lr_ratio=0.2, cycles=4, cycle_mult=1.5),
        PolynomialSchedule(warmup=W, min_lr_ratio=0.2, power=3),
        StepSchedule(warmup=W, step_size=1, gamma=0.5, min_lr_ratio=0.2),
        MultistepSchedule(warmup=W, milestones=[1, 2, 3, 4], min_lr_ratio=0.2),
        ExponentialSchedule(warmup=W, gamma=0.9, per="step", min_lr_ratio=0.2),
        InverseSqrtSchedule(warmup=W, min_lr_ratio=0.2),
        WsdSchedule(warmup=W, decay_shape="sqrt", min_lr_ratio=0.2),
    ],
    ids=lambda c: c.name,
)
def test_every_decay_stays_on_or_above_its_floor_and_at_or_below_peak(cfg):
    values = [f(cfg, s) for s in range(W, TOTAL)]
    assert min(values) >= 0.2 - 1e-12 and max(values) <= 1.0 + 1e-12


def test_lr_curve_scales_by_peak():
    cfg = CosineSchedule(warmup=W, min_lr_ratio=FLOOR)
    curve = lr_curve(cfg, 3e-4, TOTAL, SPE)
    assert len(curve) == TOTAL
    assert curve[0] == approx(3e-4 / 10) and curve[9] == approx(3e-4) and curve[99] == approx(3e-5)


def test_plot_schedules_writes_a_png_atomically(tmp_path):
    out = tmp_path / "plots" / "schedules.png"
    items = [("cosine", CosineSchedule(warmup=0.1)), ("wsd", WsdSchedule(warmup=0.1)), ("1cycle", OneCycleSchedule())]
    plot_schedules(items, 1e-3, 200, 20, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(out.parent) == ["schedules.png"]  # no temporary file left behind


def test_config_modules_import_without_torch_or_matplotlib():
    code = (
        "import sys, raydeep.trainers.schedules, raydeep.trainers.class_weights; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    # A fresh interpreter, so other tests' imports do not hide one; the package found the same way.
    root = os.path.dirname(os.path.dirname(os.path.abspath(raydeep.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---------------------------------------------------------------------------------------------
# plateau


def plateau(**kw) -> Schedule:
    base = dict(warmup=W, mode="min", patience=1, factor=0.5, cooldown=1, threshold=0.0, threshold_mode="abs",
                min_lr_ratio=0.2)
    base.update(kw)
    return Schedule(PlateauSchedule(**base), peak_lr=0.1, total_steps=TOTAL, steps_per_epoch=SPE)


# metric per epoch, and the scale expected after observing it (patience 1: a reduction on the
# second validation in a row without improvement; cooldown 1: the next validation is not counted)
SCRIPT = [
    (1.0, 1.0),  # 0: first value is the best
    (1.0, 1.0),  # 1: bad 1
    (1.0, 0.5),  # 2: bad 2 > patience -> x0.5, cooldown 1
    (1.0, 0.5),  # 3: in cooldown, not counted
    (1.0, 0.5),  # 4: bad 1
    (1.0, 0.25),  # 5: bad 2 -> x0.5, cooldown 1
    (0.5, 0.25),  # 6: improved, best 0.5 (cooldown ends)
    (0.6, 0.25),  # 7: bad 1
    (0.6, 0.2),  # 8: bad 2 -> 0.125 is below the floor: 0.2
    (0.6, 0.2),  # 9: cooldown
    (0.6, 0.2),  # 10: bad 1
    (0.6, 0.2),  # 11: bad 2 -> already at the floor, no reduction recorded
]


def test_plateau_follows_the_script():
    sched = plateau()
    scales = []
    for epoch, (metric, _) in enumerate(SCRIPT):
        sched.observe(epoch, metric)
        scales.append(sched.scale)
    assert scales == [s for _, s in SCRIPT]
    assert sched.reductions == [2, 5, 8]
    assert sched(50) == approx(0.1 * 0.2)
    assert sched(0) == approx(0.1 * (1 / 10) * 0.2)  # a warmup step is scaled too


def test_plateau_matches_torch_reduce_lr_on_plateau():
    import torch

    metrics = [5, 4, 4.2, 4.1, 4.0, 3.0, 3.5, 3.5, 3.5, 3.5, 3.5, 2.9, 3.0, 3.0, 3.0, 3.0]
    for mode, sign, tmode, threshold in [("min", 1, "rel", 0.05), ("max", -1, "abs", 0.3), ("min", 1, "abs", 0.0)]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=mode, factor=0.5, patience=2, cooldown=1, threshold=threshold,
            threshold_mode=tmode, min_lr=0.1,
        )
        ours = plateau(mode=mode, factor=0.5, patience=2, cooldown=1, threshold=threshold,
                       threshold_mode=tmode, min_lr_ratio=0.1)
        for epoch, m in enumerate(metrics):
            ref.step(sign * m)
            ours.observe(epoch, sign * m)
            assert ours.scale == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (mode, tmode, epoch)


def test_plateau_state_round_trip_mid_sequence_continues_identically():
    first = plateau()
    for epoch, (metric, _) in enumerate(SCRIPT[:7]):
        first.observe(epoch, metric)
    saved = json.loads(json.dumps(first.state_dict()))  # checkpoints may store it as JSON
    resumed = plateau()
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == first.state_dict()
    for epoch, (metric, _) in enumerate(SCRIPT[7:], start=7):
        first.observe(epoch, metric)
        resumed.observe(epoch, metric)
        assert resumed.state_dict() == first.state_dict()
        assert [resumed(s) for s in (0, 50, 99)] == [first(s) for s in (0, 50, 99)]


def test_plateau_refuses_a_repeated_epoch_and_counts_nan_as_no_improvement():
    sched = plateau(patience=0)
    sched.observe(0, 1.0)
    with pytest.raises(ValueError, match="already observed"):
        sched.observe(0, 1.0)
    sched.observe(1, float("nan"))
    assert sched.scale == 0.5


def test_plateau_lr_factor_is_its_warmup_only():
    cfg = PlateauSchedule(warmup=W)
    assert [f(cfg, s) for s in (0, 9, 10, 99)] == [approx(0.1), approx(1.0), 1.0, 1.0]


def test_stateless_schedules_ignore_observe_and_state():
    sched = Schedule(CosineSchedule(warmup=W), 0.1, TOTAL, SPE)
    before = [sched(s) for s in range(TOTAL)]
    sched.observe(0, 1.0)
    sched.observe(0, 1.0)
    sched.load_state_dict({"name": "plateau", "scale": 0.01, "best": 1.0, "num_bad": 0,
                           "cooldown_left": 0, "last_epoch": 3, "reductions": [1]})
    assert [sched(s) for s in range(TOTAL)] == before


def test_plateau_refuses_state_from_another_schedule():
    with pytest.raises(ConfigError, match="saved with schedule 'cosine'"):
        plateau().load_state_dict(Schedule(CosineSchedule(), 0.1, TOTAL, SPE).state_dict())


# ---------------------------------------------------------------------------------------------
# config validation


def test_schedule_names():
    assert SCHEDULE_NAMES == (
        "constant", "linear", "cosine", "cosine_restarts", "polynomial", "step", "multistep",
        "exponential", "inverse_sqrt", "one_cycle", "wsd", "plateau",
    )


def test_union_picks_the_class_by_name():
    cfg = ADAPTER.validate_python({"name": "cosine", "warmup": 0.05, "min_lr_ratio": 0.1})
    assert isinstance(cfg, CosineSchedule) and cfg.warmup == 0.05
    assert ADAPTER.validate_python({"name": "constant", "warmup": 0}) == ConstantSchedule()
    assert isinstance(ADAPTER.validate_python({"name": "step", "step_size": 3}), StepSchedule)


def test_union_rejects_unknown_names():
    with pytest.raises(ValidationError) as err:
        ADAPTER.validate_python({"name": "cosin"})
    assert err.value.errors()[0]["type"] == "union_tag_invalid"


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"name": "cosine", "gamma": 0.5}, "gamma"),
        ({"name": "constant", "min_lr_ratio": 0.1}, "min_lr_ratio"),
        ({"name": "one_cycle", "warmup": 10}, "warmup"),
        ({"name": "linear", "power": 2}, "power"),
    ],
)
def test_union_rejects_foreign_params(raw, field):
    with pytest.raises(ValidationError) as err:
        ADAPTER.validate_python(raw)
    e = err.value.errors()[0]
    assert e["type"] == "extra_forbidden" and e["loc"] == (raw["name"], field)


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "multistep", "milestones": [5, 3]},
        {"name": "multistep", "milestones": [3, 3]},
        {"name": "multistep", "milestones": [0, 3]},
        {"name": "multistep", "milestones": []},
        {"name": "cosine_restarts", "cycle_mult": 0.5},
        {"name": "cosine_restarts", "cycles": 0},
        {"name": "one_cycle", "pct_start": 0.0},
        {"name": "one_cycle", "pct_start": 0.5},  # three phases need 2 * pct_start < 1
        {"name": "one_cycle", "div_factor": 0.5},
        {"name": "wsd", "decay_fraction": 0.0},
        {"name": "wsd", "decay_fraction": 1.5},
        {"name": "wsd", "decay_shape": "exp"},
        {"name": "cosine", "warmup": 1.0},
        {"name": "cosine", "min_lr_ratio": 1.5},
        {"name": "step"},  # step_size is required
        {"name": "step", "step_size": 2, "gamma": 1.0},
        {"name": "exponential", "gamma": 0.9, "per": "batch"},
        {"name": "polynomial", "power": 0},
        {"name": "plateau", "factor": 1.0},
        {"name": "plateau", "mode": "maximize"},
        {"name": "plateau", "patience": -1},
    ],
)
def test_out_of_range_values_are_rejected_at_load(raw):
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(raw)


def test_assignment_is_validated_too():
    cfg = CosineSchedule()
    with pytest.raises(ValidationError):
        cfg.warmup = 2.5
