"""``digits-lt``: scikit-learn's 1,797 real 8x8 digit images, made long-tailed.

The images ship inside scikit-learn (no download), so a laptop can train on real data offline.
Val and test are balanced so per-class metrics are comparable; train follows the exponential
long-tail profile of Cui et al. 2019 ("Class-Balanced Loss Based on Effective Number of
Samples"), with class 0 as the head. The ``id`` column is the row's index in ``load_digits()``,
which makes the splits' disjointness checkable.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydeep.datasets.manifest import publish_dir, write_split
from raydeep.datasets.schema import FeatureSpec, pixels_array

NAME = "digits-lt"
# Bump when the generator's output changes, so old caches are not reused for new code.
GENERATOR_VERSION = 1
SPLIT_SHARDS = {"train": 4, "val": 2, "test": 2}


def long_tail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """``n_c = floor(n_max * ratio ** (-c / (K-1)))``, at least 1: head ``n_max``, tail ``n_max / ratio``."""
    if n_max < 1 or num_classes < 1:
        raise ValueError(f"n_max and num_classes must be >= 1, got {n_max} and {num_classes}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (head / tail), got {imbalance_ratio}")
    if num_classes == 1:
        return [n_max]
    # The epsilon keeps exact values (100 * 100**-0.5 = 10) from flooring to one less through
    # rounding error, so hand-computed vectors hold exactly.
    return [
        max(1, math.floor(n_max * imbalance_ratio ** (-c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)
    ]


def _param_key(imbalance_ratio: float, seed: int, val_per_class: int, test_per_class: int) -> str:
    # No '=' in directory names: Ray's default hive partitioning would turn them into columns.
    return f"v{GENERATOR_VERSION}-ratio{float(imbalance_ratio):g}-seed{seed}-val{val_per_class}-test{test_per_class}"


def ensure_digits_lt(
    cache_dir: str,
    *,
    imbalance_ratio: float = 100.0,
    seed: int = 0,
    val_per_class: int = 30,
    test_per_class: int = 30,
) -> str:
    """Generate the set under ``cache_dir`` once per parameter set; return its root (train/ val/ test/)."""
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    if val_per_class < 1 or test_per_class < 1:
        raise ValueError(f"val_per_class and test_per_class must be >= 1, got {val_per_class} and {test_per_class}")
    root = Path(cache_dir) / NAME / _param_key(imbalance_ratio, seed, val_per_class, test_per_class)

    def build(tmp: Path) -> None:
        _write_digits(tmp, imbalance_ratio=imbalance_ratio, seed=seed,
                      val_per_class=val_per_class, test_per_class=test_per_class)

    return os.fspath(publish_dir(root, build))


def _write_digits(out: Path, *, imbalance_ratio: float, seed: int, val_per_class: int, test_per_class: int) -> None:
    from sklearn.datasets import load_digits  # imported here: sklearn costs ~1 s and only this set needs it

    digits = load_digits()
    images = digits.data.astype(np.float32) / 16.0  # raw values are 0..16
    target = digits.target.astype(np.int64)
    num_classes = int(target.max()) + 1
    rng = np.random.default_rng(seed)

    val_idx, test_idx, rest = [], [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(target == c))
        if len(idx) <= val_per_class + test_per_class:
            raise ValueError(
                f"class {c} has {len(idx)} images; val_per_class + test_per_class = "
                f"{val_per_class + test_per_class} leaves none for train"
            )
        val_idx.append(idx[:val_per_class])
        test_idx.append(idx[val_per_class : val_per_class + test_per_class])
        rest.append(idx[val_per_class + test_per_class :])
    counts = long_tail_counts(min(len(r) for r in rest), num_classes, imbalance_ratio)
    train_idx = [r[:n] for r, n in zip(rest, counts)]

    feature = FeatureSpec(column="pixels", kind="image", image_shape=(1, 8, 8))
    generator = {"imbalance_ratio": imbalance_ratio, "seed": seed, "val_per_class": val_per_class,
                 "test_per_class": test_per_class, "version": GENERATOR_VERSION}
    for split, parts in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        # Shuffle across classes so every shard (and so every Ray read task) mixes classes.
        idx = rng.permutation(np.concatenate(parts))
        table = pa.table({
            "pixels": pixels_array(images[idx], 64),
            "label": pa.array(target[idx], pa.int64()),
            "id": pa.array(idx.astype(np.int64)),
        })
        write_split(out / split, table, name=NAME, split=split, task="image_classification", feature=feature,
                    num_classes=num_classes, label_names=[str(c) for c in range(num_classes)],
                    generator=generator, shards=SPLIT_SHARDS[split])
