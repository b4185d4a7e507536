"""The worker loop's pure helpers: early stopping, the epoch seed and the per-worker step count."""

from raydeep.config import EarlyStoppingConfig
from raydeep.trainers.loop import EarlyStopping, epoch_seed
from raydeep.trainers.plan import Steps, steps_per_epoch
from tests.helpers import tiny_config


def test_early_stopping_counts_epochs_without_improvement():
    es = EarlyStopping(EarlyStoppingConfig(metric="val/macro_f1", mode="max", patience=2))
    seq = [0.5, 0.6, 0.6, 0.55, 0.7, 0.69, 0.68]
    stops = [es.update({"val/macro_f1": v}, e) for e, v in enumerate(seq)]
    # 0.6 at epoch 2 does not improve on 0.6 (strictly better is required); epoch 3 is the
    # second bad epoch in a row -> stop. Later values are evaluated as if training went on.
    assert stops[:4] == [False, False, False, True]
    assert es.best == 0.7 and es.best_epoch == 4


def test_early_stopping_min_mode_and_off_and_its_report():
    es = EarlyStopping(EarlyStoppingConfig(metric="val/loss", mode="min", patience=None))
    for e, v in enumerate([1.0, 0.8, 0.9, 0.95, 0.7]):
        m = {"val/loss": v}
        assert not es.update(m, e)
        assert m["best/val/loss"] == min([1.0, 0.8, 0.9, 0.95, 0.7][:e + 1])
    assert es.best == 0.7 and es.bad_epochs == 0


def test_early_stopping_state_round_trips_through_a_checkpoint():
    es = EarlyStopping(EarlyStoppingConfig(metric="val/loss", mode="min", patience=3))
    for e, v in enumerate([1.0, 0.8, 0.9]):
        es.update({"val/loss": v}, e)
    state = es.state_dict(next_epoch=3)
    assert state == {"epoch": 3, "best": 0.8, "best_epoch": 1, "bad_epochs": 1}  # the checkpoint's keys
    again = EarlyStopping(EarlyStoppingConfig(metric="val/loss", mode="min", patience=3))
    assert again.load_state_dict(state) == 3
    assert (again.best, again.best_epoch, again.bad_epochs) == (0.8, 1, 1)


def test_epoch_seed_differs_per_epoch_and_rank():
    seeds = {epoch_seed(7, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400
    assert epoch_seed(0, 0, 0) == 0 and epoch_seed(1, 2, 3) == 100_003 + 2 * 1_009 + 3


def test_steps_per_epoch_equal_split():
    # 278 rows over 2 workers -> 139 each -> ceil(139 / 16) = 9 micro-batches
    assert steps_per_epoch(278, 2, 16) == 9
    # 101 rows over 2 workers: the odd row is dropped to equalize -> 50 each -> 4 batches of 16
    assert steps_per_epoch(101, 2, 16) == 4
    assert steps_per_epoch(1, 2, 16) == 0


def test_steps_of_a_run_count_optimizer_steps_after_accumulation():
    from raydeep.config import validate

    cfg = validate(tiny_config(data={"batch_size": 16}, optim={"grad_accum": 4}, run={"epochs": 3}), "t.yaml")
    s = Steps.of(cfg, 278, 2)
    assert (s.per_epoch, s.optimizer_per_epoch, s.total) == (9, 2, 6)  # 27 micro-batches // 4


def test_checkpoint_clock_epochs_steps_and_minutes(monkeypatch):
    import torch

    from raydeep.config import validate
    from raydeep.trainers import loop
    from raydeep.trainers.loop import CheckpointClock

    def clock(every, step=0, rank=0):
        return CheckpointClock(validate(tiny_config(run={"epochs": 6, "checkpoint_every": every}), "t"), step, rank)

    cpu = torch.device("cpu")
    c = clock(2)  # as before: every 2nd epoch's end, the last, an early stop; never mid-epoch
    assert [c.epoch_due(e, False) for e in range(6)] == [False, True, False, True, False, True]
    assert c.epoch_due(0, True) and not any(c.mid_epoch_due(s, cpu) for s in range(1, 50))
    c = clock({"steps": 10})  # every 10th optimizer step, once (accumulation repeats a step), and every epoch's end
    assert [s for s in [1, 9, 10, 10, 11, 20, 20, 25, 30] if c.mid_epoch_due(s, cpu)] == [10, 20, 30]
    assert all(c.epoch_due(e, False) for e in range(6))
    assert not clock({"steps": 10}, step=20).mid_epoch_due(20, cpu)  # a resumed run's own checkpoint is not due again
    now = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    c, other = clock({"minutes": 1}), clock({"minutes": 1}, rank=1)
    assert not c.mid_epoch_due(1, cpu)
    now[0] += 61  # rank 0's clock decides (an all-reduce; here a world of one)
    assert c.mid_epoch_due(2, cpu) and not c.mid_epoch_due(3, cpu) and not other.mid_epoch_due(4, cpu)
