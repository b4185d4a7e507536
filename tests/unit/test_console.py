"""The per-epoch console line."""

from raydeep.trainers.console import epoch_line
from raydeep.trainers.tasks import TASKS

EPOCH = {"epoch": 2, "train/loss": 0.5, "val/loss": 0.25, "val/accuracy": 0.9, "val/macro_f1": 0.875,
         "val/balanced_accuracy": 0.8, "samples_per_s": 1234.4, "lr": 1e-3, "global_step": 60}


def line_of(m: dict) -> str:
    return epoch_line(m, 10, TASKS["classification"].quality(m))


def test_epoch_line_shows_the_share_of_the_epoch_spent_getting_batches():
    line = line_of({**EPOCH, "epoch_time_s": 4.0, "data_wait_s": 0.5})
    assert line == ("epoch 3/10  train loss 0.5000  val loss 0.2500  acc 0.9000  macro-F1 0.8750  bal-acc 0.8000  "
                    "1,234 samples/s (data 12%)  lr 1.00e-03  step 60")


def test_epoch_line_without_timing_fields_leaves_the_share_out():
    # metrics.jsonl written before data_wait_s existed (a resumed run keeps its old epochs)
    assert "samples/s  lr" in line_of(EPOCH)
    assert "(data" not in line_of({**EPOCH, "epoch_time_s": 0.0, "data_wait_s": 0.0})
