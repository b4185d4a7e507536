"""TensorBoard event files, read back with TensorBoard's own reader (no Ray)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raydeep.trainers.tracking import EventLog, scalars, trial_dirname  # noqa: E402
from tests.helpers import read_tensorboard  # noqa: E402


def test_epochs_text_and_an_image_read_back_at_their_optimizer_steps(tmp_path):
    png = tmp_path / "confusion.png"
    fig = plt.figure(figsize=(2, 1.5), dpi=50)
    plt.imshow([[3, 1], [0, 4]])
    fig.savefig(png)
    plt.close(fig)

    log = EventLog(tmp_path / "tb")
    log.text("config", "model:\n  kind: transformer", fence="yaml")
    log.epoch({"epoch": 0, "global_step": 12, "train/loss": 1.25, "val/macro_f1": 0.5, "stopped_early": False,
               "val/confusion": [[1, 2], [3, 4]], "lr": 1e-3})
    log.epoch({"epoch": 1, "global_step": 24, "train/loss": float("nan"), "val/macro_f1": 0.75})
    log.image("confusion_matrix", png, step=24)
    log.image("missing", tmp_path / "nope.png")  # a plot the run did not draw: nothing, no error
    log.close()

    got = read_tensorboard(tmp_path / "tb")
    assert got["scalars"]["val/macro_f1"] == [(12, 0.5), (24, 0.75)]
    assert got["scalars"]["train/loss"][0] == (12, 1.25) and math.isnan(got["scalars"]["train/loss"][1][1])
    assert got["scalars"]["epoch"] == [(12, 0.0), (24, 1.0)] and got["scalars"]["lr"] == [(12, pytest_approx(1e-3))]
    assert "stopped_early" not in got["scalars"] and "val/confusion" not in got["scalars"]
    assert got["text"]["config"] == "```yaml\nmodel:\n  kind: transformer\n```"
    assert got["images"] == {"confusion_matrix": (100, 75)}


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-6)


def test_scalars_keep_numbers_only():
    assert scalars({"a": 1, "b": 2.5, "c": True, "d": None, "e": "x", "f": [1], "global_step": 3}) == {"a": 1.0, "b": 2.5}


def test_trial_dirname_names_the_trial_and_its_parameters():
    assert trial_dirname("a1b2_00003", {"optim.lr": 0.0012345, "imbalance.weighting": "inverse"}) == \
        "a1b2_00003,weighting=inverse,lr=0.00123"
