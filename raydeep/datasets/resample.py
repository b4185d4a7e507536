"""Class resampling of the training split, inside Ray Data (streaming, seeded).

The rates (expected copies per row of each class) come from the training histogram on the
driver; here each row of class ``c`` is emitted ``floor(r_c)`` times plus once more with
probability ``r_c - floor(r_c)``, so the expected class counts are exactly ``r_c * n_c`` and
no block is ever gathered. Resampling happens before the split across workers, so every
worker still sees a disjoint shard. Validation is never resampled.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import ray.data


def resample_batch(batch: dict[str, np.ndarray], rates: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """One batch's rows, repeated or dropped per their class's rate.

    The generator is keyed by the seed and the batch's own labels, so the same block gives
    the same sample wherever and whenever Ray runs it (a run is reproducible from its seed).
    """
    labels = np.asarray(batch["label"])
    rng = np.random.default_rng([seed, zlib.crc32(labels.tobytes()), len(labels)])
    r = rates[labels]
    copies = np.floor(r).astype(np.int64) + (rng.random(len(labels)) < (r - np.floor(r)))
    index = np.repeat(np.arange(len(labels)), copies)
    rng.shuffle(index)  # copies of one row should not sit next to each other
    return {k: np.asarray(v)[index] for k, v in batch.items()}


def resample(ds: "ray.data.Dataset", rates: Sequence[float], seed: int) -> "ray.data.Dataset":
    r = np.asarray(rates, dtype=np.float64)
    return ds.map_batches(resample_batch, fn_kwargs={"rates": r, "seed": seed}, batch_format="numpy")
