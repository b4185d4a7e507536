"""Splits held in memory and cut per worker without Ray Data (datasets/memory.py)."""

import numpy as np
import pyarrow as pa
import pytest

from raydeep.datasets import memory
from raydeep.datasets.memory import InMemorySplit


def table(n: int) -> pa.Table:
    return pa.table({"input_ids": [[i, i + 1] for i in range(n)], "label": list(range(n))})


def epoch_labels(shard) -> list[int]:
    return [v for t in shard.iter_batches(batch_size=None, batch_format="pyarrow") for v in t["label"].to_pylist()]


def test_every_row_reaches_exactly_one_rank_per_epoch_and_ranks_are_equal():
    split = InMemorySplit(table(11), seed=3)
    shards = [split.shard(r, 3) for r in range(3)]
    for _ in range(4):  # epochs
        seen = [epoch_labels(s) for s in shards]
        assert [len(x) for x in seen] == [3, 3, 3]  # 11 // 3 each; 2 rows dropped to keep ranks equal
        flat = sum(seen, [])
        assert len(set(flat)) == 9 and set(flat) <= set(range(11))
    # rank 0's rows of epoch e are rows 0, 3, 6 of the permutation drawn from (seed, e)
    order = np.random.default_rng([3, 4]).permutation(11)
    assert epoch_labels(split.shard(0, 3, first_epoch=4)) == order[:9][0::3].tolist()


def test_rows_move_between_epochs_and_ranks_and_a_resumed_shard_replays_its_epoch():
    split = InMemorySplit(table(64), seed=0)
    s = split.shard(1, 2)
    epochs = [epoch_labels(s) for _ in range(3)]
    assert epochs[0] != epochs[1] and set(epochs[0]) != set(epochs[1])  # new rows for rank 1, new order
    assert epoch_labels(split.shard(1, 2, first_epoch=2)) == epochs[2]
    assert epoch_labels(InMemorySplit(table(64), seed=1).shard(1, 2)) != epochs[0]  # the seed matters


def test_an_unsplit_split_gives_every_worker_all_rows_in_file_order_each_epoch():
    split = InMemorySplit(table(10))
    for r in range(2):
        s = split.shard(r, 2, split=False)
        assert epoch_labels(s) == list(range(10)) == epoch_labels(s)


def test_blocks_are_bounded_in_bytes_and_keep_the_columns(monkeypatch):
    monkeypatch.setattr(memory, "BLOCK_BYTES", 100)
    t = table(50)
    s = InMemorySplit(t, seed=1).shard(0, 1)
    blocks = list(s.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert len(blocks) > 1 and sum(b.num_rows for b in blocks) == 50
    assert all(b.schema == t.schema for b in blocks)
    assert all(row["input_ids"] == [row["label"], row["label"] + 1] for b in blocks for row in b.to_pylist())


def test_only_whole_pyarrow_blocks_are_offered():
    s = InMemorySplit(table(4)).shard()
    with pytest.raises(ValueError, match="whole pyarrow blocks"):
        next(s.iter_batches(batch_size=2, batch_format="pyarrow"))
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        InMemorySplit(table(4)).shard(2, 2)


def test_an_empty_split_yields_nothing():
    assert epoch_labels(InMemorySplit(table(0), seed=0).shard(0, 2)) == []
    assert epoch_labels(InMemorySplit(table(0)).shard(0, 2, split=False)) == []


def test_resampling_draws_new_rows_every_epoch_with_the_expected_class_counts():
    from raydeep.trainers.class_weights import expected_sampled_counts, sampling_rates

    counts = [60, 30, 10]
    labels = np.repeat(np.arange(3), counts)
    t = pa.table({"input_ids": [[i, i] for i in range(100)], "label": labels})
    rates = sampling_rates(counts, "undersample")  # 1/6, 1/3, 1: class 0 keeps 10 of its 60 rows
    expected = expected_sampled_counts(counts, "undersample")
    split = InMemorySplit(t, seed=5, rates=rates)
    shards = [split.shard(r, 2) for r in range(2)]

    def drawn(shards) -> list[dict]:  # one epoch's rows over both ranks
        return [row for s in shards for b in s.iter_batches(batch_size=None, batch_format="pyarrow")
                for row in b.to_pylist()]

    epochs = []
    for _ in range(3):
        seen = drawn(shards)
        assert np.bincount([r["label"] for r in seen], minlength=3).tolist() == expected == [10, 10, 10]
        assert all(labels[r["input_ids"][0]] == r["label"] for r in seen)  # rows stay whole
        epochs.append(sorted(r["input_ids"][0] for r in seen))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # a new draw each epoch
    resumed = drawn([split.shard(r, 2, first_epoch=1) for r in range(2)])
    assert sorted(r["input_ids"][0] for r in resumed) == epochs[1]  # a resumed run replays epoch 1's draw
    with pytest.raises(ValueError, match="pass seed with rates"):
        InMemorySplit(t, rates=rates)
