"""Gradient accumulation across a resume (issue 19, item 9).

448 rows on 2 workers in batches of 16 are 14 micro-batches per worker per epoch: with
``optim.grad_accum: 4`` the window open at the end of epoch 1 (micro-batches 13 and 14) closes
two micro-batches into epoch 2, so 2 epochs take 7 optimizer steps (28 // 4). DeepSpeed's
checkpoint holds neither those two micro-batches' gradients nor its micro-step counter: a
resumed worker used to open a new window at epoch 2 (3 steps in it instead of 4, other losses).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from raydeep.config import validate
from raydeep.trainers.driver import train
from tests.helpers import SYNTH, tiny_config

pytestmark = pytest.mark.ray


def accum_config(epochs: int, stage: int) -> dict:
    # A constant LR: a 1-epoch run and a 2-epoch run then set the same LR at every step, so the
    # resumed run can be held to the uninterrupted one exactly. Dropout on: the replayed forwards
    # must draw the masks they drew before the checkpoint.
    return validate(tiny_config(
        data={"train": SYNTH.format(split="train", rows=448), "val": SYNTH.format(split="val", rows=200),
              "batch_size": 16, "shuffle_buffer": 64},
        model={"dropout": 0.1},
        optim={"lr": 3.0e-3, "grad_accum": 4},
        schedule={"name": "constant", "warmup": 0},
        deepspeed={"zero_stage": stage},
        run={"epochs": epochs, "seed": 0},
    ), "test")


def epochs_of(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", [2])  # ZeRO-2: gradients reduced into partitioned buckets each micro-step
def test_a_resumed_grad_accum_run_equals_an_uninterrupted_one(ray_connected, tmp_path, stage):
    t0 = time.perf_counter()
    whole = train(accum_config(2, stage), run_dir=tmp_path / "whole", address=ray_connected.address)
    first = train(accum_config(1, stage), run_dir=tmp_path / "cut", address=ray_connected.address)
    (tmp_path / "cut" / "summary.json").unlink()  # as if the 2-epoch run had stopped after epoch 1
    resumed = train(accum_config(2, stage), run_dir=tmp_path / "cut", address=ray_connected.address, resume=True)
    print(f"3 runs in {time.perf_counter() - t0:.0f} s")

    assert first["final"]["global_step"] == 3  # micro-batches 4, 8, 12 closed windows; 13, 14 left open
    cut = Path(first["latest_checkpoint"])
    assert {p.name for p in cut.glob("accum_window_r*.pt")} == {"accum_window_r0.pt", "accum_window_r1.pt"}
    assert resumed["final"]["resumed_from_step"] == 3
    a, b = epochs_of(tmp_path / "whole"), epochs_of(tmp_path / "cut")
    assert [m["global_step"] for m in a] == [3, 7]  # 28 micro-batches // 4
    assert [m["global_step"] for m in b] == [m["global_step"] for m in a]
    for x, y in zip(a, b):
        print(f"epoch {x['epoch']}: train/loss {x['train/loss']:.9f} vs {y['train/loss']:.9f}, "
              f"val/loss {x['val/loss']:.9f} vs {y['val/loss']:.9f}")
        assert x["train/samples"] == y["train/samples"]
        assert y["train/loss"] == pytest.approx(x["train/loss"], abs=1e-6)
        assert y["val/loss"] == pytest.approx(x["val/loss"], abs=1e-6)  # the weights after the last step too
    assert resumed["final"]["val/loss"] == pytest.approx(whole["final"]["val/loss"], abs=1e-6)
