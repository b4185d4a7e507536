"""An epoch's sample order is a function of (seed, epoch, the shards): two fresh runs with one seed
train on the same samples in the same batches with the same losses, held in memory or streamed
(datasets/epoch_order.py). Each rank logs what it trained on (``RAYDEEP_SAMPLE_LOG``)."""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict

import pytest

from tests.conftest import BIN, ROOT
from tests.helpers import SYNTH, read_sample_log, tiny_config, write_config

pytestmark = pytest.mark.ray

ROWS = 402  # about (the synthetic long tail rounds down): 16-row batches leave a short last one


def by_epoch(log: dict[int, list]) -> dict[int, list[int]]:
    ids = defaultdict(list)
    for lines in log.values():
        for epoch, _, _, batch in lines:
            ids[epoch] += batch
    return ids


@pytest.mark.parametrize("path", ["in_memory", "streamed"])
def test_two_fresh_runs_with_one_seed_train_on_the_same_batches_with_the_same_losses(ray_connected, tmp_path, path):
    # The two runs share the head at once: whatever the contention, the same order and losses. Their
    # workers take 2 of the head's 4 CPUs, leaving Ray Data's read tasks the rest (RAY_NOTES).
    cfg = tiny_config(data={"train": SYNTH.format(split="train", rows=ROWS),
                            "materialize_max_mb": 256 if path == "in_memory" else 0},
                      scaling={"num_workers": 2, "cpus_per_worker": 0.5}, run={"epochs": 2, "seed": 3})
    config = write_config(tmp_path / "run.yaml", cfg)
    procs = []
    for i in range(2):
        (tmp_path / f"ids{i}").mkdir()
        procs.append(subprocess.Popen(
            [str(BIN / "raydeep"), "train", str(config), "--address", ray_connected.address,
             "--run-dir", str(tmp_path / f"run{i}")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=ROOT, env={**os.environ, "RAYDEEP_SAMPLE_LOG": str(tmp_path / f"ids{i}")}))
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    a, b = (read_sample_log(tmp_path / f"ids{i}") for i in range(2))
    assert sorted(a) == [0, 1]
    assert a == b  # per rank, per step: the same sample ids in the same order, and the same loss (fp32, CPU)
    trained = [json.loads(x)["train/samples"] for x in (tmp_path / "run0" / "metrics.jsonl").read_text().splitlines()]
    epochs = by_epoch(a)
    for epoch, ids in epochs.items():  # every kept sample once per epoch
        assert len(ids) == len(set(ids)) == trained[epoch] >= ROWS - 10
    assert [x[3] for x in a[0] if x[0] == 0] != [x[3] for x in a[0] if x[0] == 1]  # a new order per epoch
