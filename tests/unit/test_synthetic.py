"""synthetic-text: deterministic, well-formed, long-tailed, and carrying a learnable signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydeep.datasets import (
    ensure_synthetic_text,
    label_histogram,
    long_tail_counts,
    open_split,
    write_synthetic_text,
)
from raydeep.datasets.bundled.synthetic import class_counts
from raydeep.errors import DataError

PARAMS = dict(rows=2000, num_classes=4, seq_len=32, vocab_size=256, imbalance_ratio=10.0, seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(ensure_synthetic_text(str(tmp_path_factory.mktemp("cache")), **PARAMS))


def _read(split_dir: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(split_dir.glob("part-*.parquet"))])


def _tokens(t: pa.Table) -> np.ndarray:
    return np.stack(t.column("input_ids").to_numpy(zero_copy_only=False)).astype(np.int64)


def test_deterministic(tmp_path: Path) -> None:
    args = dict(split="train", rows=300, num_classes=3, seq_len=16, vocab_size=64, imbalance_ratio=5, seed=7)
    write_synthetic_text(tmp_path / "a", **args)
    write_synthetic_text(tmp_path / "b", **args)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    write_synthetic_text(tmp_path / "c", **{**args, "seed": 8})
    assert not _read(tmp_path / "a").equals(_read(tmp_path / "c"))


def test_shapes(root: Path) -> None:
    seq_len, vocab = PARAMS["seq_len"], PARAMS["vocab_size"]
    for split in ("train", "val", "test"):
        t = _read(root / split)
        assert str(t.schema.field("input_ids").type) == "list<element: int32>"
        assert str(t.schema.field("label").type) == "int64"
        ids = _tokens(t)
        assert ids.shape == (t.num_rows, seq_len)
        assert ids.min() >= 0 and ids.max() < vocab
        lengths = (ids != 0).sum(axis=1)
        assert lengths.min() >= seq_len // 2 and lengths.max() <= seq_len
        # 0 is only trailing padding: every row is non-zero up to its length, zero after
        assert ((ids != 0) == (np.arange(seq_len)[None, :] < lengths[:, None])).all()


def test_histograms_and_ids(root: Path) -> None:
    k, rows, ratio = PARAMS["num_classes"], PARAMS["rows"], PARAMS["imbalance_ratio"]
    train = label_histogram(open_split(str(root / "train"), key="data.train"), k)
    assert train == class_counts(rows, k, ratio) == long_tail_counts(train[0], k, ratio)
    assert sum(train) <= rows and sum(long_tail_counts(train[0] + 1, k, ratio)) > rows  # the biggest head that fits
    assert train == [1124, 521, 242, 112]
    for split in ("val", "test"):
        assert label_histogram(open_split(str(root / split), key="k"), k) == [rows // 5 // k] * k
    ids = [set(_read(root / s).column("id").to_pylist()) for s in ("train", "val", "test")]
    assert sum(map(len, ids)) == len(set.union(*ids)) == sum(train) + 2 * (rows // 5)
    seqs = [{tuple(r) for r in _tokens(_read(root / s))} for s in ("train", "val")]
    assert not seqs[0] & seqs[1]


def test_manifest(root: Path) -> None:
    m = json.loads((root / "train" / "_raydeep.json").read_text())
    assert m["name"] == "synthetic-text" and m["task"] == "text_classification"
    assert m["feature"] == {"column": "input_ids", "kind": "tokens", "seq_len": 32, "vocab_size": 256, "pad_id": 0}
    assert m["num_classes"] == 4 and len(m["shards"]) == 4 and m["label_histogram"] == [1124, 521, 242, 112]
    assert m["generator"]["seed"] == 0 and m["generator"]["imbalance_ratio"] == 10
    split = open_split(str(root / "val"), key="data.val")
    assert split.feature.vocab_size == 256 and split.feature.seq_len == 32 and len(split.files) == 2


def test_separable(root: Path) -> None:
    """A bag-of-words linear model must nearly solve it, or the generator carries no signal."""
    from sklearn.linear_model import LogisticRegression

    def bow(t: pa.Table) -> np.ndarray:
        ids = _tokens(t)
        x = np.zeros((len(ids), PARAMS["vocab_size"]))
        np.add.at(x, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.reshape(-1)), 1.0)
        x[:, 0] = 0  # padding says nothing
        return x

    train, val = _read(root / "train"), _read(root / "val")
    clf = LogisticRegression(max_iter=1000).fit(bow(train), train.column("label").to_numpy())
    acc = (clf.predict(bow(val)) == val.column("label").to_numpy()).mean()
    assert acc > 0.9, acc


def test_bundled_uri(tmp_path: Path) -> None:
    uri = "datasets://synthetic-text/train?rows=500&num_classes=3&seq_len=16&vocab_size=64&imbalance_ratio=5&seed=1"
    split = open_split(uri, key="data.train", cache_dir=str(tmp_path))
    assert split.feature.seq_len == 16 and split.num_classes == 3
    assert label_histogram(split, 3) == class_counts(500, 3, 5)
    assert open_split(uri.replace("/train", "/val"), key="data.val", cache_dir=str(tmp_path)).num_rows == 99


@pytest.mark.parametrize(
    ("query", "named"),
    [("vocab_size=5", "vocab_size"), ("rows=3", "rows"), ("seq_len=2", "seq_len"),
     ("imbalance_ratio=0.5", "imbalance_ratio")],
)
def test_bad_parameters(tmp_path: Path, query: str, named: str) -> None:
    with pytest.raises(DataError, match=rf"^data\.train: datasets://synthetic-text/train\?{query}: .*{named}"):
        open_split(f"datasets://synthetic-text/train?{query}", key="data.train", cache_dir=str(tmp_path))
    assert not (tmp_path / "synthetic-text").exists() or not any((tmp_path / "synthetic-text").iterdir())
