"""How a streamed split's shards are read, one shard at a time, with pyarrow: the work of one
``streaming.ShardReader`` read task, and what ``raydeep evaluate`` reads without Ray.

No Ray here: which files an epoch reads in which order (``epoch_file_order``), how many rows a
block holds (``rows_per_block``) and the reading itself (``read_shard``) are plain functions.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def epoch_file_order(n_files: int, seed: int | None, execution_idx: int) -> list[int]:
    """The order a dataset's ``execution_idx``-th execution reads its files in: as listed without a
    seed, else a permutation drawn from ``(seed, execution_idx)`` (the same on every machine)."""
    if seed is None:
        return list(range(n_files))
    return [int(i) for i in np.random.default_rng([int(seed), int(execution_idx)]).permutation(n_files)]


def rows_per_block(rows: int, nbytes: float, block_bytes: int) -> int:
    """Rows to read at a time so that a block holds at most ``block_bytes`` (at least one row)."""
    if rows <= 0 or nbytes <= 0:
        return max(rows, 1)
    return max(1, min(rows, int(block_bytes * rows // nbytes)))


def read_shard(path: str, filesystem: pafs.FileSystem, columns: list[str], batch_rows: int, start: int = 0,
               stop: int | None = None) -> Iterator[pa.Table]:
    """One shard's ``columns``, ``batch_rows`` rows at a time; with ``start``/``stop``, only rows
    ``[start, stop)``: row groups wholly outside are never read (the footer's row counts place them),
    the first one's rows before ``start`` are read and dropped."""
    with filesystem.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        md = pf.metadata
        stop = md.num_rows if stop is None else min(stop, md.num_rows)
        groups, at, pos = [], 0, None
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if at + n > start and at < stop:
                groups.append(g)
                pos = at if pos is None else pos
            at += n
        if not groups:
            return
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
            a, b = max(start - pos, 0), min(stop - pos, batch.num_rows)
            if b > a:
                yield pa.Table.from_batches([batch.slice(a, b - a)])
            pos += batch.num_rows
            if pos >= stop:
                return
