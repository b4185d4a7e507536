"""digits-lt: the long-tail profile, and that the generated splits are what the manifest says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from raydeep.datasets import ensure_digits_lt, label_histogram, long_tail_counts, open_split


@pytest.mark.parametrize(
    ("n_max", "k", "ratio", "expected"),
    [
        (100, 3, 100, [100, 10, 1]),
        (1000, 4, 1000, [1000, 100, 10, 1]),
        (200, 2, 10, [200, 20]),
        (10, 5, 1, [10, 10, 10, 10, 10]),
        (5, 3, 1000, [5, 1, 1]),  # floor would give 0: every class keeps at least one row
        (7, 1, 10, [7]),
        # 114 * 100 ** (-c/9), floored, by hand: the digits-lt default (smallest class 174 - 60)
        (114, 10, 100, [114, 68, 40, 24, 14, 8, 5, 3, 1, 1]),
        (114, 10, 10, [114, 88, 68, 52, 40, 31, 24, 19, 14, 11]),
    ],
)
def test_long_tail_counts(n_max: int, k: int, ratio: float, expected: list[int]) -> None:
    assert long_tail_counts(n_max, k, ratio) == expected


@pytest.mark.parametrize(("n_max", "k", "ratio"), [(0, 3, 10), (10, 0, 10), (10, 3, 0.5)])
def test_long_tail_counts_rejects(n_max: int, k: int, ratio: float) -> None:
    with pytest.raises(ValueError):
        long_tail_counts(n_max, k, ratio)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(ensure_digits_lt(str(tmp_path_factory.mktemp("cache"))))


def _ids(split_dir: Path) -> np.ndarray:
    return np.concatenate([pq.read_table(p, columns=["id"]).column("id").to_numpy()
                           for p in sorted(split_dir.glob("part-*.parquet"))])


def _n_max() -> int:
    return int(np.bincount(load_digits().target).min()) - 60  # minus val 30 and test 30 per class


def test_splits_disjoint_and_real(digits_root: Path) -> None:
    ids = {s: _ids(digits_root / s) for s in ("train", "val", "test")}
    for s, v in ids.items():
        assert len(set(v)) == len(v), s
    assert not set(ids["train"]) & set(ids["val"])
    assert not set(ids["train"]) & set(ids["test"])
    assert not set(ids["val"]) & set(ids["test"])
    # pixels are load_digits()[id] / 16, labels its target
    digits = load_digits()
    t = pq.read_table(digits_root / "val" / "part-00001.parquet")
    pixels = np.stack(t.column("pixels").to_numpy(zero_copy_only=False))
    idx = t.column("id").to_numpy()
    np.testing.assert_allclose(pixels, digits.data[idx] / 16.0, rtol=0, atol=1e-7)
    assert (t.column("label").to_numpy() == digits.target[idx]).all()
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_histograms(digits_root: Path, tmp_path: Path) -> None:
    train = open_split(str(digits_root / "train"), key="data.train")
    assert label_histogram(train, 10) == long_tail_counts(_n_max(), 10, 100)
    for s in ("val", "test"):
        assert label_histogram(open_split(str(digits_root / s), key=f"data.{s}"), 10) == [30] * 10
    other = Path(ensure_digits_lt(str(tmp_path), imbalance_ratio=10, val_per_class=20, test_per_class=10))
    assert label_histogram(open_split(str(other / "train"), key="k"), 10) == long_tail_counts(_n_max() + 30, 10, 10)
    assert label_histogram(open_split(str(other / "test"), key="k"), 10) == [10] * 10


def test_manifest(digits_root: Path) -> None:
    m = json.loads((digits_root / "train" / "_raydeep.json").read_text())
    counts = long_tail_counts(_n_max(), 10, 100)
    assert m["format"] == "raydeep/1" and m["name"] == "digits-lt" and m["split"] == "train"
    assert m["task"] == "image_classification"
    assert m["feature"] == {"column": "pixels", "kind": "image", "shape": [1, 8, 8]}
    assert m["num_classes"] == 10 and m["label_names"] == [str(c) for c in range(10)]
    assert m["num_rows"] == sum(counts) and m["label_histogram"] == counts
    assert [s["file"] for s in m["shards"]] == [f"part-0000{i}.parquet" for i in range(4)]
    assert sum(s["rows"] for s in m["shards"]) == m["num_rows"]
    assert m["generator"]["imbalance_ratio"] == 100 and m["generator"]["seed"] == 0
    for s in ("val", "test"):
        ms = json.loads((digits_root / s / "_raydeep.json").read_text())
        assert len(ms["shards"]) == 2 and ms["num_rows"] == 300 and ms["split"] == s
    split = open_split(str(digits_root / "train"), key="data.train")
    assert split.feature.image_shape == (1, 8, 8) and split.num_classes == 10 and split.manifest == m
    schema = pq.read_schema(digits_root / "train" / "part-00000.parquet")
    assert str(schema.field("pixels").type) == "fixed_size_list<element: float>[64]"
    assert str(schema.field("label").type) == "int64" and str(schema.field("id").type) == "int64"


def test_seeded(digits_root: Path, tmp_path: Path) -> None:
    same = Path(ensure_digits_lt(str(tmp_path / "a")))
    for s in ("train", "val", "test"):
        names = sorted(p.name for p in (digits_root / s).iterdir())
        assert names == sorted(p.name for p in (same / s).iterdir())
        for name in names:
            assert (digits_root / s / name).read_bytes() == (same / s / name).read_bytes(), (s, name)
    other = Path(ensure_digits_lt(str(tmp_path / "b"), seed=1))
    assert set(_ids(other / "train")) != set(_ids(digits_root / "train"))


def test_cached_by_parameters(tmp_path: Path) -> None:
    root = ensure_digits_lt(str(tmp_path))
    stamp = (Path(root) / "train" / "_raydeep.json").stat().st_mtime_ns
    assert ensure_digits_lt(str(tmp_path), imbalance_ratio=100.0) == root  # 100 and 100.0: one set
    assert (Path(root) / "train" / "_raydeep.json").stat().st_mtime_ns == stamp
    assert ensure_digits_lt(str(tmp_path), imbalance_ratio=50) != root
    assert not [p for p in (tmp_path / "digits-lt").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_bundled_uri(tmp_path: Path) -> None:
    split = open_split("datasets://digits-lt/test?seed=3&imbalance_ratio=20", key="data.test", cache_dir=str(tmp_path))
    assert split.num_rows == 300 and split.uri.startswith("datasets://")
    assert split.manifest is not None and split.manifest["generator"]["seed"] == 3
