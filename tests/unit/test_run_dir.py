"""A run dir is one run: a new config never silently continues an old run's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raydeep.errors import ConfigError
from raydeep.trainers.driver import RUN_FILE, check_run_dir, storage_name
from tests.conftest import run_cli
from tests.helpers import tiny_config, write_config


@pytest.mark.parametrize("held", ["checkpoint_000003", "checkpoint_manager_snapshot.json", "metrics.jsonl", RUN_FILE])
def test_a_run_dir_holding_an_interrupted_run_is_refused_without_resume(tmp_path, held):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: old\n")
    if held.startswith("checkpoint_0"):
        (run_dir / held).mkdir()
    elif held == RUN_FILE:  # checkpoints in run.storage, not here
        (run_dir / held).write_text(json.dumps({"storage_name": "run-1a2b3c4d", "storage": "s3://bkt/runs"}))
    else:
        (run_dir / held).write_text("{}\n")
    with pytest.raises(ConfigError, match=rf"holds an interrupted run \({held}\); use --resume {run_dir}"):
        check_run_dir(run_dir, resume=False)
    check_run_dir(run_dir, resume=True)  # what --resume is for


def test_new_empty_or_config_only_run_dirs_are_accepted_and_resume_needs_a_run(tmp_path):
    check_run_dir(tmp_path / "new", resume=False)
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "config.yaml").write_text("name: x\n")  # failed before its first epoch
    check_run_dir(tmp_path / "started", resume=False)
    # a local run stopped before its first checkpoint (a NaN in epoch 1): nothing to resume, so a rerun
    # with a lower LR may use the directory; its run.json names no storage
    (tmp_path / "started" / RUN_FILE).write_text(json.dumps({"storage_name": "started", "storage": None}))
    check_run_dir(tmp_path / "started", resume=False)
    with pytest.raises(ConfigError, match="not a run directory"):
        check_run_dir(tmp_path / "new", resume=True)


def test_runs_with_one_basename_never_share_a_storage_folder_and_resume_finds_its_own(tmp_path):
    a, b = tmp_path / "a" / "exp", tmp_path / "b" / "exp"
    for d in (a, b):
        d.mkdir(parents=True)
    assert storage_name(a, remote=False) == "exp"  # local: the run dir is its own Train folder
    name_a, name_b = storage_name(a, remote=True), storage_name(b, remote=True)
    assert name_a != name_b and name_a.startswith("exp-") and name_b.startswith("exp-")
    (a / RUN_FILE).write_text(json.dumps({"storage_name": name_a}))
    assert storage_name(a, remote=True) == name_a  # --resume reads back the recorded name


def test_cli_refuses_before_ray_starts_and_leaves_the_old_config(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint_000000").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: old\n")
    path = write_config(tmp_path / "new.yaml", tiny_config())
    proc = run_cli("train", str(path), "--run-dir", str(run_dir), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines == [f"raydeep: error: --run-dir {run_dir}: holds an interrupted run (checkpoint_000000); "
                     f"use --resume {run_dir}, or pick a new directory"], proc.stderr
    assert (run_dir / "config.yaml").read_text() == "name: old\n"
    assert "Ray" not in proc.stdout
