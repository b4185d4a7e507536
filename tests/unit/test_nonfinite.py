"""NaN, inf and ragged rows: refused on the driver naming split, file, column and row; caught per
block where the driver did not read every row; never "better" in early stopping, plateau
scheduling or sweep ranking; a non-finite training loss stops or skips on every rank together."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydeep.config import EarlyStoppingConfig, RunSection
from raydeep.datasets.batches import block_arrays, torch_batches
from raydeep.datasets.memory import read_table
from raydeep.datasets.scan import check_rows, label_histogram, target_summary
from raydeep.datasets.schema import pixels_array
from raydeep.datasets.splits import open_split
from raydeep.datasets.streaming import ShardReader, checked_blocks
from raydeep.errors import DataError
from raydeep.sweeps.plan import base_raw
from raydeep.sweeps.results import collect_rows
from raydeep.trainers.loop import EarlyStopping, EpochMeter, finite_everywhere, nonfinite_line
from raydeep.trainers.schedules import PlateauSchedule, Schedule
from tests.unit.sweep_helpers import check as sweep_check


def numeric_table(x: np.ndarray, labels=None) -> pa.Table:
    """``features`` as list<float32> (not fixed-size: rows may be ragged) and an int64 ``label``."""
    labels = np.arange(len(x)) % 2 if labels is None else labels
    return pa.table({"features": pa.array([list(map(float, row)) for row in x], pa.list_(pa.float32())),
                     "label": pa.array(labels)})


def pixels(n: int = 8, width: int = 16, bad: tuple[int, int] | None = None, value: float = math.nan) -> np.ndarray:
    px = np.full((n, width), 0.5, dtype=np.float32)
    if bad is not None:
        px[bad] = value
    return px


def write(path: Path, table: pa.Table, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def pixels_split(d: Path, px: np.ndarray, row_group_size: int = 4) -> Path:
    return write(d / "a.parquet", pa.table({"pixels": pixels_array(px, px.shape[1]),
                                            "label": pa.array(np.arange(len(px)) % 2, pa.int64())}),
                 row_group_size)


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
# The driver: open_split's footer checks, the label scan's row check


def test_a_nan_pixel_is_refused_by_the_drivers_scan(tmp_path):
    """NaN does not show in parquet's statistics: open_split passes, the label scan (the driver's
    one pass before Ray starts) reads the feature too and names split, file, column and row."""
    path = pixels_split(tmp_path / "d", pixels(bad=(5, 3)))
    split = open_split(str(tmp_path / "d"), key="data.train")
    msg = one_line_error(label_histogram, split, 2)
    assert msg == (f"data.train: {path}: row group 1, row 1: 'pixels' holds nan (NaN or inf); "
                   "every pixel must be finite")
    assert not split.rows_checked


def test_a_nan_regression_feature_is_refused_by_the_target_scan(tmp_path):
    x = np.ones((6, 3))
    x[4, 2] = math.nan
    path = write(tmp_path / "d" / "a.parquet", numeric_table(x, labels=np.linspace(0, 1, 6)))
    split = open_split(str(tmp_path / "d"), key="data.val", label_kind="value")
    assert one_line_error(target_summary, split).startswith(
        f"data.val: {path}: row group 0, row 4: 'features' holds nan (NaN or inf)")


def test_an_inf_pixel_is_refused_from_the_footers(tmp_path):
    """inf shows in a row group's min/max statistics: open_split itself refuses it (reading that
    row group only, to name the row)."""
    path = pixels_split(tmp_path / "d", pixels(bad=(6, 0), value=-math.inf))
    assert one_line_error(open_split, str(tmp_path / "d"), key="data.train") == (
        f"data.train: {path}: row group 1, row 2: 'pixels' holds -inf (NaN or inf); every pixel must be finite")


def test_ragged_rows_are_refused_from_the_footers_naming_the_file(tmp_path):
    """A file whose rows hold 60 or 64 values, and a file whose rows all hold 60 while the split's
    hold 64: each row group's value count in the footer differs from rows x width."""
    ok = write(tmp_path / "d" / "p0.parquet", numeric_table(np.ones((4, 64))))
    rows = [np.ones(64)] * 3 + [np.ones(60)]
    bad = write(tmp_path / "d" / "p1.parquet", pa.table({
        "features": pa.array([list(r) for r in rows], pa.list_(pa.float32())), "label": pa.array([0, 1, 0, 1])}))
    assert one_line_error(open_split, str(tmp_path / "d"), key="data.train") == (
        f"data.train: {bad}: row group 0, row 3: 'features' holds 60 values, expected 64 (rows here hold 60 to 64); "
        "every row needs the same number of values")
    write(bad, numeric_table(np.ones((4, 60))))
    msg = one_line_error(open_split, str(tmp_path / "d"), key="data.train")
    assert msg.startswith(f"data.train: {bad}: row group 0, row 0: 'features' holds 60 values, expected 64 "
                          "(rows here hold 60)")
    assert str(ok) not in msg


