"""model.task: regression through the console script: Ray Data -> 2 DeepSpeed workers -> regression metrics."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from tests.helpers import write_config

pytestmark = pytest.mark.ray

SEED = "datasets://seed-regression/{split}?rows=512&val_rows=64&noise=0.05&seed=0"


def test_linear_regression_trains_and_reports_regression_metrics(ray_head, tmp_path):
    cfg = {
        "name": "seed-regression",
        "data": {"train": SEED.format(split="train"), "val": SEED.format(split="val"), "batch_size": 16,
                 "shuffle_buffer": 64},
        "model": {"kind": "linear", "task": "regression"},
        "optim": {"name": "sgd", "lr": 0.03, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0},
        "scaling": {"num_workers": 2},
        "run": {"epochs": 3, "seed": 0},
    }
    run_dir = tmp_path / "run"
    proc = run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)), "--address", ray_head.address,
                   "--run-dir", str(run_dir), check=True)
    assert "rmse" in proc.stdout and "θ₀ (intercept)" in proc.stdout  # epoch lines and the final table

    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"]
    assert summary["task"] == "regression" and summary["confusion"] is None and summary["class_counts"] is None
    assert {"val/loss", "val/mse", "val/rmse", "val/mae", "val/r2", "train/loss"} <= set(final)
    assert final["val/loss"] == pytest.approx(final["val/mse"], rel=1e-6)  # the loss is the mse
    assert summary["best"]["metric"] == "val/rmse" and summary["best"]["value"] is not None
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
    assert epochs[-1]["val/rmse"] < epochs[0]["val/rmse"]  # it learns
    assert final["val/rmse"] < summary["targets"]["std"] / 2  # far better than predicting the mean
    assert abs(summary["linear"]["weights"][0] - 2.0) < 0.5  # heading for y = 2x
    assert (run_dir / "learning_curves.png").is_file() and not (run_dir / "confusion.png").exists()

    # The checkpoint evaluates on one CPU without Ray: the same metrics on a fresh split.
    from raydeep.trainers.evaluate import evaluate_command

    result = evaluate_command(str(run_dir), SEED.format(split="test"), out=str(tmp_path / "eval.json"))
    assert result["rows"] == 64 and set(result) >= {"mse", "rmse", "mae", "r2"}
    assert result["rmse"] == pytest.approx(final["val/rmse"], rel=0.5)  # another 64 x from [1, 5]
