"""Class resampling of a training split: which rows one draw keeps, and how many copies of each.

The rates (expected copies per row of each class, ``trainers.class_weights.sampling_rates``) come
from the training histogram on the driver. Both paths draw with ``resampled_rows``: the in-memory
path over the whole split once per epoch (``memory.py``), the streamed path per block inside its
read tasks (``streaming.py``). Each keys its generator on ``(seed, epoch, ...)``, so every epoch
draws anew and a run is reproducible from its seed. Validation is never resampled.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from raydeep.datasets.schema import LABEL_COLUMN


def resampled_rows(labels: np.ndarray, rates: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Row indices of one draw, in random order: every row of class ``c`` ``floor(r_c)`` times,
    plus one more copy of a random subset of the class's rows whose size is ``frac(r_c) * n_c``
    rounded up or down at random.

    Each row gets its extra copy with probability ``frac(r_c)`` (what ``sampling_rates`` promises)
    and the class count is ``r_c * n_c`` in expectation and within one of it in every draw, where
    an independent coin per row would spread it by ``sqrt(n_c)``.
    """
    labels = np.asarray(labels)
    r = np.asarray(rates, dtype=np.float64)
    whole = np.floor(r)
    parts = [np.repeat(np.arange(len(labels)), whole[labels].astype(np.int64))]
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        extra = (r[c] - whole[c]) * len(rows)
        k = int(extra) + int(rng.random() < extra - int(extra))
        parts.append(rng.choice(rows, size=min(k, len(rows)), replace=False))
    index = np.concatenate(parts)
    rng.shuffle(index)  # copies of one row should not sit next to each other
    return index


def resampled_blocks(blocks: Iterable[pa.Table], rates: Sequence[float], key: Sequence[int]) -> Iterator[pa.Table]:
    """Each block's draw, the ``b``-th block's from ``(*key, b)``: a streamed shard's rows per epoch."""
    for b, block in enumerate(blocks):
        rng = np.random.default_rng([*map(int, key), b])
        yield block.take(resampled_rows(block.column(LABEL_COLUMN).to_numpy(), rates, rng))
