"""``raydeep data inspect`` without Ray: manifests, scans, decoded samples, bad pixels, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydeep.datasets import FeatureSpec, open_split, write_split
from raydeep.datasets.inspect import inspect_path, label_counts, label_kind
from raydeep.datasets.manifest import INCOMPLETE_NAME, PREPARED_NAME, read_manifest, write_manifest
from raydeep.datasets.schema import pixels_array, tokens_array
from raydeep.datasets.prepare.tokenizer import encode, sha256, train_tokenizer
from raydeep.datasets.scan import check_finite
from raydeep.errors import DataError
from tests.conftest import run_cli

TEXTS = ["the quick brown fox", "jumps over the lazy dog", "a stitch in time", "saves nine"]


def prepared_set(root: Path) -> Path:
    """A tiny prepared set, as ``data prepare`` lays it out, built without Ray."""
    tok = train_tokenizer("bpe", iter(TEXTS * 3), vocab_size=300)
    data = tok.to_str().encode()
    root.mkdir()
    (root / "tokenizer.json").write_bytes(data)
    ids, lengths = encode(tok, TEXTS, max_len=8, pad_id=0)
    table = pa.table({"input_ids": tokens_array(ids, 8), "label": pa.array([0, 1, 1, 0], pa.int64()),
                      "id": pa.array(np.arange(4, dtype=np.int64)), "num_tokens": pa.array(lengths, pa.int32())})
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=8, vocab_size=tok.get_vocab_size(), pad_id=0)
    manifest = write_split(root / "train", table, name="tiny", split="train", task="text_classification",
                           feature=feature, num_classes=2, label_names=["animals", "proverbs"], shards=2)
    manifest["tokenizer"] = {"file": "../tokenizer.json", "sha256": sha256(data), "vocab_size": 300, "pad_id": 0,
                             "source": "trained bpe"}
    manifest["truncated"], manifest["max_len"] = int((lengths > 8).sum()), 8
    write_manifest(root / "train", manifest)
    (root / PREPARED_NAME).write_text(json.dumps({"name": "tiny", "input": "x.jsonl", "label_names": ["animals", "proverbs"],
                                                  "splits": {"train": {"num_rows": 4}}, "skipped": 0}))
    return root


def test_split_report_decodes_samples(tmp_path: Path) -> None:
    root = prepared_set(tmp_path / "ds")
    text = inspect_path(str(root / "train"), samples=2)
    assert "rows: 4 in 2 shard(s) (2 rows each); manifest: yes" in text
    assert "input_ids list<element: int32>" in text and "labels (2, from the manifest)" in text
    assert "animals" in text and "proverbs" in text
    assert '"the quick brown fox"' in text  # decoded with the set's own tokenizer, padding dropped
    assert "truncated to 8 tokens:" in text


def test_root_report_covers_every_split(tmp_path: Path) -> None:
    root = prepared_set(tmp_path / "ds")
    text = inspect_path(str(root), samples=1)
    assert text.startswith(f"{root}: prepared data set 'tiny'") and f"{root}/train" in text
    with pytest.raises(DataError, match="prepared data set's root; name one split, e.g. .*/train"):
        open_split(str(root), key="data.train")


def test_tampered_tokenizer_is_flagged(tmp_path: Path) -> None:
    root = prepared_set(tmp_path / "ds")
    (root / "tokenizer.json").write_text((root / "tokenizer.json").read_text().replace('"[PAD]"', '"[PAD] "', 1))
    assert "sha256 differs from the manifest's" in inspect_path(str(root / "train"))


def test_without_manifest_counts_come_from_a_label_scan(tmp_path: Path) -> None:
    tmp_path.joinpath("d").mkdir()
    for i, labels in enumerate([[0, 2, 2], [5]]):
        pq.write_table(pa.table({"input_ids": tokens_array(np.ones((len(labels), 3)), 3),
                                 "label": pa.array(labels, pa.int64())}), tmp_path / "d" / f"p{i}.parquet")
    split = open_split(str(tmp_path / "d"), key="k")
    assert label_counts(split) == {0: 1, 2: 2, 5: 1}
    text = inspect_path(str(tmp_path / "d"))
    assert "manifest: none" in text and "from the scan of the label column" in text and "3 tokens: [1, 1, 1]" in text


def test_nan_and_inf_pixels_are_refused(tmp_path: Path) -> None:
    px = np.full((4, 16), 0.5, dtype=np.float32)
    px[2, 7] = np.nan
    pq.write_table(pa.table({"pixels": pixels_array(px, 16), "label": pa.array([0, 1, 0, 1], pa.int64())}),
                   tmp_path / "a.parquet", row_group_size=2)
    split = open_split(str(tmp_path), key="data.train")
    with pytest.raises(DataError) as info:
        check_finite(split)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"data.train: {tmp_path / 'a.parquet'}: row group 1, row 0:")
    assert "NaN or inf" in msg
    px[2, 7] = np.inf
    pq.write_table(pa.table({"pixels": pixels_array(px, 16), "label": pa.array([0, 1, 0, 1], pa.int64())}),
                   tmp_path / "a.parquet")
    with pytest.raises(DataError, match="row group 0, row 2: 'pixels' holds inf"):
        inspect_path(str(tmp_path))
    px[2, 7] = 0.0
    pq.write_table(pa.table({"pixels": pixels_array(px, 16), "label": pa.array([0, 1, 0, 1], pa.int64())}),
                   tmp_path / "a.parquet")
    assert "pixels: all finite" in inspect_path(str(tmp_path))


def test_unfinished_split_is_refused(tmp_path: Path) -> None:
    root = prepared_set(tmp_path / "ds")
    (root / "train" / INCOMPLETE_NAME).write_text("")
    with pytest.raises(DataError, match="did not finish writing this split; run it again"):
        open_split(str(root / "train"), key="data.train")
    assert read_manifest(root / "train" / "_raydeep.json", key="k")["num_rows"] == 4


def test_cli_inspect(tmp_path: Path) -> None:
    root = prepared_set(tmp_path / "ds")
    ok = run_cli("data", "inspect", str(root / "train"), "--samples", "1", timeout=120)
    assert ok.returncode == 0 and "proverbs" in ok.stdout, ok.stderr
    bad = run_cli("data", "inspect", str(tmp_path / "nope"), timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"raydeep: error: inspect: {tmp_path / 'nope'}: path does not exist"


# ---------------------------------------------------------------------------------------------
# Regression splits: target statistics instead of a histogram


def regression_dir(d: Path, parts: list[list[float]], width: int = 10) -> Path:
    """Shards without a manifest: ``features`` fixed_size_list<float32>[width] (row i of a shard
    holds i*width .. i*width+width-1), ``label`` float64."""
    d.mkdir()
    for i, labels in enumerate(parts):
        x = np.arange(len(labels) * width, dtype=np.float32).reshape(len(labels), width)
        pq.write_table(pa.table({"features": pixels_array(x, width), "label": pa.array(labels, pa.float64())}),
                       d / f"p{i}.parquet")
    return d


def test_regression_split_reports_target_statistics(tmp_path: Path) -> None:
    # population std of [2, 4, 4, 4, 5, 5, 7, 9] is exactly 2, its mean 5; across two shards
    d = regression_dir(tmp_path / "d", [[2.0, 4.0, 4.0, 4.0], [5.0, 5.0, 7.0, 9.0]])
    assert label_kind(open_split(str(d), key="k", label_kind="any")) == "value"
    lines = inspect_path(str(d), samples=2).splitlines()
    assert lines == [
        str(d),
        "  rows: 8 in 2 shard(s); manifest: none (counts from a scan)",
        "  schema: features fixed_size_list<element: float>[10], label double",
        "  feature: numeric in 'features', 10 value(s) per row",
        "  features: all finite",
        "  targets (double 'label', from a scan of the label column): count 8, min 2, max 9, mean 5, std 2",
        "  first 2 row(s) of p0.parquet:",
        "    [label 2] 10 value(s): [0, 1, 2, 3, 4, 5, 6, 7, …]",
        "    [label 4] 10 value(s): [10, 11, 12, 13, 14, 15, 16, 17, …]",
    ]


def test_bundled_seed_regression_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYDEEP_CACHE", str(tmp_path))
    text = inspect_path("datasets://seed-regression/train", samples=5)
    # y = 2x on x = 1..5: mean 6, population std sqrt(8)
    assert "  targets (double 'label', from a scan of the label column): count 5, min 2, max 10, mean 6, " \
           "std 2.82843" in text.splitlines()
    assert "manifest: yes" in text and "labels (" not in text
    assert "    [id 4, label 10] 1 value(s): [5]" in text.splitlines()


def test_integer_targets_of_a_regression_manifest_get_statistics(tmp_path: Path) -> None:
    table = pa.table({"features": pixels_array(np.ones((3, 2)), 2), "label": pa.array([1, 2, 6], pa.int64())})
    write_split(tmp_path / "r", table, name="r", split="train", task="regression",
                feature=FeatureSpec(column="features", kind="numeric", num_features=2),
                num_classes=None, label_names=None, shards=1)
    text = inspect_path(str(tmp_path / "r"), samples=1)
    assert "  targets (int64 'label', from a scan of the label column): count 3, min 1, max 6, mean 3, " \
           "std 2.16025" in text.splitlines()
    assert "    [label 1] 2 value(s): [1, 1]" in text.splitlines()


def test_nan_target_fails_inspect(tmp_path: Path) -> None:
    d = regression_dir(tmp_path / "d", [[1.0, float("nan")]], width=2)
    with pytest.raises(DataError) as info:
        inspect_path(str(d))
    assert str(info.value) == f"inspect: {d / 'p0.parquet'}: row 1: target nan in 'label' is not finite"


def classification_manifest_with_float_labels(tmp_path: Path) -> Path:
    """A digits-like classification split (two shards) whose shards were rewritten with float labels."""
    table = pa.table({"pixels": pixels_array(np.zeros((2, 4)), 4), "label": pa.array([0, 1], pa.int64())})
    write_split(tmp_path / "c", pa.concat_tables([table, table]), name="c", split="train",
                task="image_classification", feature=FeatureSpec(column="pixels", kind="image", image_shape=(1, 2, 2)),
                num_classes=2, label_names=["a", "b"], shards=2)
    for i in range(2):
        pq.write_table(table.set_column(1, "label", pa.array([0.0, 1.5])), tmp_path / "c" / f"part-0000{i}.parquet")
    return tmp_path / "c" / "part-00000.parquet"


def test_float_labels_under_a_classification_manifest_are_one_line(tmp_path: Path) -> None:
    shard = classification_manifest_with_float_labels(tmp_path)
    with pytest.raises(DataError) as info:
        inspect_path(str(shard.parent))
    assert str(info.value) == (f"inspect: {shard}: column 'label' is double, but its _raydeep.json says task "
                               "'image_classification', which needs integer class ids (int64)")
    # One of the two shards by name: the manifest's counts no longer apply, its class count still does.
    with pytest.raises(DataError) as info:
        inspect_path(str(shard))
    assert str(info.value) == (f"inspect: {shard}: column 'label' is double, but its _raydeep.json says "
                               "num_classes 2, which needs integer class ids (int64)")
    bad = run_cli("data", "inspect", str(shard.parent), timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"raydeep: error: inspect: {shard}: column 'label' is double, but its _raydeep.json says task "
        "'image_classification', which needs integer class ids (int64)"]


def test_labels_that_fit_neither_task_are_one_line(tmp_path: Path) -> None:
    table = pa.table({"features": pixels_array(np.ones((2, 2)), 2), "label": pa.array(["x", "y"])})
    write_split(tmp_path / "r", table, name="r", split="train", task="regression",
                feature=FeatureSpec(column="features", kind="numeric", num_features=2),
                num_classes=None, label_names=None, shards=1)
    with pytest.raises(DataError) as info:
        inspect_path(str(tmp_path / "r"))
    assert str(info.value) == (f"inspect: {tmp_path / 'r' / 'part-00000.parquet'}: column 'label' is string, but its "
                               "_raydeep.json says task 'regression', which needs numeric targets (float32/float64, "
                               "or an integer type)")
    (tmp_path / "r" / "_raydeep.json").unlink()
    with pytest.raises(DataError) as info:
        inspect_path(str(tmp_path / "r"))
    assert str(info.value) == (f"inspect: {tmp_path / 'r' / 'part-00000.parquet'}: column 'label' is string, "
                               "expected an integer type (int64) for class ids, or a float type for regression targets")


def test_unlabelled_token_blocks_show_blocks_not_labels(tmp_path: Path) -> None:
    """Causal-LM blocks without a manifest: token ids only, no label histogram."""
    (tmp_path / "lm").mkdir()
    pq.write_table(pa.table({"input_ids": tokens_array(np.arange(32).reshape(4, 8) + 1, 8)}),
                   tmp_path / "lm" / "part-00000.parquet")
    text = inspect_path(str(tmp_path / "lm"), samples=1)
    assert "causal-LM blocks: 4 of 8 tokens (32 tokens)" in text and "labels (" not in text
    assert "[block 0] 8 tokens: [1, 2, 3, 4, 5, 6, 7, 8]" in text