def test_ragged_token_rows_are_refused_from_the_footers(tmp_path):
    ids = pa.array([[1, 2, 3, 4]] * 5 + [[1, 2, 3]], pa.list_(pa.int32()))
    path = write(tmp_path / "d" / "a.parquet", pa.table({"input_ids": ids, "label": pa.array([0] * 6)}))
    assert one_line_error(open_split, str(tmp_path / "d"), key="data.train").startswith(
        f"data.train: {path}: row group 0, row 5: 'input_ids' holds 3 values, expected 4")


def test_a_split_over_the_scan_budget_is_checked_as_it_is_read(tmp_path):
    """Past ``max_bytes`` the driver does not read the feature; the in-memory path checks each file
    as it reads it, and a streamed read task each block, naming the file and its row."""
    px = pixels(bad=(6, 1))
    path = pixels_split(tmp_path / "d", px)
    split = open_split(str(tmp_path / "d"), key="data.train")
    assert check_rows(split, max_bytes=1) is False and not split.rows_checked
    assert one_line_error(read_table, split, split.columns).startswith(
        f"data.train: {path}: row 6: 'pixels' holds nan")
    blocks = [pa.table({"pixels": pixels_array(px[i:i + 4], 16)}) for i in (0, 4)]
    gen = checked_blocks(iter(blocks), str(path), split.feature, "data.train")
    assert next(gen).num_rows == 4  # the first block is clean
    assert one_line_error(next, gen).startswith(f"data.train: {path}: row 6: 'pixels' holds nan")
    # The datasource's read tasks carry the check (without Ray running: a read task is a function).
    reader = ShardReader([str(path)], split.filesystem, split.columns, [8], [512.0], block_bytes=256,
                         check=(split.feature, "data.train"))
    with pytest.raises(DataError, match=f"data.train: {path}: row 6: 'pixels' holds nan"):
        for task in reader.get_read_tasks(1):
            list(task.read_fn())
    # A clean split is read once: the scan marks it, and the readers skip their checks.
    pixels_split(tmp_path / "d", pixels())
    split = open_split(str(tmp_path / "d"), key="data.train")
    assert check_rows(split) is True and split.rows_checked
    assert read_table(split, split.columns).num_rows == 8


# ---------------------------------------------------------------------------------------------
# The worker's batcher: every block against the plan's width


def test_a_block_of_the_wrong_width_fails_in_the_batcher():
    good = pa.table({"features": pa.array([[1.0] * 4] * 3, pa.list_(pa.float32())), "label": pa.array([0, 1, 0])})
    narrow = pa.table({"features": pa.array([[1.0] * 3] * 3, pa.list_(pa.float32())), "label": pa.array([0, 1, 0])})
    with pytest.raises(DataError, match=r"^data.train: column 'features': rows hold 3 values, expected 4 "):
        block_arrays(narrow, {"features": 4}, "data.train")
    widths: dict[str, int] = {}
    block_arrays(good, widths)  # no plan width: the first block's binds the later ones
    assert widths == {"features": 4}
    shard = SimpleNamespace(iter_batches=lambda **kw: iter([good, narrow]))
    with pytest.raises(DataError, match="data.val: column 'features': rows hold 3 values, expected 4"):
        list(torch_batches(shard, batch_size=2, where="data.val"))


# ---------------------------------------------------------------------------------------------
# NaN is never better


def test_early_stopping_never_keeps_nan_as_best():
    es = EarlyStopping(EarlyStoppingConfig(metric="val/loss", mode="min", patience=2))
    assert es.update({"val/loss": math.nan}, 0) is False
    assert es.best is None and es.bad_epochs == 1  # NaN first: no best yet, and not an improvement
    m = {"val/loss": 0.5}
    es.update(m, 1)
    assert (es.best, es.best_epoch, es.bad_epochs, m["best/val/loss"]) == (0.5, 1, 0, 0.5)
    assert es.update({"val/loss": math.nan}, 2) is False
    assert es.update({"val/loss": math.inf}, 3) is True  # two epochs without improvement: patience ran out
    assert es.best == 0.5 and es.best_epoch == 1
    es = EarlyStopping(EarlyStoppingConfig(metric="val/acc", mode="max"))
    es.update({"val/acc": math.inf}, 0)
    es.update({"val/acc": 0.7}, 1)
    assert es.best == 0.7  # an inf "best" would have stalled every later epoch too


