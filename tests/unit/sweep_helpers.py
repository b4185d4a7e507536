"""Configs and stand-ins the sweep tests share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raydeep.config import Config, validate
from raydeep.errors import ConfigError
from raydeep.sweeps.plan import check_space
from tests.helpers import tiny_config


def sweep_cfg(space: dict, **tune) -> dict:
    """A tiny config (4 epochs) with a tune: section searching ``space``."""
    raw = tiny_config(run={"epochs": 4, "seed": 0})
    raw["tune"] = {"space": space, **tune}
    return raw


def check(space: dict, **tune) -> Config:
    """The validated sweep config, its space checked."""
    cfg = validate(sweep_cfg(space, **tune), "sweep.yaml")
    check_space(cfg, "sweep.yaml")
    return cfg


def error_of(space: dict, **tune) -> str:
    """The one-line error check_space gives ``space``."""
    with pytest.raises(ConfigError) as exc:
        check(space, **tune)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert msg.startswith("sweep.yaml: "), msg
    return msg


def plan(world=2, cpw=0.5, use_gpu=False, gpw=1.0) -> SimpleNamespace:
    """What max_concurrent reads of a RunPlan."""
    return SimpleNamespace(world=world, cpus_per_worker=cpw, use_gpu=use_gpu,
                           cfg=SimpleNamespace(scaling=SimpleNamespace(gpus_per_worker=gpw)))
