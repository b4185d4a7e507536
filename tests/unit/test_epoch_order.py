"""An epoch's sample order (``datasets.epoch_order``): the per-rank assignment of a streamed split,
skipping a consumed prefix by row counts, and exact resumption of a rank's batches. Pure: no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from raydeep.datasets.epoch_order import EpochOrder, Position, Range, assign_ranges, chunks, skip_rows

ROWS = [7, 0, 13, 5, 21, 1, 9]  # an empty file and a one-row file among them


def global_ids(ranges: list[Range]) -> list[tuple[int, int]]:
    return [(r.file, i) for r in ranges for i in range(r.start, r.stop)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_assignment_deals_every_kept_row_once_in_equal_runs(world):
    ranks, trimmed = assign_ranges(ROWS, seed=5, epoch=2, world=world)
    assert len(ranks) == world and trimmed == sum(ROWS) % world
    per_rank = [global_ids(r) for r in ranks]
    assert {len(ids) for ids in per_rank} == {sum(ROWS) // world}  # equal
    union = sum(per_rank, [])
    assert len(union) == len(set(union)) == sum(ROWS) - trimmed  # exactly once
    assert all(r.stop > r.start for rs in ranks for r in rs)  # no empty ranges
    assert (ranks, trimmed) == assign_ranges(ROWS, seed=5, epoch=2, world=world)  # deterministic


def test_assignment_follows_the_epochs_file_order_and_differs_per_epoch_and_seed():
    a = assign_ranges(ROWS, seed=5, epoch=0, world=2)[0]
    assert a != assign_ranges(ROWS, seed=5, epoch=1, world=2)[0]
    assert a != assign_ranges(ROWS, seed=6, epoch=0, world=2)[0]
    # Without a seed: the files as listed, rank 0 the first half of the rows, rank 1 the second.
    ranks, trimmed = assign_ranges([4, 3, 2], seed=None, epoch=0, world=2)
    assert ranks == [[Range(0, 0, 4)], [Range(1, 0, 3), Range(2, 0, 1)]] and trimmed == 1


def test_more_ranks_than_rows_trims_everything():
    ranks, trimmed = assign_ranges([1, 1], seed=0, epoch=0, world=3)
    assert ranks == [[], [], []] and trimmed == 2


def test_skip_rows_drops_a_prefix_by_counts():
    rs = [Range(3, 0, 4), Range(1, 2, 5), Range(0, 0, 2)]
    assert skip_rows(rs, 0) == rs
    assert skip_rows(rs, 4) == rs[1:]
    assert skip_rows(rs, 5) == [Range(1, 3, 5), Range(0, 0, 2)]
    assert skip_rows(rs, 9) == []
    ids = global_ids(rs)
    for n in range(10):
        assert global_ids(skip_rows(rs, n)) == ids[n:]


def source(ids: np.ndarray, cuts: list[int]):
    """``ids`` as a stream of blocks cut at ``cuts``, each row's label ``id % 3``."""
    edges = [0, *cuts, len(ids)]
    return iter([{"id": ids[a:b], "label": ids[a:b] % 3} for a, b in zip(edges, edges[1:]) if b > a])


def test_chunks_are_exact_whatever_the_blocks():
    ids = np.arange(23)
    for cuts in ([], [1, 2, 3], [10, 11], [5, 22]):
        got = [c["id"].tolist() for c in chunks(source(ids, cuts), 5)]
        assert got == [list(range(i, min(i + 5, 23))) for i in range(0, 23, 5)]


@pytest.mark.parametrize("rates", [None, [0.5, 1.0, 2.5]])
def test_a_rank_resumed_at_any_batch_continues_at_the_exact_next_sample(rates):
    ids = np.arange(103)
    order = dict(batch_size=8, chunk_rows=20, key=(7, 3, 1), rates=rates)
    full = EpochOrder(**order)
    positions, batches = [], []
    for b in full.batches(source(ids, [13, 50, 51])):
        batches.append(b["id"].tolist())
        positions.append(full.position)
    flat = sum(batches, [])
    if rates is None:
        assert sorted(flat) == ids.tolist()  # every row once
    assert flat != sorted(flat)  # shuffled
    assert all(len(b) == 8 for b in batches[:-1])
    assert positions[-1].samples == len(flat) and positions[-1].batches == len(batches)
    for k, p in enumerate(positions[:-1]):
        # The resumed source starts at the saved chunk, cut into other blocks: skipped by count.
        rest = ids[p.chunk * 20:]
        resumed = EpochOrder(**order, start=p)
        again = [b["id"].tolist() for b in resumed.batches(source(rest, [3, 40]))]
        assert again == batches[k + 1:], k
        assert resumed.position == positions[-1]


def test_the_order_is_a_function_of_the_key_alone():
    ids = np.arange(50)

    def run(key, cuts):
        return [b["id"].tolist() for b in EpochOrder(batch_size=4, chunk_rows=16, key=key).batches(source(ids, cuts))]

    a = run((1, 0, 0), [7])
    assert a == run((1, 0, 0), [30, 31])  # block boundaries do not matter
    assert a != run((1, 1, 0), [7]) and a != run((2, 0, 0), [7]) and a != run((1, 0, 1), [7])
    plain = EpochOrder(batch_size=4, chunk_rows=16, key=(1, 0, 0), shuffle=False).batches(source(ids, [7]))
    assert sum([b["id"].tolist() for b in plain], []) == ids.tolist()