@pytest.mark.parametrize("mode, bad", [("min", math.nan), ("min", -math.inf), ("max", math.nan), ("max", math.inf)])
def test_plateau_never_improves_on_a_nonfinite_metric(mode, bad):
    sched = Schedule(PlateauSchedule(mode=mode, patience=0, factor=0.5, cooldown=0, threshold=0.0,
                                     threshold_mode="abs", min_lr_ratio=0.1), peak_lr=0.1, total_steps=100,
                     steps_per_epoch=10)
    sched.observe(0, bad)
    assert sched.best is None and sched.scale == 0.5  # not an improvement: counted against patience
    sched.observe(1, 1.0)
    assert sched.best == 1.0
    sched.observe(2, bad)
    assert sched.best == 1.0 and sched.scale == 0.25


def test_sweep_ranking_never_ranks_nan_first():
    cfg = sweep_check({"optim.lr": {"loguniform": [1e-4, 1e-2]}}, metric="val/loss", mode="min")
    s = SimpleNamespace(cfg=cfg, context=SimpleNamespace(base=base_raw(cfg)))

    def result(trial_id: str, values: list[float]):
        df = pd.DataFrame({"epoch": list(range(len(values))), "val/loss": values})
        return SimpleNamespace(metrics={"trial_id": trial_id}, path=f"/x/{trial_id}", metrics_dataframe=df,
                               error=None, config={})

    rows = collect_rows(s, [result("diverged", [math.nan, math.nan]), result("ok", [0.9, 0.8]),
                            result("late_nan", [0.5, math.nan]), result("inf", [math.inf, -math.inf])])
    ranked = [(r.trial_id, r.rank, r.best) for r in rows]
    assert ranked == [("late_nan", 1, 0.5), ("ok", 2, 0.8), ("diverged", None, None), ("inf", None, None)]


@pytest.mark.parametrize("order", ["min", "max"])
def test_checkpoint_ranking_never_ranks_nan_best(order):
    """launch.py ranks checkpoints with Ray's CheckpointConfig by the epoch's metric; Ray's own key
    (which Train V2's checkpoint manager inherits) orders NaN below every number. A guard: if a Ray
    upgrade changed that, launch.py would need its own key."""
    from ray.train import CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult

    manager = _CheckpointManager(CheckpointConfig(checkpoint_score_attribute="val/loss", checkpoint_score_order=order))
    values = [0.5, math.nan, 0.2, 0.9]
    ranked = sorted(values, key=lambda v: manager._get_checkpoint_score(
        _TrainingResult(checkpoint=None, metrics={"val/loss": v})))  # worst first, best last
    assert math.isnan(ranked[0]) and ranked[-1] == (0.2 if order == "min" else 0.9)


# ---------------------------------------------------------------------------------------------
# The worker's step: one flag, the same decision on every rank


def test_finite_flag_and_skip_counting_without_a_process_group():
    assert finite_everywhere(torch.tensor(1.5)) is True
    assert finite_everywhere(torch.tensor(math.nan)) is False
    assert finite_everywhere(torch.tensor(-math.inf)) is False
    meter = EpochMeter(torch.device("cpu"))
    meter.step(torch.tensor(2.0), 4)
    meter.skip()
    s = meter.summary(world=1)
    assert (s["train/loss"], s["train/samples"], s["train/skipped_steps"], meter.steps) == (2.0, 4, 1, 2)
    only_skips = EpochMeter(torch.device("cpu"))
    only_skips.skip()
    assert math.isnan(only_skips.summary(world=1)["train/loss"])  # no step trained: no loss, not 0


def test_the_stop_line_names_epoch_and_step():
    cfg = SimpleNamespace(run=SimpleNamespace(epochs=3))
    line = nonfinite_line(torch.tensor(math.nan), 1, cfg, 4, 10, 14)
    assert line.startswith("the training loss is nan at epoch 2/3, step 4/10 (after 14 optimizer steps)")
    assert "\n" not in line and "skip_batch" in line
    assert "on another worker" in nonfinite_line(torch.tensor(0.5), 0, cfg, 1, 10, 0)
    assert RunSection().on_nonfinite_loss == "stop"
    assert RunSection(on_nonfinite_loss="skip_batch").on_nonfinite_loss == "skip_batch"
    with pytest.raises(ValueError):
        RunSection(on_nonfinite_loss="ignore")
