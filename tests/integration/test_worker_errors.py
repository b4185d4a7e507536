"""A data error only a worker can see ends the run in one line, with no retry (issue 19, item 5).

The driver reads a split's feature column in full before Ray starts only up to
``scan.SCAN_MAX_BYTES``; a larger streamed split gets the footer checks (a NaN is not in parquet's
statistics) and is checked block by block as its read tasks read it. Here that bound is 0 bytes,
so a few small files stand for a split too big to scan, and the NaN in the last file is seen by
whichever worker's read task reads it, with the other worker between its own batches.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raydeep.datasets.scan
from raydeep.cli import main
from tests.helpers import tiny_config, write_config

pytestmark = pytest.mark.ray

# A line Ray forwards from an actor's log ("(SplitCoordinator pid=123) ..."), colour codes or not:
# Ray Data's coordinator logs the read task's traceback there (console noise, not raydeep's output).
RAY_ACTOR_LOG = re.compile(r"^(\x1b\[\d+m)?\(\w+ pid=\d+")


def write_split(folder, files: int, rows: int, nan_at: tuple[int, int] | None = None) -> None:
    """``files`` parquet files of ``rows`` rows (3 float features, a float target); ``nan_at``:
    (file, row) whose first feature is NaN."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(files):
        x = rng.normal(size=(rows, 3)).astype(np.float32)
        y = x.sum(axis=1).astype(np.float64)  # finite targets: the driver scans the label column in full
        if nan_at and nan_at[0] == i:
            x[nan_at[1], 0] = np.nan
        table = pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3), "label": y})
        pq.write_table(table, folder / f"part-{i}.parquet")


def worker_actors(head) -> set[str]:
    """Every Ray Train worker the test head has started, alive or dead (a retry starts a new group)."""
    from ray.util.state import list_actors

    return {a.actor_id for a in list_actors(address=head.dashboard_url, limit=10_000,
                                            filters=[("class_name", "=", "RayTrainWorker")])}


def test_a_bad_block_only_a_worker_reads_ends_the_run_in_one_line_without_a_retry(
        ray_connected, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(raydeep.datasets.scan, "SCAN_MAX_BYTES", 0)  # the driver leaves the rows to the read tasks
    write_split(tmp_path / "train", files=4, rows=60, nan_at=(3, 37))
    write_split(tmp_path / "val", files=1, rows=40)
    cfg = tiny_config(data={"train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "batch_size": 10,
                            "shuffle_buffer": 0, "materialize_max_mb": 0},  # streamed: Ray Data read tasks
                      optim={"name": "sgd", "lr": 1.0e-2, "weight_decay": 0.0},
                      deepspeed={"zero_stage": 2}, run={"epochs": 2, "seed": 0, "max_failures": 1})
    cfg["model"] = {"kind": "linear", "task": "regression"}
    before = worker_actors(ray_connected)
    t0 = time.perf_counter()
    code = main(["train", str(write_config(tmp_path / "run.yaml", cfg)), "--run-dir", str(tmp_path / "run"),
                 "--address", ray_connected.address])
    wall = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert code == 2, (out, err)  # a DataError, found by a worker: the exit code of data errors
    own = [x for x in (out + err).splitlines() if not RAY_ACTOR_LOG.match(x)]  # not Ray's forwarded actor logs
    errors = [x for x in own if x.startswith("raydeep: error:")]
    assert len(errors) == 1, own
    line = errors[0]
    for needle in (f"data.train: {tmp_path / 'train' / 'part-3.parquet'}: row 37: ", "'features' holds nan"):
        assert needle in line, (needle, line)
    assert not any("Traceback" in x or "RayTaskError" in x for x in own), own
    assert not (tmp_path / "run" / "summary.json").exists()
    started = worker_actors(ray_connected) - before
    assert len(started) == 2, f"{len(started)} workers started: a retry started a second group"  # one group of 2
    with capsys.disabled():
        print(f"\n{line}\ntrain ended in {wall:.1f} s, start-up included, with one group of 2 workers (no retry)")
