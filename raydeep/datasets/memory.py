"""Small splits held in Ray's object store and cut per worker, with no Ray Data in the run.

A split that fits in memory (``data.materialize_max_mb``) is read once on the driver with
pyarrow and put into the object store as one table; every worker maps it (zero-copy on its
node) and takes its own rows each epoch. Ray Data's machinery (a split coordinator, stats and
autoscaling actors, an executor per epoch, prefetch threads) cost small runs a measurable share
of their training rate (benchmarks/BENCHMARKS.md, "Where the rest goes"). Large splits stream
(``streaming.to_ray_dataset``).

Each epoch of a training split is drawn from ``(seed, epoch)``: with class ``rates``, the
resampled rows first (``resample.resampled_rows``), then one permutation of them, of which rank r
of w takes every w-th row, ``rows // w`` rows (the rest are dropped to keep ranks equal, as
``streaming_split(equal=True)`` does). So every drawn row reaches exactly one worker, rows move
between workers from epoch to epoch, and a run resumed at epoch k sees epoch k's rows. An
unsplit split (validation) gives every worker all rows in file order.

``InMemoryShard.epoch_blocks`` is one epoch of a training shard from a given row on (a
mid-epoch resume), as ``streaming.StreamedShard.epoch_blocks`` is for a streamed one;
``iter_batches`` has the signature ``batches.torch_batches`` calls on a Ray ``DataIterator``
(validation).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydeep.datasets.epoch_order import SAMPLE_ID
from raydeep.datasets.resample import resampled_rows
from raydeep.datasets.scan import fits_in_memory
from raydeep.datasets.schema import LABEL_COLUMN
from raydeep.datasets.splits import ParquetSplit, check_feature_rows

BLOCK_BYTES = 8 << 20  # rows handed to the batcher at a time: bounds each epoch's copy of a shard


class InMemorySplit:
    """A table (or an object-store reference to one) that workers shard; small and picklable.

    ``seed``: a training split, drawn anew every epoch; ``rates``: per-class resampling rates
    (needs the seed)."""

    def __init__(self, table: Any, seed: int | None = None, rates: Sequence[float] | None = None) -> None:
        if rates is not None and seed is None:
            raise ValueError("resampling draws from the seed: pass seed with rates")
        self.table = table  # a pyarrow.Table, or a ray.ObjectRef to one
        self.seed = seed
        self.rates = None if rates is None else [float(r) for r in rates]

    @classmethod
    def put(cls, table: pa.Table, seed: int | None = None, rates: Sequence[float] | None = None) -> InMemorySplit:
        """Put ``table`` into Ray's object store once; the instance carries only the reference."""
        import ray  # deferred: this module is imported on the driver before Ray starts, and in tests without it

        return cls(ray.put(table), seed, rates)

    def shard(self, rank: int = 0, world: int = 1, *, split: bool = True, first_epoch: int = 0) -> InMemoryShard:
        table = self.table
        if not isinstance(table, pa.Table):
            import ray  # deferred: see put

            table = ray.get(table)
        return InMemoryShard(table, rank, world, seed=self.seed, rates=self.rates, split=split,
                             first_epoch=first_epoch)


class InMemoryShard:
    """One worker's view of an ``InMemorySplit``: each ``iter_batches`` call is the next epoch."""

    def __init__(self, table: pa.Table, rank: int, world: int, *, seed: int | None, split: bool,
                 rates: Sequence[float] | None = None, first_epoch: int = 0) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.table, self.rank, self.world, self.seed, self.split = table, rank, world, seed, split
        self.rates = rates
        self.epoch = first_epoch
        n = table.num_rows
        self.block_rows = max(1, int(BLOCK_BYTES * n // max(table.nbytes, 1))) if n else 1

    def rows(self, epoch: int) -> np.ndarray | None:
        """Row indices this shard yields in ``epoch``, in order; None: all rows, in file order."""
        if not self.split:
            return None
        n = self.table.num_rows
        if self.seed is None:
            drawn = np.arange(n)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            drawn = np.arange(n) if self.rates is None else resampled_rows(self._labels(), self.rates, rng)
            drawn = drawn[rng.permutation(len(drawn))]
        kept = len(drawn) // self.world * self.world
        return drawn[:kept][self.rank::self.world]

    def as_rank(self, rank: int, world: int) -> InMemoryShard:
        """The same data as rank ``rank`` of ``world`` saw it (an elastic resume reads the old ranks' rows)."""
        return InMemoryShard(self.table, rank, world, seed=self.seed, split=self.split, rates=self.rates)

    def epoch_rows(self, epoch: int) -> int:
        """How many rows ``epoch_blocks(epoch)`` yields."""
        rows = self.rows(epoch)
        return self.table.num_rows if rows is None else len(rows)

    def epoch_blocks(self, epoch: int, skip: int = 0, ids: bool = False) -> Iterator[pa.Table]:
        """This shard's rows of ``epoch`` (``rows``) in blocks of up to ``BLOCK_BYTES``, less the
        first ``skip``; with ``ids``, each row's index in the table as ``SAMPLE_ID``."""
        rows = self.rows(epoch)
        rows = np.arange(self.table.num_rows) if rows is None else rows
        for i in range(skip, len(rows), self.block_rows):
            index = rows[i:i + self.block_rows]
            block = self.table.take(index)
            yield block.append_column(SAMPLE_ID, pa.array(index, pa.int64())) if ids else block

    def _labels(self) -> np.ndarray:
        return self.table.column(LABEL_COLUMN).to_numpy()

    def iter_batches(self, *, batch_size: int | None = None, batch_format: str = "pyarrow",
                     prefetch_batches: int = 0) -> Iterator[pa.Table]:
        """This epoch's rows as pyarrow tables of up to ``BLOCK_BYTES``, then the epoch advances.

        Only the arguments ``torch_batches`` passes are supported: whole blocks, pyarrow.
        """
        if batch_size is not None or batch_format != "pyarrow":
            raise ValueError("InMemoryShard.iter_batches yields whole pyarrow blocks: batch_size=None, "
                             "batch_format='pyarrow'")
        rows = self.rows(self.epoch)
        self.epoch += 1
        step = self.block_rows
        if rows is None:
            for i in range(0, self.table.num_rows, step):
                yield self.table.slice(i, step)
            return
        for i in range(0, len(rows), step):
            yield self.table.take(rows[i:i + step])


def read_table(split: ParquetSplit, columns: list[str]) -> pa.Table:
    """The split's ``columns`` from every file, in memory, with pyarrow; each file's feature rows
    checked (``splits.check_feature_rows``, naming the file) unless the driver's scan did already."""
    tables = [pq.read_table(f, columns=columns, filesystem=split.filesystem, partitioning=None) for f in split.files]
    feature = split.feature
    if not split.rows_checked and feature.column in columns:
        for path, table in zip(split.files, tables):
            check_feature_rows(table.column(feature.column), feature, feature.width, f"{split.key}: {path}: ")
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns})


def in_memory_split(split: ParquetSplit, *, max_bytes: int, seed: int | None = None,
                    rates: Sequence[float] | None = None) -> InMemorySplit | None:
    """The split as an ``InMemorySplit`` in Ray's object store when its training columns fit in
    ``max_bytes`` (``scan.fits_in_memory``), else None (it streams). Read here with pyarrow:
    milliseconds for what fits. ``seed``, ``rates``: see ``InMemorySplit``.
    """
    columns = split.columns  # the feature, and the label unless the split has none (causal LM)
    if not fits_in_memory(split, columns, max_bytes):
        return None
    return InMemorySplit.put(read_table(split, columns), seed=seed, rates=rates)
