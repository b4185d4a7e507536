"""``seed-regression``: the seed project's worked example, y = 2x on x in [1, 5], as parquet splits.

The training split's x are ``rows`` evenly spaced points from 1 to 5, so the default ``rows=5``
is exactly the seed's x = [1, 2, 3, 4, 5]; validation and test draw x uniformly from [1, 5]
(seeded per split, so they are not the training points). Every target is ``slope * x + intercept``
plus, when ``noise > 0``, Gaussian noise of that standard deviation. The defaults, slope 2 and
intercept 0, are the seed's y = 2x: a linear model should end at θ₀ ≈ 0, θ₁ ≈ 2.

Columns: ``features`` (fixed_size_list<float32>[1], holding x), ``label`` (float64, y), ``id``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydeep.datasets.manifest import publish_dir, write_split
from raydeep.datasets.schema import FeatureSpec, pixels_array

NAME = "seed-regression"
GENERATOR_VERSION = 1  # bump when the output changes, so old caches are not reused
SPLITS = ("train", "val", "test")
ID_STRIDE = 1_000_000_000  # split i owns ids [i * ID_STRIDE, (i+1) * ID_STRIDE)
X_RANGE = (1.0, 5.0)


def _check_params(rows: int, noise: float, val_rows: int) -> None:
    if not 2 <= rows < ID_STRIDE:
        raise ValueError(f"rows must be in [2, {ID_STRIDE}) (a line needs two points), got {rows}")
    if not 1 <= val_rows < ID_STRIDE:
        raise ValueError(f"val_rows must be in [1, {ID_STRIDE}), got {val_rows}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0 (a standard deviation), got {noise}")


def seed_regression_xy(split: str, *, rows: int, noise: float = 0.0, slope: float = 2.0, intercept: float = 0.0,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one split, float64 ``[rows]`` each (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split)]))
    lo, hi = X_RANGE
    x = np.linspace(lo, hi, rows) if split == "train" else rng.uniform(lo, hi, rows)
    y = slope * x + intercept
    if noise > 0:
        y = y + rng.normal(0.0, noise, rows)
    return x, y


def write_seed_regression(out_dir: str | os.PathLike, *, split: str, rows: int, noise: float, slope: float,
                          intercept: float, seed: int, shards: int = 1) -> dict:
    """Write one split; return its manifest."""
    x, y = seed_regression_xy(split, rows=rows, noise=noise, slope=slope, intercept=intercept, seed=seed)
    table = pa.table({
        "features": pixels_array(x[:, None], 1),  # fixed_size_list<float32>[1]
        "label": pa.array(y, pa.float64()),
        "id": pa.array(SPLITS.index(split) * ID_STRIDE + np.arange(rows, dtype=np.int64)),
    })
    feature = FeatureSpec(column="features", kind="numeric", num_features=1)
    generator = {"rows": rows, "noise": noise, "slope": slope, "intercept": intercept, "seed": seed,
                 "version": GENERATOR_VERSION}
    return write_split(out_dir, table, name=NAME, split=split, task="regression", feature=feature,
                       num_classes=None, label_names=None, generator=generator, shards=shards)


def ensure_seed_regression(
    cache_dir: str,
    *,
    rows: int = 5,
    val_rows: int | None = None,
    noise: float = 0.0,
    slope: float = 2.0,
    intercept: float = 0.0,
    seed: int = 0,
) -> str:
    """Generate train (``rows``), val and test (``val_rows``, default ``rows``) once; return the root."""
    val_rows = rows if val_rows is None else val_rows
    _check_params(rows, noise, val_rows)
    # No '=' in directory names: Ray's default hive partitioning would turn them into columns.
    key = (f"v{GENERATOR_VERSION}-rows{rows}-val{val_rows}-noise{float(noise):g}-slope{float(slope):g}"
           f"-intercept{float(intercept):g}-seed{seed}")
    common = dict(noise=noise, slope=slope, intercept=intercept, seed=seed)

    def build(tmp: Path) -> None:
        # Several shards once there are enough rows, so Ray has more than one read task to spread.
        write_seed_regression(tmp / "train", split="train", rows=rows, shards=max(1, min(4, rows // 64)), **common)
        for split in ("val", "test"):
            write_seed_regression(tmp / split, split=split, rows=val_rows, **common)

    return os.fspath(publish_dir(Path(cache_dir) / NAME / key, build))
