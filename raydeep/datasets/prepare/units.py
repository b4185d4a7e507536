"""Work units of ``raydeep data prepare``: the input files grouped into Ray tasks, and the plan the
driver sends each one (where its records start in the global numbering, each record's split code
and label id) as bytes in a Ray Data row.

A unit's records are numbered by (file order, position among the file's good records), which
every parse of the same files agrees on, so a split decided on the driver from the scan's counts
applies unchanged in the later passes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from raydeep.datasets.prepare.raw_records import Bad

SPLITS = ("train", "val", "test")  # split code 0, 1, 2
ENCODE_CHUNK = 2048  # records tokenized per encode_batch call (and rows per output block)


def make_units(inputs: list[tuple[str, str | None]], fmt: str, per_task: int) -> list[list]:
    """One unit per input file; text-dirs (a file per record): ``per_task`` files per unit."""
    if fmt != "text-dirs":
        return [[list(x)] for x in inputs]
    return [[list(x) for x in inputs[i:i + per_task]] for i in range(0, len(inputs), per_task)]


def unit_items(units: list[list], plan: dict) -> list[dict]:
    """The Ray Data rows of the passes after the scan: files, first record number, codes, label ids."""
    return [{"unit": i, "files": json.dumps(u), "offset": int(off), "codes": c.tobytes(), "label_ids": y.tobytes()}
            for i, (u, off, c, y) in enumerate(zip(units, plan["offsets"], plan["codes"], plan["label_ids"]))]


def unit_plan(row: dict) -> tuple[list, int, np.ndarray, np.ndarray]:
    """One row of ``unit_items`` back: (files, offset, split codes, label ids)."""
    return (json.loads(row["files"]), int(row["offset"]), np.frombuffer(row["codes"], dtype=np.int8),
            np.frombuffer(row["label_ids"], dtype=np.int64))


def rows(batch: dict) -> Iterator[dict]:
    """The rows of a Ray Data batch (a dict of columns)."""
    for i in range(len(batch["unit"])):
        yield {k: batch[k][i] for k in batch}


def changed_input(path: str, scanned: int) -> RuntimeError:
    """A later pass found a different number of good records than the scan did."""
    return RuntimeError(f"{path}: the input changed while preparing ({scanned} good records when scanned, a "
                        "different number now); run prepare again")


def text_chunks(records: Iterator, files: list, expected: int) -> Iterator[tuple[list[str], int, int]]:
    """A unit's good records' texts in chunks of ``ENCODE_CHUNK``, as ``(texts, start, stop)``
    record positions; the unit must still hold the ``expected`` good records the scan counted."""
    texts: list[str] = []
    start = k = 0
    for rec in records:
        if isinstance(rec, Bad):
            continue
        k += 1
        if k > expected:
            break
        texts.append(rec[0])
        if len(texts) >= ENCODE_CHUNK:
            yield texts, start, k
            texts, start = [], k
    if k != expected:
        raise changed_input(files[0][0], expected)
    if texts:
        yield texts, start, k
