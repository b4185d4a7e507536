"""The Ray Data plan for a streamed split: raydeep's own datasource over the shards ``open_split``
listed, with a new file order, and with class resampling, per epoch.

Not ``ray.data.read_parquet``: every execution of it (one per epoch in a Train run) lists the
files and reads their footers again in freshly started actors, seconds before each epoch's first
batch on a small machine, while ``open_split`` has already read every footer on the driver
(benchmarks/BENCHMARKS.md, "The streamed path's shape"). ``ShardReader`` makes one read
task per shard from what the footers say. Imports Ray: import this module only where Ray runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.context import DataContext

from raydeep.datasets.epoch_order import SAMPLE_ID, Range, assign_ranges, skip_rows
from raydeep.datasets.reader import epoch_file_order, read_shard, rows_per_block
from raydeep.datasets.resample import resampled_blocks
from raydeep.datasets.scan import footers_of, memory_bytes_per_file
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.splits import ParquetSplit, check_feature_rows




class ShardReader(Datasource):
    """A split's shard files as a Ray Data source: one read task per file, or with ``ranges``
    (``epoch_order.Range``: one rank's share of an epoch) one per range, in their order.

    ``rows`` and ``nbytes`` per file come from the footers (``nbytes``: the selected columns
    decoded, as ``memory_bytes`` counts them); Ray's scheduler and memory budget read them
    through each task's metadata and ``estimate_inmemory_data_size``. The epoch is the dataset's
    execution count (``DataContext._execution_idx``, the counter Ray's own ``FileShuffleConfig``
    reads): with a seed, the file order and, with ``rates``, each block's class resampling
    (``resample.resampled_blocks``) are drawn from ``(seed, epoch, ...)``, the same on every machine.
    """

    def __init__(self, files: list[str], filesystem: pafs.FileSystem, columns: list[str], rows: list[int],
                 nbytes: list[float], *, schema: pa.Schema | None = None, shuffle_seed: int | None = None,
                 rates: Sequence[float] | None = None, block_bytes: int,
                 check: tuple[FeatureSpec, str] | None = None, ranges: Sequence[Range] | None = None,
                 ids: bool = False):
        super().__init__()
        if not (len(files) == len(rows) == len(nbytes)):
            raise ValueError("files, rows and nbytes must be the same length")
        if rates is not None and shuffle_seed is None:
            raise ValueError("resampling draws from the seed: pass shuffle_seed with rates")
        self._files, self._fs, self._columns = list(files), filesystem, list(columns)
        self._rows, self._nbytes = [int(r) for r in rows], [float(b) for b in nbytes]
        self._schema, self._seed, self._block_bytes = schema, shuffle_seed, int(block_bytes)
        self._rates = None if rates is None else [float(r) for r in rates]
        self._check = check  # (feature, config key): each block's feature rows checked as read
        self._ranges, self._ids = None if ranges is None else list(ranges), ids
        if ids and schema is not None:
            self._schema = schema.append(pa.field(SAMPLE_ID, pa.int64()))

    def get_name(self) -> str:
        return "ParquetShards"  # the operator shows as ReadParquetShards in Ray Data's logs

    def estimate_inmemory_data_size(self) -> int:
        return int(sum(self._nbytes))

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: DataContext | None = None) -> list[ReadTask]:
        # One task per shard whatever ``parallelism`` asks: a shard is the unit the file order
        # shuffles, and blocks within it are already cut to the block size.
        epoch = data_context._execution_idx if data_context is not None else 0
        # Oversampling grows a block by up to the largest rate: read fewer rows to keep it in bounds.
        growth = max([1.0, *(self._rates or [])])
        units = self._ranges
        if units is None:
            units = [Range(i, 0, self._rows[i]) for i in epoch_file_order(len(self._files), self._seed, epoch)]
        tasks = []
        for unit in units:
            i = unit.file
            path, rows, nbytes = self._files[i], unit.rows, self._nbytes[i] * unit.rows / max(self._rows[i], 1)
            if rows == 0:
                continue
            batch_rows = rows_per_block(rows, nbytes * growth, self._block_bytes)

            # Defaults bind this task's values; a closure over self would ship every file's to each task.
            def read(path: str = path, fs: pafs.FileSystem = self._fs, columns: list[str] = self._columns,
                     batch_rows: int = batch_rows, rates: list[float] | None = self._rates,
                     key: tuple[int | None, ...] = (self._seed, epoch, i), unit: Range = unit,
                     check: tuple[FeatureSpec, str] | None = self._check, ids: bool = self._ids) -> Iterator[pa.Table]:
                blocks = read_shard(path, fs, columns, batch_rows, unit.start, unit.stop)
                if check is not None:
                    blocks = checked_blocks(blocks, path, *check, first_row=unit.start)
                if ids:
                    blocks = with_sample_ids(blocks, unit)
                return blocks if rates is None else resampled_blocks(blocks, rates, key)

            # A resampled shard's row count is known only once drawn.
            meta = BlockMetadata(num_rows=rows if self._rates is None else None, size_bytes=int(nbytes),
                                 input_files=[path], exec_stats=None)
            tasks.append(ReadTask(read, meta, schema=self._schema, per_task_row_limit=per_task_row_limit))
        return tasks


def with_sample_ids(blocks: Iterator[pa.Table], unit: Range) -> Iterator[pa.Table]:
    """``blocks`` of ``unit`` with each row's ``SAMPLE_ID``."""
    row = unit.start
    for block in blocks:
        ids = (unit.file << 32) + np.arange(row, row + block.num_rows, dtype=np.int64)
        row += block.num_rows
        yield block.append_column(SAMPLE_ID, pa.array(ids))


def checked_blocks(blocks: Iterator[pa.Table], path: str, feature: FeatureSpec, key: str,
                   first_row: int = 0) -> Iterator[pa.Table]:
    """``blocks`` of the shard ``path`` as read (from row ``first_row``), each one's feature rows
    checked (``splits.check_feature_rows``: the error names the file and the row)."""
    row = first_row
    for block in blocks:
        check_feature_rows(block.column(feature.column), feature, feature.width, f"{key}: {path}: ", row)
        row += block.num_rows
        yield block


def to_ray_dataset(split: ParquetSplit, *, shuffle_seed: int | None = None, rates: Sequence[float] | None = None,
                   block_bytes: int | None = None) -> ray.data.Dataset:
    """A lazy Ray Dataset over the split's shards with only the columns training needs.

    ``shuffle_seed``: a new file order every epoch (row-level mixing is the workers' shuffle
    window, ``batches.torch_batches``). ``rates``: per-class resampling, drawn anew every epoch
    (needs the seed). Blocks hold at most ``block_bytes`` (``data.block_mb``; None: Ray Data's
    128 MiB). Epochs count this dataset's executions. The training split no longer goes this way
    (``StreamedSplit``: each rank its own ranges per epoch); validation, whole to every worker, does.
    Why this shape, measured: benchmarks/BENCHMARKS.md, "The streamed path's shape".
    A split the driver did not scan in full (``scan.check_rows``) has its feature rows checked as read.
    """
    columns = split.columns  # the feature, and the label unless the split has none (causal LM)
    schema = split.schema
    if schema is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    ds = ray.data.read_datasource(
        ShardReader(split.files, split.filesystem, columns, [md.num_rows for md in footers_of(split)],
                    memory_bytes_per_file(split, columns), schema=schema, shuffle_seed=shuffle_seed, rates=rates,
                    block_bytes=block_bytes or ray.data.DataContext.get_current().target_max_block_size,
                    check=None if split.rows_checked else (split.feature, split.key)),
        override_num_blocks=max(1, len(split.files)),
    )
    # The feature stays a list column: the worker's batcher makes one array per block (BENCHMARKS.md).
    if block_bytes:
        ds = ds.copy(ds, _deep_copy=True)  # its own context: the global one stays as it was
        ds.context.target_max_block_size = int(block_bytes)  # Ray's block shaping after the read
    return ds


@dataclass
class StreamedSplit:
    """A streamed training split as its ranks read it: each rank its own ranges of each epoch
    (``epoch_order.assign_ranges``), through ``ShardReader``, as its own Ray Data execution with
    the order preserved, so what a rank reads, and in which order, is a function of (seed, epoch,
    rank, world, the footers) alone. Replaces Ray Train's ``streaming_split`` for training, whose
    rows go to whichever worker asks first. Small and picklable: footers' counts, no data."""

    files: list[str]
    filesystem: Any
    columns: list[str]
    rows: list[int]
    nbytes: list[float]
    schema: Any
    seed: int | None
    block_bytes: int
    check: tuple[FeatureSpec, str] | None
    read_ahead_bytes: int | None = None  # this rank's share of data.read_ahead_mb
    rates: list[float] | None = None  # imbalance.sampling: each rank resamples its chunks (epoch_order.EpochOrder)

    def shard(self, rank: int, world: int, **_: Any) -> "StreamedShard":
        return StreamedShard(self, rank, world)


class StreamedShard:
    """One rank's view of a ``StreamedSplit``: ``epoch_blocks`` is one epoch's source rows."""

    def __init__(self, split: StreamedSplit, rank: int, world: int) -> None:
        self.split, self.rank, self.world = split, rank, world

    @property
    def chunk_rates(self) -> list[float] | None:
        return self.split.rates

    def as_rank(self, rank: int, world: int) -> "StreamedShard":
        """The same split as rank ``rank`` of ``world`` reads it (an elastic resume reads the old ranks' ranges)."""
        return StreamedShard(self.split, rank, world)

    def epoch_rows(self, epoch: int) -> int:
        """This rank's rows of ``epoch`` (before resampling)."""
        return sum(r.rows for r in self.ranges(epoch))

    def ranges(self, epoch: int) -> list[Range]:
        return assign_ranges(self.split.rows, self.split.seed, epoch, self.world)[0][self.rank]

    def epoch_blocks(self, epoch: int, skip: int = 0, ids: bool = False) -> Iterator[pa.Table]:
        """This rank's rows of ``epoch`` in order, less the first ``skip`` (by count, unread)."""
        ranges = skip_rows(self.ranges(epoch), skip)
        if not ranges:
            return
        s = self.split
        ds = ray.data.read_datasource(
            ShardReader(s.files, s.filesystem, s.columns, s.rows, s.nbytes, schema=s.schema, shuffle_seed=s.seed,
                        block_bytes=s.block_bytes, check=s.check, ranges=ranges, ids=ids),
            override_num_blocks=len(ranges))
        ds = ds.copy(ds, _deep_copy=True)  # its own context
        ds.context.target_max_block_size = s.block_bytes
        options = ds.context.execution_options
        options.preserve_order = True  # the ranges' order: a rank's order never depends on timing
        if s.read_ahead_bytes:
            options.resource_limits = options.resource_limits.copy(object_store_memory=s.read_ahead_bytes)
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)


def streamed_split(split: ParquetSplit, *, seed: int | None, block_bytes: int | None,
                   read_ahead_bytes: int | None = None, rates: Sequence[float] | None = None) -> StreamedSplit:
    """``split`` as a ``StreamedSplit`` (the training split when it does not fit in memory)."""
    columns = split.columns
    schema = split.schema
    if schema is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return StreamedSplit(list(split.files), split.filesystem, columns, [md.num_rows for md in footers_of(split)],
                         memory_bytes_per_file(split, columns), schema, seed,
                         int(block_bytes or ray.data.DataContext.get_current().target_max_block_size),
                         None if split.rows_checked else (split.feature, split.key), read_ahead_bytes,
                         None if rates is None else [float(r) for r in rates])
