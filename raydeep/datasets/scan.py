"""Whole-column pyarrow passes over an opened split, and its size in memory from its footers.

Label histogram, regression target summary and the feature's rows (widths, finiteness) are
plain pyarrow scans of one column, file by file (RAY_NOTES: 0.1 s per 1M labels, against 7-15 s
through Ray Data aggregations). ``memory_bytes`` and ``fits_in_memory`` decide which path a split takes to the
workers: held in memory (``memory.py``) or streamed (``streaming.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raydeep.datasets.schema import LABEL_COLUMN
from raydeep.datasets.splits import (ParquetSplit, check_feature_rows, one_line, read_footer,
                                     read_row_group_column)
from raydeep.errors import DataError


def _label_column(split: ParquetSplit, path: str) -> pa.ChunkedArray:
    try:
        with split.filesystem.open_input_file(path) as f:
            return pq.ParquetFile(f).read(columns=[LABEL_COLUMN]).column(LABEL_COLUMN)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{split.key}: {path}: cannot read the {LABEL_COLUMN!r} column ({one_line(exc)})") from None


def label_histogram(split: ParquetSplit, num_classes: int) -> list[int]:
    """Per-class row counts from a pyarrow scan of the ``label`` column, file by file. The driver's
    one pass over the data before Ray starts, so it checks the feature's rows too (``check_rows``,
    up to ``SCAN_MAX_BYTES``) after the labels."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in split.files:
        labels = _label_column(split, path)
        if labels.null_count:
            raise DataError(f"{split.key}: {path}: {labels.null_count} null label(s); every row needs a label "
                            f"in [0, {num_classes})")
        values = labels.to_numpy()
        if values.size == 0:
            continue
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise DataError(f"{split.key}: {path}: label {values[np.argmax(bad)]} outside [0, {num_classes}) "
                            f"(model.num_classes = {num_classes})")
        counts += np.bincount(values.astype(np.int64), minlength=num_classes)
    check_rows(split, SCAN_MAX_BYTES)
    return counts.tolist()


def target_summary(split: ParquetSplit) -> dict[str, float]:
    """Rows, mean, std, min and max of a regression split's ``label`` column (one pyarrow scan, file
    by file); a null or a NaN/inf target is a DataError naming the file. Checks the feature's rows
    too, as ``label_histogram`` does."""
    n, total, total_sq = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    shift = None  # sums of (y - shift): no cancellation when the targets' mean dwarfs their spread
    for path in split.files:
        column = _label_column(split, path)
        if column.null_count:
            raise DataError(f"{split.key}: {path}: {column.null_count} null target(s) in {LABEL_COLUMN!r}; "
                            "every row needs a number")
        y = column.to_numpy().astype(np.float64)
        if y.size == 0:
            continue
        if not np.isfinite(y).all():
            bad = int(np.argmax(~np.isfinite(y)))
            raise DataError(f"{split.key}: {path}: row {bad}: target {y[bad]} in {LABEL_COLUMN!r} is not finite")
        shift = y[0] if shift is None else shift
        d = y - shift
        n, total, total_sq = n + y.size, total + d.sum(), total_sq + (d * d).sum()
        lo, hi = min(lo, float(y.min())), max(hi, float(y.max()))
    if n == 0:
        raise DataError(f"{split.key}: {split.uri}: no targets")
    check_rows(split, SCAN_MAX_BYTES)
    mean = total / n
    return {"rows": n, "mean": float(shift + mean), "std": float(math.sqrt(max(total_sq / n - mean * mean, 0.0))),
            "min": lo, "max": hi}


# Bytes per value of parquet's fixed-width physical types, as Arrow holds them in memory.
_VALUE_BYTES = {"BOOLEAN": 1 / 8, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12}


def memory_bytes(split: ParquetSplit, columns: list[str]) -> int:
    """Bytes the split's ``columns`` take in memory (decoded, uncompressed), from its parquet
    footers alone (``footers_of``: no I/O after ``open_split``, S3 included): per column chunk,
    its value count times its type's width, or its uncompressed size for variable-length binary.
    Not the footers' ``total_byte_size``, which is after dictionary and run-length encoding: for
    padded token ids about the compressed size (2.3 MB against 10.8 MB in Arrow, 20k x 128).
    """
    return math.ceil(sum(memory_bytes_per_file(split, columns)))


def footers_of(split: ParquetSplit) -> list[pq.FileMetaData]:
    """The footers ``open_split`` read (no I/O), else one read per file through the split's filesystem."""
    return split.footers or [read_footer(path, split.filesystem, key=split.key) for path in split.files]


def memory_bytes_per_file(split: ParquetSplit, columns: list[str]) -> list[float]:
    """``memory_bytes`` of each of ``split.files``, in their order."""
    wanted = set(columns)
    sizes = []
    for md in footers_of(split):
        total = 0.0
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            for j in range(group.num_columns):
                chunk = group.column(j)
                if chunk.path_in_schema.split(".", 1)[0] not in wanted:
                    continue
                if chunk.physical_type == "FIXED_LEN_BYTE_ARRAY":
                    total += chunk.num_values * md.schema.column(j).length
                elif chunk.physical_type in _VALUE_BYTES:
                    total += chunk.num_values * _VALUE_BYTES[chunk.physical_type]
                else:
                    total += chunk.total_uncompressed_size
        sizes.append(total)
    return sizes


def fits_in_memory(split: ParquetSplit, columns: list[str], max_bytes: int) -> bool:
    """Whether the split's ``columns`` take at most ``max_bytes`` in memory (``memory_bytes``, from
    the footers ``open_split`` read: no I/O; 2-5x the parquet size on storage), so that it goes to
    the workers held in memory rather than streamed. ``max_bytes`` 0: never.
    """
    return max_bytes > 0 and memory_bytes(split, columns) <= max_bytes


# The driver reads a split's feature column in full (``check_rows``) when it takes at most this
# much in memory: measured about 1.7 s for 256 MiB of float32 (1M x 64) on a loaded 2-core
# machine, 90% of it reading. A larger (streamed) split gets the footer checks of ``open_split``
# and is checked block by block as its read tasks read it (``streaming.ShardReader``).
SCAN_MAX_BYTES = 256 << 20


def check_rows(split: ParquetSplit, max_bytes: int | None = None) -> bool:
    """Read the split's feature column, a row group at a time, and raise a DataError naming the file,
    row group and row at the first row that is null, does not hold the split's width of values,
    or (pixels, numeric features) holds a NaN or inf (``splits.check_feature_rows``).

    ``max_bytes``: do nothing when the column takes more than this in memory (``memory_bytes``).
    Returns whether every row is checked (``split.rows_checked``: a second call reads nothing)."""
    if split.rows_checked:
        return True
    column = split.feature.column
    if max_bytes is not None and memory_bytes(split, [column]) > max_bytes:
        return False
    for path, md in zip(split.files, footers_of(split)):
        for g in range(md.num_row_groups):
            values = read_row_group_column(path, split.filesystem, g, column, key=split.key)
            check_feature_rows(values, split.feature, split.feature.width, f"{split.key}: {path}: row group {g}, ")
    split.rows_checked = True
    return True


def check_finite(split: ParquetSplit) -> None:
    """``raydeep data inspect``'s check of an image or numeric split: ``check_rows`` over all of it.
    Token splits: no-op."""
    if split.feature.kind in ("image", "numeric"):
        check_rows(split)
