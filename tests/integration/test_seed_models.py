"""The seed project's models (configs/seed-cnn.yaml, configs/lstm-text.yaml) through the console script:
real Ray, 2 DeepSpeed workers, the committed config shortened by --set; they must learn, not only run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.ray


def epochs_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_learned(run_dir: Path, epochs: int, num_classes: int, min_macro_f1: float) -> dict:
    """Every epoch's losses finite, both losses fall from the first epoch to the last, and the last
    epoch's validation macro-F1 is far above chance (1 / num_classes); returns summary.json."""
    metrics = epochs_of(run_dir)
    assert [m["epoch"] for m in metrics] == list(range(epochs))
    for m in metrics:
        assert math.isfinite(m["train/loss"]) and math.isfinite(m["val/loss"]), m
    first, last = metrics[0], metrics[-1]
    assert last["train/loss"] < 0.7 * first["train/loss"], (first["train/loss"], last["train/loss"])
    assert last["val/loss"] < first["val/loss"], (first["val/loss"], last["val/loss"])
    assert min_macro_f1 > 2 / num_classes  # the bar itself is clearly above chance
    assert last["val/macro_f1"] > min_macro_f1, last["val/macro_f1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["epoch"] == epochs - 1
    assert summary["final"]["val/macro_f1"] == pytest.approx(last["val/macro_f1"])
    # the best checkpoint is the kept one whose own epoch scored best (not merely the latest)
    kept = {str(c): json.loads((c / "raydeep.json").read_text())["metrics"]["val/macro_f1"]
            for c in Path(summary["latest_checkpoint"]).parent.glob("checkpoint_*") if c.is_dir()}
    assert kept[summary["best"]["checkpoint"]] == max(kept.values()), (summary["best"], kept)
    return summary


@pytest.mark.slow
def test_seed_cnn_learns_digits(ray_head, tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/seed-cnn.yaml").read_text())
    assert cfg["model"]["kind"] == "cnn" and cfg["optim"]["name"] == "adam"
    assert cfg["imbalance"] == {"weighting": "none", "loss": "cross_entropy", "sampling": "none"}
    run_dir = tmp_path / "run"
    # 4 of 15 epochs: the full run reached macro-F1 0.89 at epoch 4 (benchmarks/BENCHMARKS.md, "Seed models").
    proc = run_cli("train", "configs/seed-cnn.yaml", "--set", "run.epochs=4", "--set", "run.checkpoint_every=4",
                   "--address", ray_head.address, "--run-dir", str(run_dir), check=True)
    assert "epoch 4/4" in proc.stdout
    assert_learned(run_dir, epochs=4, num_classes=10, min_macro_f1=0.6)


@pytest.mark.slow
@pytest.mark.parametrize("stage, precision", [(1, "auto"), (3, "bf16")])
def test_lstm_learns_synthetic_text(ray_head, tmp_path, stage, precision):
    cfg = yaml.safe_load((ROOT / "configs/lstm-text.yaml").read_text())
    assert cfg["model"]["kind"] == "lstm" and cfg["model"]["bidirectional"] is True
    run_dir = tmp_path / "run"
    proc = run_cli("train", "configs/lstm-text.yaml", "--set", "run.epochs=2", "--set", "run.checkpoint_every=2",
                   "--set", f"deepspeed.zero_stage={stage}", "--set", f"deepspeed.precision={precision}",
                   "--address", ray_head.address, "--run-dir", str(run_dir), check=True)
    assert "epoch 2/2" in proc.stdout
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage and ds["bf16"]["enabled"] is (precision == "bf16")
    summary = assert_learned(run_dir, epochs=2, num_classes=4, min_macro_f1=0.7)
    engine = Path(summary["latest_checkpoint"]) / "engine"
    if stage == 3:  # each rank's shard of the LSTM's weights is in the one checkpoint
        assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= {p.name for p in engine.iterdir()}

    # The checkpoint loads on one CPU without Ray (ZeRO-3 shards merged) and scores as the workers did
    # on the validation split (bf16 workers vs fp32 weights here: a few borderline rows may flip).
    out = tmp_path / "eval.json"
    run_cli("evaluate", str(run_dir), "--data", cfg["data"]["val"], "--out", str(out), check=True)
    result = json.loads(out.read_text())
    tolerance = 0.02 if precision == "bf16" else 1e-9
    assert result["rows"] == 400
    assert result["accuracy"] == pytest.approx(summary["final"]["val/accuracy"], abs=tolerance)
