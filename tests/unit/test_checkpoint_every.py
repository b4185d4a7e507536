"""``run.checkpoint_every``: an integer (epochs, as before) or one of {epochs|steps|minutes}; one
line for each wrong shape; a sweep refuses steps and minutes."""

from __future__ import annotations

import pytest

from raydeep.config import CheckpointEvery, validate
from raydeep.errors import ConfigError
from tests.helpers import tiny_config
from tests.unit.sweep_helpers import sweep_cfg


def run_section(value):
    return validate(tiny_config(run={"checkpoint_every": value}), "run.yaml").run


@pytest.mark.parametrize("value, expected", [
    (3, CheckpointEvery(epochs=3)), ({"epochs": 2}, CheckpointEvery(epochs=2)),
    ({"steps": 500}, CheckpointEvery(steps=500)), ({"minutes": 0.5}, CheckpointEvery(minutes=0.5)),
    ({"steps": 5, "minutes": None}, CheckpointEvery(steps=5)),  # what a dumped config.yaml holds
])
def test_accepted_forms(value, expected):
    run = run_section(value)
    assert run.checkpoints == expected
    assert run.checkpoints.mid_epoch == (expected.epochs is None)
    if isinstance(value, int):
        assert run.checkpoint_every == value  # an integer stays one (config.yaml, MLflow params)


@pytest.mark.parametrize("value, expected", [
    (0, "run.checkpoint_every = 0: must be at least 1"),
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"steps": 1.5}, "steps must be an integer >= 1, got 1.5"),
    ({"minutes": -1}, "minutes must be a number > 0, got -1"),
    ({"steps": 1, "minutes": 2}, "2 of epochs, steps, minutes given"),
    ({}, "0 of epochs, steps, minutes given"),
    ({"step": 3}, "unknown key 'step'"),
    ("often", "expected an integer (epochs) or one of {epochs: N}, {steps: N}, {minutes: M}"),
    (True, "expected an integer (epochs)"),
])
def test_wrong_forms_are_one_line(value, expected):
    with pytest.raises(ConfigError) as exc:
        run_section(value)
    assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


@pytest.mark.parametrize("every, refused", [(2, False), ({"epochs": 2}, False), ({"steps": 10}, True),
                                            ({"minutes": 5}, True)])
def test_a_sweep_refuses_mid_epoch_checkpoints(every, refused):
    from raydeep.sweeps.plan import check_space

    raw = sweep_cfg({"optim.lr": {"choice": [1e-3, 1e-2]}})
    raw["run"]["checkpoint_every"] = every
    cfg = validate(raw, "sweep.yaml")
    if not refused:
        check_space(cfg, "sweep.yaml")
        return
    with pytest.raises(ConfigError) as exc:
        check_space(cfg, "sweep.yaml")
    assert "a sweep checkpoints per epoch only" in str(exc.value) and "\n" not in str(exc.value)


def test_resume_on_another_world_size_is_refused_only_where_the_remainder_cannot_be_dealt(tmp_path):
    import json

    from raydeep.trainers.driver import check_resume

    def checkpoint(name: str, position):
        (tmp_path / name).mkdir()
        (tmp_path / name / "raydeep.json").write_text(json.dumps({"position": position}))
        snap = {"checkpoint_results": [{"checkpoint_dir_name": name}], "latest_checkpoint_result": {"checkpoint_dir_name": name}}
        (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps(snap))

    (tmp_path / "run.json").write_text(json.dumps({"storage_name": "x", "last_global_step": 57}))
    assert check_resume(None, str(tmp_path), 3, tmp_path) == 57  # no checkpoint yet: anything goes
    checkpoint("checkpoint_a", None)  # an epoch's end: any world size
    assert check_resume(None, str(tmp_path), 3, tmp_path) == 57
    checkpoint("checkpoint_b", {"epoch": 1, "world_size": 2, "samples": 64, "elastic": True})
    assert check_resume(None, str(tmp_path), 3, tmp_path) == 57  # its samples left are dealt over 3
    checkpoint("checkpoint_c", {"epoch": 1, "world_size": 2, "samples": 64, "elastic": False})
    assert check_resume(None, str(tmp_path), 2, tmp_path) == 57
    with pytest.raises(ConfigError) as exc:  # resampled per chunk: what is left cannot be counted unread
        check_resume(None, str(tmp_path), 3, tmp_path)
    assert str(exc.value) == (
        f"--resume {tmp_path}: the latest checkpoint is mid-epoch and was saved by 2 workers, and its split is "
        "streamed and resampled per chunk (imbalance.sampling), so the samples left cannot be counted without "
        "reading them: it resumes only on 2 (now 3); set scaling.num_workers=2, or resume from an epoch's checkpoint")
