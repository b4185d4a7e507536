"""Sweeps on a real local Ray head (dashboard on): every trial a 2-worker DeepSpeed run of a
1-layer d=32 model on 256 synthetic rows, a few epochs, at most two trials at a time."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from raydeep.config import load_config, validate
from raydeep.sweeps.runner import run_sweep
from tests.conftest import BIN, ROOT, run_cli
from tests.helpers import SYNTH, read_tensorboard, tiny_config, write_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TRAIN_ROWS = 256  # 2 workers x 128 rows / batch 16 = 8 steps per epoch
STEPS_PER_EPOCH = 8


def sweep_raw(space: dict, *, epochs: int, **tune) -> dict:
    # skip_batch: the absurd LR (1e3) these tests rank last overflows on some steps; skipped, its trial
    # goes on scoring badly, which is what ASHA and PBT must act on (under the default, stop, the trial
    # ends as an error: tests/integration/test_nonfinite.py)
    raw = tiny_config(scaling={"num_workers": 2, "cpus_per_worker": 0.5},
                      run={"epochs": epochs, "seed": 0, "on_nonfinite_loss": "skip_batch"})
    raw["data"]["train"] = SYNTH.format(split="train", rows=TRAIN_ROWS)
    raw["data"]["val"] = SYNTH.format(split="val", rows=128)
    raw["tune"] = {"space": space, "search": "grid", "max_concurrent_trials": 2, **tune}
    return raw


def leaderboard(sweep: Path) -> list[dict]:
    with open(sweep / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def events(sweep: Path) -> list[dict]:
    return [json.loads(x) for x in (sweep / "trials.jsonl").read_text().splitlines()]


def wait_for_all_cpus_free(timeout: float = 90.0) -> tuple[float, float]:
    import ray

    deadline = time.time() + timeout
    while True:
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        if free == total or time.time() > deadline:
            return free, total
        time.sleep(1)


def reserved() -> str:
    """What still holds CPUs: the live placement groups and actors, for a failed free-CPU check."""
    from ray.util.state import list_actors, list_placement_groups

    groups = [(g.placement_group_id[:8], g.state, g.creator_job_id, g.name)
              for g in list_placement_groups(detail=True) if g.state != "REMOVED"]
    actors = [(a.class_name, a.state, a.job_id, a.name) for a in list_actors(detail=True) if a.state != "DEAD"]
    return f"placement groups {groups}; actors {actors}"


def test_asha_stops_an_absurd_lr_early_ranks_the_rest_frees_every_cpu_and_writes_best_yaml(ray_connected, tmp_path):
    # Grid order is run order: with two at a time the absurd LR runs last, so ASHA's first rung
    # already holds the others' scores when it reports.
    cfg = validate(sweep_raw({"optim.lr": {"grid": [1.0e-2, 3.0e-3, 1.0e3]}}, epochs=3,
                             scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2}), "sweep.yaml")
    sweep = tmp_path / "sweep"
    summary = run_sweep(cfg, source="sweep.yaml", run_dir=sweep, address=ray_connected.address)

    # No placement group outlives its trial, including the ones ASHA stopped.
    free, total = wait_for_all_cpus_free()
    assert free == total, f"{total - free:g} CPUs still reserved after the sweep: {reserved()}"

    rows = leaderboard(sweep)
    assert len(rows) == 3 and summary["trials"] == 3
    absurd = next(r for r in rows if float(r["optim.lr"]) == 1e3)
    best = rows[0]
    assert best["rank"] == "1" and float(best["optim.lr"]) != 1e3
    assert absurd["status"] == "stopped early"
    assert int(absurd["epochs_run"]) < int(best["epochs_run"]) == 3
    scores = [float(r["val/macro_f1"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert float(absurd["val/macro_f1"]) < float(best["val/macro_f1"])

    assert (sweep / "sweep.png").stat().st_size > 10_000
    assert summary["best"]["trial_id"] == best["trial_id"]
    # tensorboard --logdir SWEEP: one sub-run per trial, named by its id and LR, its metric per epoch
    runs = {p.name.split(",")[0]: p for p in (sweep / "tensorboard").iterdir()}
    assert set(runs) == {r["trial_id"] for r in rows}, runs
    for r in rows:
        tb = read_tensorboard(runs[r["trial_id"]])
        assert len(tb["scalars"]["val/macro_f1"]) == int(r["epochs_run"]), (r, tb["scalars"])
        assert "optim:" in tb["text"]["config"]
    # best.yaml is the winner's complete config: the base's every key with the winning LR, no tune:
    # section (`raydeep train best.yaml` runs it; loading it is what train does before Ray starts).
    best_cfg = load_config(sweep / "best.yaml")
    assert best_cfg.tune is None
    assert best_cfg.optim.lr == float(best["optim.lr"])
    assert best_cfg.model_dump(exclude={"optim", "tune"}) == cfg.model_dump(exclude={"optim", "tune"})
    assert best_cfg.optim.model_dump(exclude={"lr"}) == cfg.optim.model_dump(exclude={"lr"})


def kill_after_a_finished_trial(raw: dict, tmp_path: Path, address: str) -> tuple[Path, str]:
    """Start `raydeep tune` in a subprocess, SIGKILL it once a trial has finished, then
    `raydeep tune --resume` it to the end; the sweep dir and the trial finished before the kill."""
    path = write_config(tmp_path / "sweep.yaml", raw)
    sweep = tmp_path / "sweep"
    with open(tmp_path / "first.log", "wb") as out:
        proc = subprocess.Popen([str(BIN / "raydeep"), "tune", str(path), "--run-dir", str(sweep),
                                 "--address", address], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=dict(os.environ))
        try:
            finished = wait_for_a_finished_trial(sweep, proc, timeout=480)
        finally:
            proc.kill()  # what a lost SSH session or an OOM kill does: no clean shutdown
            proc.wait()
    assert proc.returncode != 0

    resumed = run_cli("tune", "--resume", str(sweep), "--address", address, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    return sweep, finished


def test_resume_after_the_driver_is_killed_does_not_rerun_finished_trials(ray_connected, tmp_path):
    raw = sweep_raw({"optim.lr": {"grid": [1.0e-2, 3.0e-2]}}, epochs=1, scheduler="none", max_concurrent_trials=1)
    sweep, finished = kill_after_a_finished_trial(raw, tmp_path, ray_connected.address)

    log = events(sweep)
    starts = [e["trial_id"] for e in log if e["event"] == "start"]
    assert starts.count(finished) == 1, log  # not rerun
    rows = leaderboard(sweep)
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows), rows
    assert {e["trial_id"] for e in log if e["event"] == "end"} == {r["trial_id"] for r in rows}
    assert (sweep / "best.yaml").is_file()
    # raydeep's table, not Tune's; Ray's lines in SWEEP/ray.log
    resumed_out = (tmp_path / "resumed.log").read_text()
    assert "2/2 done: 2 finished; " in resumed_out, resumed_out[-3000:]
    assert "== Status ==" not in resumed_out and "pid=" not in resumed_out, resumed_out[-3000:]
    assert "deepspeed_shm_comm_op" in (sweep / "ray.log").read_text()


def test_resumed_asha_stops_a_bad_trial_against_the_rungs_of_trials_finished_before_the_kill(ray_connected, tmp_path):
    # One trial at a time: the good LR finishes, the driver is killed, and the absurd LR runs only
    # after the resume. Ray restores ASHA without its rungs; raydeep's EpochASHA rebuilds them from
    # the saved results, so the absurd trial is stopped at the first rung against the good one's.
    raw = sweep_raw({"optim.lr": {"grid": [1.0e-2, 1.0e3]}}, epochs=2, max_concurrent_trials=1,
                    scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    sweep, finished = kill_after_a_finished_trial(raw, tmp_path, ray_connected.address)

    log = events(sweep)
    assert [e["trial_id"] for e in log if e["event"] == "start"].count(finished) == 1, log
    rows = {float(r["optim.lr"]): r for r in leaderboard(sweep)}
    assert rows[1e-2]["trial_id"] == finished and rows[1e-2]["status"] == "finished", rows
    assert rows[1e3]["status"] == "stopped early" and rows[1e3]["epochs_run"] == "1", rows
    # A trial first started by the resume gets a suffixed Tune folder; the leaderboard names its id.
    assert {e["trial_id"] for e in log if e["event"] == "start"} == {r["trial_id"] for r in rows.values()}
    assert rows[1e-2]["rank"] == "1" and (sweep / "best.yaml").is_file()
    free, total = wait_for_all_cpus_free()
    assert free == total, f"{total - free:g} CPUs still reserved after the resumed sweep: {reserved()}"


def wait_for_a_finished_trial(sweep: Path, proc: subprocess.Popen, timeout: float) -> str:
    """The id of the first trial that ended and that Tune's saved experiment state calls
    TERMINATED (the state a restore reads)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        ended = set()
        if (sweep / "trials.jsonl").exists():
            ended = {e["trial_id"] for e in events(sweep) if e["event"] == "end"}
        for state_file in glob.glob(str(sweep / "tune" / "experiment_state-*.json")):
            try:
                trials = [json.loads(t[0]) for t in json.loads(Path(state_file).read_text())["trial_data"]]
            except (ValueError, KeyError):
                continue  # being written
            done = [t["trial_id"] for t in trials if t["status"] == "TERMINATED" and t["trial_id"] in ended]
            if done:
                return done[0]
        time.sleep(1)
    raise AssertionError(f"no trial finished within {timeout:.0f} s")
