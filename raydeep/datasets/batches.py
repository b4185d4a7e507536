"""What a Ray Train worker makes of its dataset shard: torch batches, block by block, shuffled.

``torch_batches`` replaces ``DataIterator.iter_torch_batches`` in the training loop. Ray's
version cuts every batch out of its blocks in Ray Data's batcher and stacks a list column's
rows one by one, which held a worker to a third of pyarrow's rate (benchmarks/BENCHMARKS.md,
"Closing the gap"). Here Ray hands over whole blocks
(``iter_batches(batch_size=None, batch_format="pyarrow")``), each block's columns become numpy
arrays in one step (a list column: one flatten and reshape, no copy), and batches are gathered
from them with one fancy index each.

The training split's batches are cut by ``epoch_order.EpochOrder`` (``order``): chunks of the
rank's rows permuted from (seed, epoch, rank, chunk), with a position a resumed rank starts at.
Without it (tests, benchmarks), the shuffle window below.

Shuffle window: with ``shuffle_buffer`` > 0 the rows of each block are drawn in a random order
together with the rows kept back from the blocks before it; at least ``shuffle_buffer`` rows
are kept back to mix with the next block, and the last ones go out when the shard ends. So a
batch mixes rows from a whole block (up to ``data.block_mb``) and beyond, never fewer than
``shuffle_buffer`` rows, and the order is a function of ``seed`` and the blocks' arrival order.
Blocks smaller than the window (wide rows) are gathered until they fill it before a round.
Every row of the shard is yielded exactly once; batches are ``batch_size`` rows but the last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydeep.datasets.epoch_order import EpochOrder, PlannedOrder
from raydeep.errors import DataError

if TYPE_CHECKING:
    import torch
    from ray.data import DataIterator

Arrays = dict[str, np.ndarray]


def column_array(column: pa.ChunkedArray | pa.Array, name: str, expected: int | None = None) -> np.ndarray:
    """One block's column as numpy: ``[rows]`` for scalars, ``[rows, width]`` for a list column
    whose rows all have ``width`` values (the data contract; ``expected``: and that must be it),
    ``[rows, *shape]`` for Ray's fixed-shape tensor column. Zero-copy where arrow's buffers allow."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    t = arr.type
    if isinstance(t, pa.ExtensionType):  # ray.data's ArrowTensorType (a cached split)
        return np.asarray(arr.to_numpy())
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if arr.null_count:
            raise DataError(f"column {name!r}: a row is null; every row needs the same number of values")
        n = len(arr)
        if pa.types.is_fixed_size_list(t):
            width = t.list_size
        else:
            lengths = pc.min_max(pc.list_value_length(arr))
            lo, hi = lengths["min"].as_py(), lengths["max"].as_py()
            if n and lo != hi:
                raise DataError(f"column {name!r}: rows hold {lo} to {hi} values; every row needs the same number")
            width = lo or 0
        if n and expected is not None and width != expected:
            raise DataError(f"column {name!r}: rows hold {width} values, expected {expected} (the split's width); "
                            "every row needs the same number")
        flat = pc.list_flatten(arr)  # honours offsets and slices
        if flat.null_count:
            raise DataError(f"column {name!r}: a row holds a null value")
        return flat.to_numpy(zero_copy_only=False).reshape(n, width)
    if arr.null_count:
        raise DataError(f"column {name!r}: {arr.null_count} null value(s)")
    return arr.to_numpy(zero_copy_only=False)


def block_arrays(block: pa.Table, widths: dict[str, int] | None = None, where: str = "") -> Arrays:
    """The block's columns as numpy (``column_array``). ``widths``: each list column's width, the
    plan's where known; a column it lacks takes the first block's, so every later block must match."""
    try:
        arrays = {name: column_array(block.column(name), name, (widths or {}).get(name)) for name in block.column_names}
    except DataError as exc:
        raise DataError(f"{where}: {exc}" if where else str(exc)) from None
    if widths is not None:
        for name, values in arrays.items():
            if values.ndim == 2:
                widths.setdefault(name, values.shape[1])
    return arrays


def _rows(arrays: Arrays) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0


def _take(kept: Arrays | None, block: Arrays, index: np.ndarray) -> Arrays:
    """Rows ``index`` of ``kept`` followed by ``block`` (as if concatenated), without copying the block."""
    if not kept:
        return {k: v[index] for k, v in block.items()}
    m = _rows(kept)
    from_kept = index < m
    out = {}
    for k, v in block.items():
        dst = np.empty((len(index),) + v.shape[1:], dtype=np.result_type(kept[k].dtype, v.dtype))
        dst[from_kept] = kept[k][index[from_kept]]
        dst[~from_kept] = v[index[~from_kept] - m]
        out[k] = dst
    return out


