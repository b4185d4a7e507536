"""Hugging Face models through the real pipeline: Ray Data -> Ray Train workers -> DeepSpeed,
with tiny random-init models saved locally (tests/hf_models.py) and loaded by from_pretrained."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import SYNTH, tiny_config, write_config
from tests.hf_models import save_tiny_model

pytestmark = pytest.mark.ray


def epochs_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    # the synthetic text's ids are 0..63 with padding 0: an encoder with that vocabulary reads them
    return save_tiny_model(tmp_path_factory.mktemp("hf") / "bert", "bert", vocab_size=64)


def hf_classifier(path: Path, zero_stage: int, epochs: int) -> dict:
    return tiny_config(
        data={"train": SYNTH.format(split="train", rows=600), "val": SYNTH.format(split="val", rows=400),
              "batch_size": 16},
        model={"kind": "hf", "path": str(path), "num_classes": 4},
        optim={"lr": 2.0e-3},
        deepspeed={"zero_stage": zero_stage},
        run={"epochs": epochs, "seed": 0},
    )


@pytest.mark.slow
def test_hf_encoder_classifies_at_zero_0_and_zero_3_holding_half_the_parameters(ray_head, tmp_path, bert_dir):
    held = {}
    for stage in (0, 3):
        run_dir = tmp_path / f"zero{stage}"
        cfg = write_config(tmp_path / f"zero{stage}.yaml", hf_classifier(bert_dir, stage, epochs=4))
        run_cli("train", str(cfg), "--address", ray_head.address, "--run-dir", str(run_dir), check=True)
        epochs = epochs_of(run_dir)
        losses = [m["train/loss"] for m in epochs]
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] * 0.8, (stage, losses)
        assert epochs[-1]["val/macro_f1"] > 0.6, (stage, epochs[-1])  # 4 classes: chance is 0.25
        held[stage] = epochs[-1]["param_bytes"]
    # ZeRO-3 on 2 workers: each holds its half of every parameter (+ alignment padding)
    assert 0.45 < held[3] / held[0] < 0.6, held
