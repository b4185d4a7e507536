"""How a streamed split's shards are read: a Ray Data ``Datasource`` with one read task per shard.

Why not ``ray.data.read_parquet``: Ray 2.60 reads parquet through its "V2" datasource, and
every execution of it (a Train run executes its dataset once per epoch) lists the files in a
``ListFiles`` task that starts ``FooterReader`` *actors* -- fresh worker processes -- to read
footers, then kills them. On a 2-core machine that put 2 s before each warm epoch's first
batch and 3-5 s before a cold one (``ray.timeline()`` of ``benchmarks/ingest.py``; 2026-11-29).
The older V1 datasource (``DataContext.use_datasource_v2 = False``) starts in 0.1 s but read
1M rows x 128 tokens at 80k rows/s, a tenth of pyarrow's rate. ``open_split`` has already
listed the shards and read every footer on the driver, so none of that work is needed again:
``ShardReader`` turns each shard into a read task from what the footers say (rows, decoded
bytes), and each task streams its shard with ``ParquetFile.iter_batches`` through the split's
filesystem (local or S3), a block at a time.

File order: with a seed, shuffled differently at every execution, reproducibly: from
``(seed, DataContext._execution_idx)``, the counter Ray's own ``FileShuffleConfig`` reads, so
``to_ray_dataset(first_epoch=k)`` still replays epoch k's order on a resumed run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from raydeep.datasets.sources import read_shard

if TYPE_CHECKING:
    from ray.data.context import DataContext


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


class ShardReader(Datasource):
    """A split's shard files as a Ray Data source: one read task per file (see the module doc).

    ``rows`` and ``nbytes`` per file come from the footers (``nbytes``: the selected columns
    decoded, as ``memory_bytes`` counts them); Ray's scheduler and memory budget read them
    through each task's metadata and ``estimate_inmemory_data_size``.
    """

    def __init__(self, files: list[str], filesystem: pafs.FileSystem, columns: list[str], rows: list[int],
                 nbytes: list[float], *, schema: pa.Schema | None = None, shuffle_seed: int | None = None,
                 block_bytes: int):
        super().__init__()
        if not (len(files) == len(rows) == len(nbytes)):
            raise ValueError("files, rows and nbytes must be the same length")
        self._files, self._fs, self._columns = list(files), filesystem, list(columns)
        self._rows, self._nbytes = [int(r) for r in rows], [float(b) for b in nbytes]
        self._schema, self._seed, self._block_bytes = schema, shuffle_seed, int(block_bytes)

    def get_name(self) -> str:
        return "ParquetShards"  # the operator shows as ReadParquetShards in Ray Data's logs

    def estimate_inmemory_data_size(self) -> int:
        return int(sum(self._nbytes))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: DataContext | None = None) -> list[ReadTask]:
        # One task per shard whatever ``parallelism`` asks: a shard is the unit the file order
        # shuffles, and blocks within it are already cut to the block size.
        execution_idx = data_context._execution_idx if data_context is not None else 0
        tasks = []
        for i in epoch_file_order(len(self._files), self._seed, execution_idx):
            path, rows, nbytes = self._files[i], self._rows[i], self._nbytes[i]
            if rows == 0:
                continue
            batch_rows = rows_per_block(rows, nbytes, self._block_bytes)

            def read(path: str = path, fs: pafs.FileSystem = self._fs, columns: list[str] = self._columns,
                     batch_rows: int = batch_rows) -> Iterator[pa.Table]:
                return read_shard(path, fs, columns, batch_rows)

            meta = BlockMetadata(num_rows=rows, size_bytes=int(nbytes), input_files=[path], exec_stats=None)
            tasks.append(ReadTask(read, meta, schema=self._schema, per_task_row_limit=per_task_row_limit))
        return tasks