def test_position_round_trips():
    p = Position(epoch=2, chunk=3, offset=4, samples=50, batches=7)
    assert Position(**p.to_dict()) == p


def test_read_shard_reads_only_the_row_groups_a_range_needs(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from raydeep.datasets.reader import read_shard

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": np.arange(100)}), path, row_group_size=10)  # 10 row groups of 10
    asked = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        asked.append(list(row_groups))
        return real(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    fs = pafs.LocalFileSystem()
    for start, stop, batch in [(0, 100, 7), (35, 62, 4), (37, 38, 100), (90, 100, 3), (0, 10, 10)]:
        got = [b.column("id").to_pylist() for b in read_shard(str(path), fs, ["id"], batch, start, stop)]
        assert sum(got, []) == list(range(start, stop))
        assert all(0 < len(b) <= batch for b in got)
        assert asked[-1] == list(range(start // 10, (stop - 1) // 10 + 1))  # the groups before start: unread
    assert list(read_shard(str(path), fs, ["id"], 10, 100, 100)) == []


# --- elastic resume --------------------------------------------------------------------------


def rank_order(ids: np.ndarray, rank: int, chunk_rows: int, shuffle: bool = True) -> list[int]:
    """Rank ``rank``'s whole epoch order of its source ``ids`` (EpochOrder, seed 3, epoch 1)."""
    order = EpochOrder(batch_size=1000, chunk_rows=chunk_rows, key=(3, 1, rank), shuffle=shuffle)
    return [int(i) for b in order.batches(iter([{"id": ids}])) for i in b["id"]]


@pytest.mark.parametrize("old,new", [(2, 1), (3, 2), (1, 3), (2, 2), (4, 3)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_an_elastic_resume_trains_every_remaining_sample_once_in_the_old_ranks_orders(old, new, shuffle):
    from raydeep.datasets.epoch_order import PlannedOrder, deal_remainder

    C, B = 8, 5
    rows = 61
    sources = [np.arange(r * 1000, r * 1000 + rows) for r in range(old)]  # each old rank's source rows
    full = [rank_order(s, r, C, shuffle) for r, s in enumerate(sources)]
    # The old ranks took 3 batches each (lockstep), checkpointed, and failed: 15 samples each.
    taken = 3 * B
    befores, lefts = [], []
    for r, s in enumerate(sources):
        order = EpochOrder(batch_size=B, chunk_rows=C, key=(3, 1, r), shuffle=shuffle, source_rows=rows)
        it = order.batches(iter([{"id": s}]))
        befores += [int(i) for _ in range(3) for i in next(it)["id"]]
        lefts.append(order.left())
    assert all(p[0].start == taken and p[0].stop == rows for p in lefts)
    pieces, trimmed = deal_remainder(lefts, new)
    assert trimmed == (old * (rows - taken)) % new
    seen = []
    for r in range(new):
        planned = PlannedOrder(pieces=pieces[r], batch_size=B, chunk_rows=C, seed=3, epoch=1, shuffle=shuffle, world=old)
        mine = [int(i) for b in planned.batches(planned.samples(lambda o, skip: iter([{"id": sources[o][skip:]}])))
                for i in b["id"]]
        assert len(mine) == (old * (rows - taken)) // new and planned.taken == len(mine)  # equal shares
        seen += mine
    remaining = [i for r in range(old) for i in full[r][taken:]]  # the old ranks' own orders, after the checkpoint
    assert seen == remaining[:len(remaining) - trimmed]  # exactly those, in that order, none twice, none before
    assert not set(seen) & set(befores)


def test_an_elastic_deal_of_a_dealt_epoch_carries_on_from_the_pieces_left():
    from raydeep.datasets.epoch_order import Piece, deal_remainder, remaining

    first, trimmed = deal_remainder([[Piece(0, 10, 30)], [Piece(1, 10, 30)]], 3)  # 40 samples over 3: 13 each
    assert trimmed == 1 and [sum(p.samples for p in r) for r in first] == [13, 13, 13]
    assert first[1] == [Piece(0, 23, 30), Piece(1, 10, 16)]
    left = [remaining(r, 5) for r in first]  # 5 taken by each of the 3, then a failure: 2 more workers
    again, trimmed = deal_remainder(left, 2)
    assert trimmed == 0 and again == [[Piece(0, 15, 23), Piece(0, 28, 30), Piece(1, 10, 12)],
                                      [Piece(1, 12, 16), Piece(1, 21, 29)]]
    assert deal_remainder([[Piece(0, 5, 5)], []], 2) == ([[], []], 0)  # nothing left


def test_a_resampled_order_cannot_be_dealt():
    order = EpochOrder(batch_size=4, chunk_rows=8, key=(0, 0, 1), rates=[1.0, 2.0], source_rows=40)
    assert order.left() is None
    assert EpochOrder(batch_size=4, chunk_rows=8, key=(0, 0, 1), source_rows=40).left()[0].rank == 1
