"""The worker loop's pure helpers: early stopping and the per-worker step count."""

from raydeep.trainers.loop import steps_per_epoch, update_early_stopping


def test_early_stopping_counts_epochs_without_improvement():
    state = {"best": None, "best_epoch": None, "bad_epochs": 0}
    seq = [0.5, 0.6, 0.6, 0.55, 0.7, 0.69, 0.68]
    stops = [update_early_stopping(state, {"val/macro_f1": v}, "val/macro_f1", "max", 2, e)
             for e, v in enumerate(seq)]
    # 0.6 at epoch 2 does not improve on 0.6 (strictly better is required); epoch 3 is the
    # second bad epoch in a row -> stop. Later values are evaluated as if training went on.
    assert stops[:4] == [False, False, False, True]
    assert state["best"] == 0.7 and state["best_epoch"] == 4


def test_early_stopping_min_mode_and_off():
    state = {"best": None, "best_epoch": None, "bad_epochs": 0}
    for e, v in enumerate([1.0, 0.8, 0.9, 0.95, 0.7]):
        assert not update_early_stopping(state, {"val/loss": v}, "val/loss", "min", None, e)
    assert state["best"] == 0.7 and state["bad_epochs"] == 0


def test_steps_per_epoch_equal_split():
    # 278 rows over 2 workers -> 139 each -> ceil(139 / 16) = 9 micro-batches
    assert steps_per_epoch(278, 2, 16) == 9
    # 101 rows over 2 workers: the odd row is dropped to equalize -> 50 each -> 4 batches of 16
    assert steps_per_epoch(101, 2, 16) == 4
    assert steps_per_epoch(1, 2, 16) == 0
