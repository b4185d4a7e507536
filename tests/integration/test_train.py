"""End to end on a real local Ray head with real DeepSpeed engines (2 workers each)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from raydeep.config import validate
from raydeep.trainers.driver import train
from raydeep.trainers.evaluate import evaluate_command
from tests.helpers import SYNTH, tiny_config

pytestmark = pytest.mark.ray


def checkpoint_files(summary: dict) -> list[str]:
    ckpt = Path(summary["latest_checkpoint"]) / "engine"
    return sorted(p.name for p in ckpt.iterdir())


@pytest.mark.parametrize("stage, precision", [(0, "auto"), (1, "auto"), (2, "bf16"), (3, "auto")])
def test_zero_stage_trains_and_checkpoints_every_shard(ray_connected, tmp_path, stage, precision):
    cfg = validate(tiny_config(deepspeed={"zero_stage": stage, "precision": precision}), "test")
    summary = train(cfg, run_dir=tmp_path / "run", address=ray_connected.address)

    final = summary["final"]
    assert final["epoch"] == 0
    assert final["global_step"] > 0
    # learned, not merely ran: one epoch of 400 rows beats chance (4 balanced val classes) clearly
    assert math.isfinite(final["train/loss"]) and final["train/loss"] < math.log(4), final
    assert final["val/accuracy"] > 0.25 + 0.1, final
    files = checkpoint_files(summary)
    prefix = "bf16_" if precision == "bf16" else ""  # DeepSpeed prefixes bf16 optimizer shards
    if stage == 0:
        assert "mp_rank_00_model_states.pt" in files  # no partitioning: one full copy
    else:
        # Every rank's optimizer-state partition is in the one merged checkpoint directory.
        assert {f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= set(files)
    if stage == 3:
        assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= set(files)

    ds = json.loads((tmp_path / "run" / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] is (precision == "bf16")  # auto is fp32 on CPUs
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0]

    # The checkpoint loads on one CPU without Ray, whatever the stage, and gives the
    # same validation accuracy the workers measured (bf16 workers vs fp32 weights here:
    # a few borderline predictions may flip).
    result = evaluate_command(str(tmp_path / "run"), SYNTH.format(split="val", rows=400),
                              out=str(tmp_path / "eval.json"))
    tolerance = 0.03 if precision == "bf16" else 1e-9
    assert result["accuracy"] == pytest.approx(final["val/accuracy"], abs=tolerance)


@pytest.mark.slow
def test_resume_on_fewer_workers_repartitions_the_zero3_state(ray_connected, tmp_path):
    """DeepSpeed refuses a ZeRO 1-3 checkpoint on another number of ranks ("Automatic adjustment of
    ZeRO's optimizer state partitioning with a new world size is not currently supported"): raydeep
    converts it to DeepSpeed's universal checkpoint and loads that (reporting.load_engine_checkpoint).
    Saved by 2 workers at ZeRO-3, resumed on 1: the global step continues and training goes on from
    the saved weights. (1 -> 2 at ZeRO-1 was run by hand on 2026-12-03; 2 -> 1 mid-epoch at ZeRO-1 is
    the elastic Ctrl-C test.)"""
    run_dir = tmp_path / "run"
    first = train(validate(tiny_config(deepspeed={"zero_stage": 3}), "test"), run_dir=run_dir,
                  address=ray_connected.address)
    cfg = validate(tiny_config(deepspeed={"zero_stage": 3}, run={"epochs": 2, "seed": 0},
                               scaling={"num_workers": 1, "cpus_per_worker": 1}), "test")
    second = train(cfg, run_dir=run_dir, address=ray_connected.address, resume=True)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = first["final"]["global_step"]
    assert second["final"]["resumed_from_step"] == steps and lines[1]["resumed"]["global_step"] == steps
    # Epoch 1 on 1 worker: the whole split (2 workers trim rows % 2), batch 16, one step per batch.
    assert lines[1]["train/samples"] - lines[0]["train/samples"] in (0, 1)
    assert second["final"]["global_step"] == steps + math.ceil(lines[1]["train/samples"] / 16)
    assert math.isfinite(lines[1]["train/loss"]) and lines[1]["train/loss"] < lines[0]["train/loss"]
    assert json.loads((Path(second["latest_checkpoint"]) / "raydeep.json").read_text())["world_size"] == 1


def test_resume_continues_from_saved_epoch_and_step(ray_connected, tmp_path):
    import shutil

    from raydeep.errors import RaydeepError

    run_dir = tmp_path / "run"
    first = train(validate(tiny_config(), "test"), run_dir=run_dir, address=ray_connected.address)
    steps_per_epoch = first["final"]["global_step"]

    # What a crash between rank 0's and rank 1's upload leaves: a newer checkpoint_* folder, rank 1's
    # ZeRO shard missing, that Ray never registered; and no summary (the run did not finish).
    registered = Path(first["latest_checkpoint"])
    torn = run_dir / "checkpoint_2099-01-01_00-00-00.000000"
    shutil.copytree(registered, torn)
    (torn / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    (run_dir / "summary.json").unlink()
    val = SYNTH.format(split="val", rows=400)
    result = evaluate_command(str(run_dir), val, out=str(tmp_path / "eval.json"))
    assert result["checkpoint"] == str(registered)  # the registered one, not the newer torn folder
    with pytest.raises(RaydeepError, match=r"incomplete checkpoint: rank 1's optimizer shard .* is missing"):
        evaluate_command(str(torn), val, out=str(tmp_path / "torn.json"))

    cfg = validate(tiny_config(run={"epochs": 2, "seed": 0}), "test")
    second = train(cfg, run_dir=run_dir, address=ray_connected.address, resume=True)
    assert not torn.exists()  # removed before the resume

    assert second["final"]["resumed_from_step"] == steps_per_epoch
    assert second["final"]["epoch"] == 1
    assert second["final"]["global_step"] == 2 * steps_per_epoch  # continued, not restarted
    epochs = [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]


def test_finished_run_dir_is_not_overwritten(ray_connected, tmp_path):
    from raydeep.errors import ConfigError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished run"):
        train(validate(tiny_config(), "test"), run_dir=run_dir, address=ray_connected.address)


def test_oversampling_focal_rmsprop_l1_run(ray_connected, tmp_path):
    """Class resampling runs inside Ray Data: an epoch holds the expected, rebalanced count."""
    from raydeep.trainers.class_weights import expected_sampled_counts

    cfg = validate(tiny_config(
        optim={"name": "rmsprop", "lr": 1.0e-3, "l1": 1.0e-6},
        imbalance={"sampling": "oversample", "loss": "focal", "gamma": 2.0, "weighting": "inverse"},
    ), "test")
    summary = train(cfg, run_dir=tmp_path / "run", address=ray_connected.address)
    expected = sum(expected_sampled_counts(summary["class_counts"], "oversample"))
    assert summary["class_counts"][0] > 3 * summary["class_counts"][-1]  # the raw split is long-tailed
    # Rows seen by both workers: the resampled total, up to sampling noise and the <= 1 row
    # dropped to equalize the two shards.
    assert abs(summary["final"]["train/samples"] - expected) < 0.1 * expected
    assert (tmp_path / "run" / "lr_schedule.png").is_file()


DIGITS = "datasets://digits-lt/{split}?imbalance_ratio=10&seed=0"
SEED = "datasets://seed-regression/{split}?rows=200&val_rows=50&seed=0"


@pytest.mark.parametrize("kind,materialize_mb", [("tokens", 0), ("pixels", 0), ("numeric", 0), ("tokens", 256)])
def test_split_trains_every_row_once(ray_connected, tmp_path, kind, materialize_mb):
    """``data.materialize_max_mb: 0``: the training split streams from its parquet files (list
    columns to the workers, which stack them) for each kind of feature column; 256: it is held in
    the object store and dealt to the workers without Ray Data (datasets/memory.py). Either way one
    epoch sees every row but the 2-worker remainder."""
    from raydeep.datasets import open_split

    stream = {"materialize_max_mb": materialize_mb}
    if kind == "tokens":
        cfg, train_uri = tiny_config(data=stream), SYNTH.format(split="train", rows=400)
    elif kind == "pixels":
        train_uri = DIGITS.format(split="train")
        cfg = tiny_config(data={**stream, "train": train_uri, "val": DIGITS.format(split="val")},
                          model={"kind": "transformer", "num_classes": 10, "d_model": 32, "layers": 1,
                                 "heads": 2, "patch_size": 4, "max_len": 64, "dropout": 0.0})
    else:
        train_uri = SEED.format(split="train")
        cfg = tiny_config(data={**stream, "train": train_uri, "val": SEED.format(split="val"), "batch_size": 10},
                          optim={"name": "sgd", "lr": 0.03, "weight_decay": 0.0, "grad_clip": 0.0},
                          deepspeed={"zero_stage": 0},
                          run={"epochs": 1, "seed": 0, "early_stopping": {"metric": "val/rmse", "mode": "min"}})
        cfg["model"] = {"kind": "linear", "task": "regression"}  # replaces the transformer's keys
    summary = train(validate(cfg, "test"), run_dir=tmp_path / "run", address=ray_connected.address)
    rows = open_split(train_uri, key="data.train", label_kind="value" if kind == "numeric" else "class").num_rows
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train/samples"] == rows - rows % 2
    assert summary["final"]["global_step"] > 0


def test_token_ids_past_the_models_vocabulary_fail_in_one_line(ray_connected, tmp_path):
    """A split whose manifest says vocab_size 20 but holds ids up to 63 (a tokenizer swapped after
    prepare): the worker's batcher stops at the first block with the split, column and value,
    not with an IndexError inside the embedding. Streamed and cached splits alike."""
    import numpy as np
    import pyarrow as pa

    from raydeep.datasets import FeatureSpec, write_split
    from raydeep.datasets.schema import tokens_array
    from raydeep.errors import DataError

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        ids = rng.integers(1, 20, (64, 16))
        if split == "train":
            ids[40, 3] = 63
        write_split(tmp_path / "data" / split, pa.table({"input_ids": tokens_array(ids, 16),
                                                         "label": pa.array(np.arange(64) % 4, pa.int64())}),
                    name="oov", split=split, task="text_classification",
                    feature=FeatureSpec(column="input_ids", kind="tokens", seq_len=16, vocab_size=20),
                    num_classes=4, label_names=list("abcd"), shards=2)
    for materialize in (0, 256):
        cfg = tiny_config(data={"train": str(tmp_path / "data" / "train"), "val": str(tmp_path / "data" / "val"),
                                "materialize_max_mb": materialize},
                          run={"epochs": 1, "seed": 0, "max_failures": 0})
        with pytest.raises(DataError, match=r"data.train: column 'input_ids' holds 63, outside \[0, 20\)"):
            train(validate(cfg, "test"), run_dir=tmp_path / f"run{materialize}", address=ray_connected.address)
