"""Small splits held in Ray's object store and cut per worker, with no Ray Data in the run.

A split that fits in memory (``data.materialize_max_mb``) is read once on the driver with
pyarrow and put into the object store as one table; every worker maps it (zero-copy on its
node) and takes its own rows each epoch. Before, such a split became a Ray Dataset
(``from_arrow``) that Ray Train split with ``streaming_split`` every epoch, and that kept Ray
Data's machinery running beside training on every run: a SplitCoordinator actor, Ray Data's
stats and autoscaling actors, an executor started per epoch for each split, and prefetch threads
in each worker. On the 2-core benchmark machine that machinery cost a measurable share of the
training rate (benchmarks/BENCHMARKS.md, "Where the rest goes"). Large splits still stream
through Ray Data (``sources.to_ray_dataset``).

Each epoch of a training split, rows are dealt from one permutation drawn from
``(seed, epoch)``: rank r of w takes every w-th row of it, ``num_rows // w`` rows (the rest are
dropped to keep ranks equal, as ``streaming_split(equal=True)`` does). So every row reaches
exactly one worker per epoch, rows move between workers from epoch to epoch, and the order is a
function of ``(seed, epoch, rank)`` alone: a run resumed at epoch k sees epoch k's rows. An
unsplit split (validation) gives every worker all rows in file order.

``InMemoryShard.iter_batches`` has the signature ``batches.torch_batches`` calls on a Ray
``DataIterator``, so the worker's batcher and its shuffle window are the same for both.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa

BLOCK_BYTES = 8 << 20  # rows handed to the batcher at a time: bounds each epoch's copy of a shard


class InMemorySplit:
    """A table (or an object-store reference to one) that workers shard; small and picklable."""

    def __init__(self, table: Any, seed: int | None = None) -> None:
        self.table = table  # a pyarrow.Table, or a ray.ObjectRef to one
        self.seed = seed

    @classmethod
    def put(cls, table: pa.Table, seed: int | None = None) -> InMemorySplit:
        """Put ``table`` into Ray's object store once; the instance carries only the reference."""
        import ray

        return cls(ray.put(table), seed)

    def shard(self, rank: int = 0, world: int = 1, *, split: bool = True, first_epoch: int = 0) -> InMemoryShard:
        table = self.table
        if not isinstance(table, pa.Table):
            import ray

            table = ray.get(table)
        return InMemoryShard(table, rank, world, seed=self.seed, split=split, first_epoch=first_epoch)


class InMemoryShard:
    """One worker's view of an ``InMemorySplit``: each ``iter_batches`` call is the next epoch."""

    def __init__(self, table: pa.Table, rank: int, world: int, *, seed: int | None, split: bool,
                 first_epoch: int = 0) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.table, self.rank, self.world, self.seed, self.split = table, rank, world, seed, split
        self.epoch = first_epoch
        n = table.num_rows
        self.block_rows = max(1, int(BLOCK_BYTES * n // max(table.nbytes, 1))) if n else 1

    def rows(self, epoch: int) -> np.ndarray | None:
        """Row indices this shard yields in ``epoch``, in order; None: all rows, in file order."""
        n = self.table.num_rows
        if not self.split:
            return None
        kept = n // self.world * self.world
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.seed is not None else np.arange(n)
        return order[:kept][self.rank::self.world]

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