def _concat(blocks: list[Arrays]) -> Arrays:
    return blocks[0] if len(blocks) == 1 else {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _round(kept: Arrays | None, block: Arrays, batch_size: int, shuffle_buffer: int,
           rng: np.random.Generator | None) -> Iterator[Arrays]:
    """Yield the full batches ``kept`` + ``block`` allow (keeping ``shuffle_buffer`` rows back when
    shuffling); return what is kept for the next round."""
    total = (_rows(kept) if kept else 0) + _rows(block)
    if rng is not None:
        order = rng.permutation(total)
        out = max(0, (total - shuffle_buffer) // batch_size) * batch_size
    else:
        order = np.arange(total)
        out = total // batch_size * batch_size
    for i in range(0, out, batch_size):
        yield _take(kept, block, order[i:i + batch_size])
    return _take(kept, block, order[out:]) if out < total else None


def shuffled_batches(blocks: Iterator[Arrays], batch_size: int, shuffle_buffer: int,
                     rng: np.random.Generator | None) -> Iterator[Arrays]:
    """Batches of ``batch_size`` rows (the last one shorter) from a stream of blocks; with ``rng``,
    through the shuffle window of the module doc, else in stream order. Pure: no Ray, no torch.

    When shuffling, blocks smaller than ``max(shuffle_buffer, batch_size)`` rows (wide rows:
    images, long sequences) are gathered until they reach it before a round, so the kept-back
    rows are copied about once per row that goes out, not once per block.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shuffle_buffer = max(shuffle_buffer, 0)
    kept: Arrays | None = None  # rows held back: the shuffle window's carry-over, or a partial batch
    waiting: list[Arrays] = []
    waiting_rows = 0
    for block in blocks:
        waiting.append(block)
        waiting_rows += _rows(block)
        if rng is not None and waiting_rows < max(shuffle_buffer, batch_size):
            continue
        kept = yield from _round(kept, _concat(waiting), batch_size, shuffle_buffer, rng)
        waiting, waiting_rows = [], 0
    if waiting:
        kept = yield from _round(kept, _concat(waiting), batch_size, shuffle_buffer, rng)
    if kept:
        for i in range(0, _rows(kept), batch_size):
            yield {k: v[i:i + batch_size] for k, v in kept.items()}


def check_limits(arrays: Arrays, limits: dict[str, tuple[int, int, str]], where: str) -> Arrays:
    """Raise a DataError naming ``where``, the column and the value when a column of ``limits``
    (``name -> (low, high, what)``) holds a value outside ``[low, high)``; else return ``arrays``.
    One min and max per block: a token id past the model's vocabulary fails here, in one line,
    instead of as an IndexError deep inside the embedding."""
    for name, (low, high, what) in limits.items():
        values = arrays.get(name)
        if values is None or values.size == 0:
            continue
        lo, hi = values.min(), values.max()
        if lo < low or hi >= high:
            bad = (lo if lo < low else hi).item()
            raise DataError(f"{where}: column {name!r} holds {bad}, outside [{low}, {high}) ({what})")
    return arrays


def torch_batches(shard: DataIterator | Iterable[pa.Table], *, batch_size: int, shuffle_buffer: int = 0,
                  seed: int | None = None, device: Any = None, prefetch_blocks: int = 1,
                  limits: dict[str, tuple[int, int, str]] | None = None, where: str = "data",
                  widths: dict[str, int] | None = None, order: EpochOrder | PlannedOrder | None = None
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """The worker's batches of one epoch of ``shard`` (a Ray ``DataIterator``, or pyarrow blocks) as
    torch tensors on ``device`` (module doc).

    ``order``: batches cut by an ``epoch_order.EpochOrder`` (the training split: chunks permuted
    from (seed, epoch, rank), and a position to resume at), or by a ``PlannedOrder`` (an epoch
    resumed on another number of workers; ``shard`` is then ``(old_rank, skip) -> blocks``). Without it, ``shuffle_buffer`` 0 keeps
    the stream's order; otherwise rows are mixed through the window,
    reproducibly from ``seed`` for a given block order. ``limits`` bounds columns' values and
    ``widths`` fixes list columns' widths (the plan's), both checked once per block (``check_limits``,
    ``block_arrays``; ``where`` names the split in their messages).
    """
    import torch  # deferred: the driver imports this module's siblings without torch; only workers batch

    rng = np.random.default_rng(seed) if shuffle_buffer > 0 else None
    widths = dict(widths or {})  # block_arrays adds the first block's widths of the columns it lacks
    def arrays(source: Iterable[pa.Table]) -> Iterator[Arrays]:
        return (check_limits(block_arrays(b, widths, where), limits or {}, where) for b in source if b.num_rows)

    if isinstance(order, PlannedOrder):  # an elastic resume: shard(old_rank, skip) is an old rank's rows
        batches = order.batches(order.samples(lambda rank, skip: arrays(shard(rank, skip))))
    else:
        source = (shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_blocks)
                  if hasattr(shard, "iter_batches") else shard)
        batches = (order.batches(arrays(source)) if order is not None
                   else shuffled_batches(arrays(source), batch_size, shuffle_buffer, rng))
    to_gpu = device is not None and torch.device(device).type == "cuda"
    for batch in batches:
        # Every batch array is a fresh gather (``_take``) or a row slice of one: writable and
        # contiguous, never a view into Ray's read-only block.
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        if to_gpu:  # page-locked host memory: the copy runs asynchronously, beside the compute
            tensors = {k: t.pin_memory().to(device, non_blocking=True) for k, t in tensors.items()}
        elif device is not None:
            tensors = {k: t.to(device) for k, t in tensors.items()}
        yield tensors
