"""The worker's batcher (``datasets.batches``) and the shard reader's pure parts (``datasets.reader``),
without Ray: exact batches for hand-made block streams."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raydeep.datasets.batches import block_arrays, check_limits, column_array, shuffled_batches
from raydeep.datasets.reader import epoch_file_order, read_shard, rows_per_block
from raydeep.datasets.schema import pixels_array, tokens_array
from raydeep.errors import DataError


def blocks(*bounds: tuple[int, int]):
    return iter([{"id": np.arange(a, b), "x": np.arange(a, b).repeat(2).reshape(-1, 2) * 10} for a, b in bounds])


def ids(batches) -> list[list[int]]:
    out = []
    for b in batches:
        assert (b["x"] == b["id"][:, None] * 10).all()  # columns stay row-aligned
        out.append(b["id"].tolist())
    return out


def test_stream_order_cuts_exact_batches_across_blocks():
    assert ids(shuffled_batches(blocks((0, 3), (3, 7), (7, 9)), 4, 0, None)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert ids(shuffled_batches(blocks((0, 8)), 4, 0, None)) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # no empty tail
    assert ids(shuffled_batches(blocks(), 4, 0, None)) == []


def test_shuffle_window_hand_computed():
    # batch 2, window 2; blocks [0..3], [4..7]. Block 1: 4 rows, (4 - 2) // 2 = 1 batch goes out,
    # 2 rows are kept. Block 2: 2 kept + 4 new = 6 rows, (6 - 2) // 2 = 2 batches, 2 kept; the
    # end flushes them. The permutations are rng's, drawn in that order:
    rng = np.random.default_rng(0)
    p1 = rng.permutation(4)  # over block 1
    p2 = rng.permutation(6)  # over kept (indices 0-1) followed by block 2 (2-5)
    kept1 = [int(i) for i in p1[2:]]
    row2 = kept1 + [4, 5, 6, 7]
    expect = [[int(i) for i in p1[:2]], [row2[i] for i in p2[0:2]], [row2[i] for i in p2[2:4]],
              [row2[i] for i in p2[4:6]]]
    got = ids(shuffled_batches(blocks((0, 4), (4, 8)), 2, 2, np.random.default_rng(0)))
    assert got == expect
    assert sorted(sum(got, [])) == list(range(8))
    assert set(got[0]) <= {0, 1, 2, 3}  # a batch never holds rows from a block not yet read


def test_shuffle_is_exactly_once_reproducible_and_mixes_beyond_a_block():
    def run(seed):
        return ids(shuffled_batches(blocks((0, 100), (100, 250), (250, 251), (251, 400)), 32, 50,
                                    np.random.default_rng(seed)))

    a = run(1)
    assert sorted(sum(a, [])) == list(range(400))
    assert [len(b) for b in a] == [32] * 12 + [16]
    assert a == run(1) and a != run(2)
    assert sum(a, []) != list(range(400))
    # The window keeps >= 50 rows back: block 1's last rows can come out after block 2's first.
    order = sum(a, [])
    assert max(order.index(i) for i in range(100)) > min(order.index(i) for i in range(100, 250))


def test_blocks_smaller_than_the_window_are_gathered_before_a_round():
    # One-row blocks (wide rows), window 4, batch 2: a round waits for 4 new rows. Rows 0-3: a
    # round with nothing to give (4 - 4 < 2), all kept. Rows 4-7: 8 rows, (8 - 4) // 2 = 2
    # batches, 4 kept. Rows 8-9 at the end: 6 rows, 1 batch, then the 4 kept in 2 batches.
    rng = np.random.default_rng(5)
    p1, p2, p3 = rng.permutation(4), rng.permutation(8), rng.permutation(6)
    window2 = [int(i) for i in p1] + [4, 5, 6, 7]  # round 1 keeps all 4 rows in p1's order
    kept2 = [window2[i] for i in p2[4:]]
    window3 = kept2 + [8, 9]
    expect = [[window2[i] for i in p2[0:2]], [window2[i] for i in p2[2:4]], [window3[i] for i in p3[0:2]],
              [window3[i] for i in p3[2:4]], [window3[i] for i in p3[4:6]]]
    got = ids(shuffled_batches(blocks(*[(i, i + 1) for i in range(10)]), 2, 4, np.random.default_rng(5)))
    assert got == expect and sorted(sum(got, [])) == list(range(10))


def test_window_larger_than_the_shard_shuffles_it_whole():
    a = ids(shuffled_batches(blocks((0, 5), (5, 10)), 4, 1024, np.random.default_rng(3)))
    assert [len(b) for b in a] == [4, 4, 2] and sorted(sum(a, [])) == list(range(10))


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        list(shuffled_batches(blocks((0, 2)), 0, 0, None))


def test_column_arrays_from_every_feature_layout():
    tokens = np.arange(20, dtype=np.int32).reshape(5, 4)
    t = pa.table({"input_ids": tokens_array(tokens, 4), "label": pa.array(np.arange(5), pa.int64())}).slice(1, 3)
    arrays = block_arrays(t)  # a sliced list column: its offsets honoured
    assert arrays["input_ids"].tolist() == tokens[1:4].tolist() and arrays["input_ids"].dtype == np.int32
    assert arrays["label"].tolist() == [1, 2, 3] and arrays["label"].dtype == np.int64
    pixels = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert column_array(pixels_array(pixels, 3), "pixels").tolist() == pixels.tolist()  # fixed_size_list
    chunked = pa.chunked_array([tokens_array(tokens[:2], 4), tokens_array(tokens[2:], 4)])
    assert column_array(chunked, "input_ids").tolist() == tokens.tolist()
    from ray.data.extensions import ArrowTensorArray  # a cached split's fixed-shape tensor column

    assert column_array(ArrowTensorArray.from_numpy(tokens), "input_ids").tolist() == tokens.tolist()


@pytest.mark.parametrize("column, message", [
    (pa.array([[1, 2], [3]]), "column 'input_ids': rows hold 1 to 2 values; every row needs the same number"),
    (pa.array([[1, 2], None]), "column 'input_ids': a row is null"),
    (pa.array([[1, None]]), "column 'input_ids': a row holds a null value"),
])
def test_bad_feature_rows_name_the_column(column, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        column_array(column, "input_ids")


def test_epoch_file_order_is_a_seeded_permutation_per_execution():
    assert epoch_file_order(5, None, 3) == [0, 1, 2, 3, 4]
    orders = [epoch_file_order(8, 7, e) for e in range(4)]
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    assert orders == [epoch_file_order(8, 7, e) for e in range(4)]  # and the same again
    assert orders[2] == [int(i) for i in np.random.default_rng([7, 2]).permutation(8)]


def test_rows_per_block_hand_computed():
    assert rows_per_block(1000, 1000 * 512, 32 * 1024) == 64  # 512-byte rows, 32 KiB blocks
    assert rows_per_block(1000, 1000 * 512, 1 << 30) == 1000  # never more than the shard
    assert rows_per_block(1000, 1000 * 512, 100) == 1  # at least one row
    assert rows_per_block(0, 0, 100) == 1


def test_read_shard_streams_blocks_of_the_asked_rows(tmp_path):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"a": np.arange(10), "b": np.arange(10) * 2, "c": np.zeros(10)}), path, row_group_size=4)
    got = list(read_shard(str(path), pafs.LocalFileSystem(), ["a", "b"], 3))
    assert [t.num_rows for t in got] == [3, 3, 3, 1] and got[0].column_names == ["a", "b"]
    assert pa.concat_tables(got).column("b").to_pylist() == list(range(0, 20, 2))


def test_check_limits_names_split_column_and_value():
    arrays = {"input_ids": np.array([[0, 5], [7, 9]]), "label": np.array([0, 1])}
    assert check_limits(arrays, {"input_ids": (0, 10, "vocab")}, "data.train") is arrays
    assert check_limits(arrays, {}, "data.train") is arrays
    with pytest.raises(DataError, match=r"^data.val: column 'input_ids' holds 9, outside \[0, 8\) \(vocab\)$"):
        check_limits(arrays, {"input_ids": (0, 8, "vocab")}, "data.val")
    with pytest.raises(DataError, match="holds -1, outside"):
        check_limits({"input_ids": np.array([[-1, 3]])}, {"input_ids": (0, 8, "vocab")}, "data.train")
