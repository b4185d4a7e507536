"""NaN end to end (issue 19, item 3): a NaN in the data is refused before Ray starts; a training
loss that turns non-finite mid-run stops the run in one line naming the epoch and step, with no
retry, or with ``run.on_nonfinite_loss: skip_batch`` is skipped on every worker and counted."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from raydeep.cli import main
from raydeep.config import validate
from raydeep.trainers.driver import train
from tests.conftest import run_cli
from tests.helpers import tiny_config, write_config
from tests.unit.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.ray

SEED = "datasets://seed-regression/{split}?rows=200&val_rows=50&seed=0"


def diverging_config(**run) -> dict:
    """A linear regression whose SGD learning rate (1e30) blows the weights up on the first step:
    the second step's squared error overflows float32, on both workers."""
    cfg = tiny_config(data={"train": SEED.format(split="train"), "val": SEED.format(split="val"), "batch_size": 10},
                      optim={"name": "sgd", "lr": 1.0e30, "weight_decay": 0.0, "grad_clip": 0.0},
                      deepspeed={"zero_stage": 0},
                      run={"epochs": 2, "seed": 0, "early_stopping": {"metric": "val/rmse", "mode": "min"}, **run})
    cfg["model"] = {"kind": "linear", "task": "regression"}  # replaces the transformer's keys
    return cfg


def test_a_nan_feature_is_refused_before_ray_starts(tmp_path):
    """``--address`` names a port nothing listens on: reaching Ray would fail otherwise; the data
    check comes first and names split, file, column and row."""
    x = np.ones((20, 3), dtype=np.float32)
    x[13, 1] = np.nan
    for split in ("train", "val"):
        rows = x if split == "train" else np.ones_like(x)
        table = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 3),
                          "label": pa.array(np.linspace(0, 1, 20))})
        pq.write_table(table, tmp_path / f"{split}.parquet")
    cfg = diverging_config()
    cfg["data"] = {**cfg["data"], "train": str(tmp_path / "train.parquet"), "val": str(tmp_path / "val.parquet")}
    t0 = time.perf_counter()
    proc = run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)), "--run-dir", str(tmp_path / "run"),
                   "--address", "127.0.0.1:9")
    line = assert_one_line_error(proc, f"data.train: {tmp_path / 'train.parquet'}: row group 0, row 13: "
                                       "'features' holds nan (NaN or inf); every feature value must be finite")
    assert not (tmp_path / "run").exists(), line
    print(f"refused in {time.perf_counter() - t0:.1f} s (the console script's start included)")


def test_a_nonfinite_loss_stops_the_run_in_one_line_without_a_retry(ray_connected, tmp_path, capsys):
    """``max_failures: 1``: the workers return with the line rather than raise, so Ray Train has
    nothing to retry, and no summary is written. (``cli.main`` in this process: the console script's
    exit code and error line, without its start-up.)"""
    cfg = write_config(tmp_path / "run.yaml", diverging_config(max_failures=1))
    t0 = time.perf_counter()
    code = main(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--address", ray_connected.address])
    wall = time.perf_counter() - t0
    out, err = capsys.readouterr()
    proc = SimpleNamespace(returncode=code, stdout=out, stderr=err)
    line = assert_one_line_error(proc, "the training loss is inf at epoch 1/2, step 2/10 (after 1 optimizer steps)",
                                 "run.on_nonfinite_loss: stop", code=1)
    assert "resumed at" not in out + err, line  # no second worker group
    assert not (tmp_path / "run" / "summary.json").exists()
    with capsys.disabled():
        print(f"\n{line}\nstopped in {wall:.1f} s")


def test_skip_batch_skips_on_every_worker_and_counts(ray_connected, tmp_path):
    """Every step after the first overflows: each is skipped on both workers (no backward, no
    optimizer step: the engine's step count stays 1), the run finishes, metrics.jsonl counts them."""
    cfg = validate(diverging_config(on_nonfinite_loss="skip_batch"), "test")
    t0 = time.perf_counter()
    summary = train(cfg, run_dir=tmp_path / "run", address=ray_connected.address)
    print(f"finished in {time.perf_counter() - t0:.1f} s")
    epochs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train/skipped_steps"] for m in epochs] == [9, 10]
    assert [m["global_step"] for m in epochs] == [1, 1]
    assert epochs[0]["train/samples"] == 2 * 10 and math.isfinite(epochs[0]["train/loss"])  # the first step's
    assert math.isnan(epochs[1]["train/loss"])  # nothing trained in epoch 2
    assert summary["final"]["epoch"] == 1 and summary["final"]["global_step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["pbt"])
def test_a_diverging_trial_is_an_error_in_the_leaderboard_and_the_sweep_goes_on(ray_connected, tmp_path, scheduler):
    """A trial whose loss goes non-finite fails with the line naming its step; the other trial
    finishes and ranks. (Under PBT a segment's NaN once crashed the whole sweep: its report
    lacked the metric. The other schedulers' one fit per trial ends through the same
    ``reporting.finished``: measured with scheduler none on 2026-12-03, 40 s, passed.)"""
    from raydeep.sweeps.runner import run_sweep

    raw = diverging_config()
    raw["scaling"] = {**raw.get("scaling", {}), "num_workers": 2, "cpus_per_worker": 0.5}  # two trials at once
    sched = scheduler if scheduler == "none" else {"name": "pbt", "perturbation_interval": 1,
                                                   "quantile_fraction": 0.5, "resample_probability": 0.0}
    raw["tune"] = {"space": {"optim.lr": {"grid": [1.0e30, 1.0e-3]}}, "search": "grid", "metric": "val/rmse",
                   "mode": "min", "max_concurrent_trials": 2, "scheduler": sched}
    sweep = tmp_path / "sweep"
    shown = io.StringIO()
    summary = run_sweep(validate(raw, "sweep.yaml"), source="sweep.yaml", run_dir=sweep,
                        address=ray_connected.address, console=Console(file=shown, width=200))
    rows = {float(r["optim.lr"]): r for r in csv.DictReader(open(sweep / "leaderboard.csv"))}
    assert rows[1e30]["status"] == "error", rows
    # the sweep's table names the failed trial with its line; Ray's traceback is in SWEEP/ray.log
    console = shown.getvalue()
    assert re.search(rf"{rows[1e30]['trial_id']}: .*the training loss is inf at epoch", console), console[-3000:]
    assert "Traceback" not in console and "Traceback" in (sweep / "ray.log").read_text()
    # (a PBT segment's run ends at its own last epoch: "epoch 1/1" there)
    assert re.search(r"the training loss is inf at epoch 1/[12], step 2/10", rows[1e30]["error"]), rows
    assert rows[1e-3]["status"] == "finished" and rows[1e-3]["rank"] == "1", rows
    assert math.isfinite(float(rows[1e-3]["val/rmse"]))
    assert summary["errors"] == 1 and summary["best"]["trial_id"] == rows[1e-3]["trial_id"]
