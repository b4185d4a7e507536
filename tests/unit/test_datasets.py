"""open_split / label_histogram / FeatureSpec / manifests: what is accepted and every error a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydeep.datasets import FeatureSpec, label_histogram, open_split, write_manifest, write_split
from raydeep.datasets import scan
from raydeep.datasets.manifest import publish_dir
from raydeep.datasets.scan import fits_in_memory, memory_bytes
from raydeep.datasets.schema import pixels_array, tokens_array
from raydeep.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def tokens_table(labels: list[int], seq_len: int = 8, start_id: int = 0) -> pa.Table:
    n = len(labels)
    ids = (np.arange(n * seq_len).reshape(n, seq_len) % 50) + 1
    return pa.table({"input_ids": tokens_array(ids, seq_len), "label": pa.array(labels, pa.int64()),
                     "id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64))})


def pixels_table(labels: list[int], width: int = 16) -> pa.Table:
    return pa.table({"pixels": pixels_array(np.full((len(labels), width), 0.5), width),
                     "label": pa.array(labels, pa.int64())})


def write_shards(d: Path, *tables: pa.Table) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, t in enumerate(tables):
        paths.append(d / f"part-{i:05d}.parquet")
        pq.write_table(t, paths[-1])
    return paths


# ---------------------------------------------------------------------------------------------
# FeatureSpec


@pytest.mark.parametrize(
    "spec",
    [
        FeatureSpec(column="input_ids", kind="tokens", seq_len=32, vocab_size=256),
        FeatureSpec(column="input_ids", kind="tokens", seq_len=7),
        FeatureSpec(column="pixels", kind="image", image_shape=(3, 4, 5)),
    ],
)
def test_feature_spec_json_round_trip(spec: FeatureSpec) -> None:
    back = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and hash(back) == hash(spec)


def test_feature_spec_forms() -> None:
    spec = FeatureSpec.from_dict({"column": "pixels", "kind": "image", "image_shape": [1, 8, 8]})
    assert spec.image_shape == (1, 8, 8) and spec.width == 64
    assert FeatureSpec(column="input_ids", kind="tokens", seq_len=5).width == 5
    for bad in ({"column": "x", "kind": "tokens"}, {"column": "x", "kind": "image", "shape": [8, 8]},
                {"column": "x", "kind": "audio", "seq_len": 3}, {"kind": "tokens", "seq_len": 3}):
        with pytest.raises(ValueError):
            FeatureSpec.from_dict(bad)


# ---------------------------------------------------------------------------------------------
# Accepted forms


def test_directory_file_and_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_shards(tmp_path / "d", tokens_table([0, 1, 2]), tokens_table([1, 1], start_id=3))
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / "sub").mkdir()
    pq.write_table(tokens_table([0]), tmp_path / "d" / "sub" / "part-00000.parquet")  # not recursive

    d = open_split(str(tmp_path / "d"), key="data.train")
    assert d.files == [str(p) for p in paths] and d.num_rows == 5 and d.manifest is None
    assert d.feature == FeatureSpec(column="input_ids", kind="tokens", seq_len=8)
    assert d.num_classes is None and d.label_names is None and d.has_ids
    assert label_histogram(d, 3) == [1, 3, 1]

    f = open_split(str(paths[1]), key="data.val")
    assert f.files == [str(paths[1])] and f.num_rows == 2

    monkeypatch.chdir(tmp_path)  # relative globs resolve against the working directory
    g = open_split("d/*.parquet", key="data.train")
    assert g.files == d.files and g.num_rows == 5
    assert open_split("file://" + str(tmp_path / "d"), key="k").files == d.files


def test_pixels_inferred_square(tmp_path: Path) -> None:
    write_shards(tmp_path, pixels_table([0, 1], width=16))
    s = open_split(str(tmp_path), key="data.train")
    assert s.feature.kind == "image" and s.feature.image_shape == (1, 4, 4) and not s.has_ids


def test_variable_list_pixels_use_first_row(tmp_path: Path) -> None:
    t = pa.table({"pixels": pa.array([[0.1] * 9, [0.2] * 9], pa.list_(pa.float32())), "label": [0, 1]})
    write_shards(tmp_path, t)
    assert open_split(str(tmp_path), key="k").feature.image_shape == (1, 3, 3)


def test_manifest_used_and_subset(tmp_path: Path) -> None:
    table = pa.table({"pixels": pixels_array(np.zeros((6, 12)), 12), "label": pa.array([0, 1, 2, 0, 1, 2], pa.int64())})
    feature = FeatureSpec(column="pixels", kind="image", image_shape=(3, 2, 2))  # 12: not a square
    m = write_split(tmp_path, table, name="t", split="train", task="image_classification", feature=feature,
                    num_classes=3, label_names=["a", "b", "c"], shards=3)
    assert m["label_histogram"] == [2, 2, 2] and [s["rows"] for s in m["shards"]] == [2, 2, 2]
    whole = open_split(str(tmp_path), key="data.train")
    assert whole.feature == feature and whole.num_classes == 3 and whole.label_names == ["a", "b", "c"]
    assert whole.manifest == m
    # A glob over part of the set keeps the manifest's schema facts but not the manifest itself
    part = open_split(str(tmp_path / "part-0000[01].parquet"), key="data.train")
    assert part.feature == feature and part.num_rows == 4 and part.manifest is None and part.num_classes == 3
    assert open_split(str(tmp_path / "part-*.parquet"), key="k").manifest == m


def test_write_split_caps_shards_and_manifest_is_atomic(tmp_path: Path) -> None:
    m = write_split(tmp_path, tokens_table([0, 1]), name="t", split="val", task="text_classification",
                    feature=FeatureSpec(column="input_ids", kind="tokens", seq_len=8), num_classes=2,
                    label_names=["0", "1"], shards=4)
    assert [s["rows"] for s in m["shards"]] == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_raydeep.json", "part-00000.parquet", "part-00001.parquet"]
    write_manifest(tmp_path, {**m, "name": "u"})
    assert json.loads((tmp_path / "_raydeep.json").read_text())["name"] == "u"
    assert len(list(tmp_path.iterdir())) == 3  # no temp file left behind


def test_publish_dir_is_all_or_nothing(tmp_path: Path) -> None:
    final = tmp_path / "set"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        publish_dir(final, broken)
    assert list(tmp_path.iterdir()) == []  # neither the set nor a temp dir

    def racing(tmp: Path) -> None:
        (tmp / "mine").write_text("loser")
        final.mkdir()  # another writer finishes first
        (final / "theirs").write_text("winner")

    assert publish_dir(final, racing) == final
    assert [p.name for p in tmp_path.iterdir()] == ["set"] and [p.name for p in final.iterdir()] == ["theirs"]
    assert publish_dir(final, broken) == final  # present: never rebuilt


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYDEEP_CACHE", str(tmp_path))
    s = open_split("datasets://synthetic-text/val?rows=100&num_classes=2&seq_len=8", key="data.val")
    assert s.files[0].startswith(str(tmp_path)) and s.num_rows == 20


def test_import_needs_neither_ray_nor_trainers() -> None:
    code = ("import sys, raydeep.datasets; "
            "bad = [m for m in ('ray', 'raydeep.trainers', 'sklearn') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the key and the path (or column, or parameter)


def _error(uri: str, key: str = "data.train", **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        open_split(uri, key=key, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{key}: ")
    return msg


def test_missing_path(tmp_path: Path) -> None:
    msg = _error(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in msg and "does not exist" in msg


def test_no_parquet_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("label\n1\n")
    assert "no parquet files" in _error(str(tmp_path)) and str(tmp_path) in _error(str(tmp_path))
    assert "no path matches" in _error(str(tmp_path / "zz*.parquet"))
    assert "no parquet files match" in _error(str(tmp_path / "*.csv"))
    msg = _error(str(tmp_path / "a.csv"))
    assert "a.csv" in msg and ".parquet" in msg


def test_corrupt_file(tmp_path: Path) -> None:
    write_shards(tmp_path, tokens_table([0]))
    (tmp_path / "x.parquet").write_text("this is not parquet")
    msg = _error(str(tmp_path), key="data.val")
    assert str(tmp_path / "x.parquet") in msg and "not a readable parquet file" in msg


def test_zero_rows(tmp_path: Path) -> None:
    write_shards(tmp_path, tokens_table([0]).slice(0, 0))
    msg = _error(str(tmp_path / "part-00000.parquet"))
    assert "zero rows" in msg and "part-00000.parquet" in msg


def test_no_label(tmp_path: Path) -> None:
    write_shards(tmp_path, tokens_table([0]).drop_columns(["label"]))
    shard = tmp_path / "part-00000.parquet"
    assert _error(str(tmp_path)) == (f"data.train: {shard}: no 'label' column (columns: input_ids, id); a "
                                     "classification split needs one (unlabelled input_ids blocks are for "
                                     "model.task: causal_lm)")
    assert "a regression split needs one" in _error(str(tmp_path), label_kind="value")


def lm_split(d: Path, *, eos_id: object = 2, rows: int = 6) -> Path:
    """Packed causal-LM blocks as ``data prepare --task lm`` writes them: input_ids only, pad_id -1."""
    ids = (np.arange(rows * 8).reshape(rows, 8) % 40) + 3
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=8, vocab_size=50, pad_id=-1)
    manifest = write_split(d, pa.table({"input_ids": tokens_array(ids, 8)}), name="lm", split="train",
                           task="causal_lm", feature=feature, num_classes=None, label_names=None, shards=2)
    write_manifest(d, {**manifest, "eos_id": eos_id, "block_size": 8})
    return d


def test_label_kind_none_opens_blocks_without_a_label(tmp_path: Path) -> None:
    split = open_split(str(lm_split(tmp_path / "lm")), key="data.train", label_kind="none")
    assert (split.eos_id, split.task, split.feature.pad_id, split.feature.seq_len) == (2, "causal_lm", -1, 8)
    assert split.columns == ["input_ids"] and not split.has_labels and split.num_rows == 6
    # One shard by name drops the manifest's counts, not its facts.
    one = open_split(str(tmp_path / "lm" / "part-00000.parquet"), key="data.train", label_kind="none")
    assert one.manifest is None and one.eos_id == 2 and one.feature.pad_id == -1
    labelled = open_split(str(write_shards(tmp_path / "c", tokens_table([0, 1]))[0]), key="k")
    assert labelled.columns == ["input_ids", "label"] and labelled.eos_id is None


def test_label_kind_none_errors_are_one_line(tmp_path: Path) -> None:
    write_shards(tmp_path / "c", tokens_table([0, 1]))
    assert _error(str(tmp_path / "c"), label_kind="none") == (
        f"data.train: {tmp_path / 'c' / 'part-00000.parquet'}: has a 'label' column: this is labelled data; a task: "
        "causal_lm run reads only input_ids (prepare blocks with raydeep data prepare --task lm)")
    write_shards(tmp_path / "p", pixels_table([0, 1]).drop_columns(["label"]))
    assert "the feature column is 'pixels' (image); a task: causal_lm run reads token ids from 'input_ids'" in _error(
        str(tmp_path / "p"), label_kind="none")
    lm_split(tmp_path / "bad", eos_id=None)
    assert _error(str(tmp_path / "bad"), label_kind="none") == (
        f"data.train: {tmp_path / 'bad' / '_raydeep.json'}: 'eos_id' is None; a causal_lm manifest needs the "
        "integer id that ends every document")


def test_string_labels(tmp_path: Path) -> None:
    t = tokens_table([0, 1]).set_column(1, "label", pa.array(["cat", "dog"]))
    write_shards(tmp_path, t)
    msg = _error(str(tmp_path))
    assert "'label'" in msg and "string" in msg and "integer" in msg


def test_no_feature_column(tmp_path: Path) -> None:
    write_shards(tmp_path, pa.table({"text": ["a", "b"], "label": [0, 1]}))
    msg = _error(str(tmp_path))
    assert "'input_ids'" in msg and "'pixels'" in msg and "part-00000.parquet" in msg


def test_pixels_without_shape(tmp_path: Path) -> None:
    write_shards(tmp_path, pixels_table([0, 1], width=12))
    msg = _error(str(tmp_path))
    assert "'pixels'" in msg and "12" in msg and "_raydeep.json" in msg


def test_wrong_feature_type(tmp_path: Path) -> None:
    write_shards(tmp_path, pa.table({"input_ids": ["1 2 3"], "label": [0]}))
    assert "'input_ids'" in _error(str(tmp_path))


def test_different_schemas(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, tokens_table([0]), pixels_table([1]))
    msg = _error(str(tmp_path))
    assert str(paths[1]) in msg and str(paths[0]) in msg and "schema differs" in msg


def test_stale_manifest(tmp_path: Path) -> None:
    write_split(tmp_path, tokens_table([0, 1, 0, 1]), name="t", split="train", task="text_classification",
                feature=FeatureSpec(column="input_ids", kind="tokens", seq_len=8), num_classes=2,
                label_names=["0", "1"], shards=2)
    pq.write_table(tokens_table([1], start_id=9), tmp_path / "part-00002.parquet")
    msg = _error(str(tmp_path))
    assert "_raydeep.json" in msg and "part-00002.parquet" in msg
    (tmp_path / "_raydeep.json").write_text("{not json")
    assert "_raydeep.json" in _error(str(tmp_path))


def test_unsupported_scheme() -> None:
    # A scheme raydeep does not read (s3:// is supported: tests/integration/test_s3.py); the
    # error names it and points at the forms that work, s3:// among them, without any network.
    msg = _error("gs://bucket/train")
    assert "gs:// is not supported" in msg and "s3://BUCKET/PREFIX" in msg


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("datasets://digits-lt/train?ratio=3", "unknown parameter 'ratio'; allowed: imbalance_ratio, seed"),
        ("datasets://digits-lt/train?seed=abc", "seed = 'abc': expected an integer"),
        ("datasets://digits-lt/train?seed=1&seed=2", "given twice"),
        ("datasets://digits-lt/dev", "split must be one of train, val, test"),
        ("datasets://cifar/train", "unknown bundled data set 'cifar'; known: digits-lt, synthetic-text"),
        ("datasets://synthetic-text/train?imbalance_ratio=nan", "expected a finite number"),
    ],
)
def test_bundled_uri_errors(tmp_path: Path, uri: str, fragment: str) -> None:
    msg = _error(uri, cache_dir=str(tmp_path))
    assert uri in msg and fragment in msg


# ---------------------------------------------------------------------------------------------
# label_histogram


def test_label_out_of_range(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, tokens_table([0, 9]), tokens_table([3, 12, 4]))
    split = open_split(str(tmp_path), key="data.train")
    with pytest.raises(DataError) as info:
        label_histogram(split, 10)
    assert str(info.value) == f"data.train: {paths[1]}: label 12 outside [0, 10) (model.num_classes = 10)"
    with pytest.raises(DataError, match=r"label -1 outside"):
        write_shards(tmp_path, tokens_table([0, -1]))
        label_histogram(open_split(str(tmp_path), key="data.train"), 10)


def test_null_labels(tmp_path: Path) -> None:
    t = tokens_table([0, 1]).set_column(1, "label", pa.array([0, None], pa.int64()))
    paths = write_shards(tmp_path, t)
    with pytest.raises(DataError) as info:
        label_histogram(open_split(str(tmp_path), key="data.val"), 2)
    assert str(info.value).startswith(f"data.val: {paths[0]}: 1 null label")


def test_unreadable_label_column(tmp_path: Path) -> None:
    paths = write_shards(tmp_path, tokens_table([0, 1]))
    split = open_split(str(tmp_path), key="data.train")
    paths[0].write_bytes(b"garbage" * 10)  # replaced after the footers were checked
    with pytest.raises(DataError, match=rf"^data\.train: {paths[0]}: cannot read the 'label' column"):
        label_histogram(split, 2)


def test_histogram_counts_every_file(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 5, 1000)
    write_shards(tmp_path, *(tokens_table(chunk.tolist()) for chunk in np.array_split(labels, 7)))
    split = open_split(str(tmp_path), key="k")
    assert split.num_rows == 1000 and label_histogram(split, 5) == np.bincount(labels, minlength=5).tolist()
    assert label_histogram(split, 6)[-1] == 0


def test_nullability_differences_are_not_schema_differences(tmp_path: Path) -> None:
    t = tokens_table([0, 1])
    strict = t.cast(pa.schema([pa.field("input_ids", pa.list_(pa.field("element", pa.int32(), nullable=False))),
                               pa.field("label", pa.int64(), nullable=False), pa.field("id", pa.int64())]))
    write_shards(tmp_path, t, strict)
    assert open_split(str(tmp_path), key="k").num_rows == 4


# ---------------------------------------------------------------------------------------------
# Caching a small split (data.materialize_max_mb): decided by its size in memory, not on storage

ROWS, SEQ = 2000, 128
IN_MEMORY = ROWS * SEQ * 4 + ROWS * 8  # input_ids int32 values + int64 labels; the id column is not read


def compressible_split(d: Path) -> Path:
    """2000 rows x 128 token ids that are all 7: about 1 MB in memory, a few KB of parquet
    (dictionary + run-length encoding before any compression, so the footers' own
    ``total_byte_size`` is a few KB too), in two files of several row groups."""
    d.mkdir()
    for i in range(2):
        t = tokens_table([0] * (ROWS // 2), seq_len=SEQ)
        t = t.set_column(0, "input_ids", tokens_array(np.full((ROWS // 2, SEQ), 7), SEQ))
        pq.write_table(t, d / f"part-{i:05d}.parquet", row_group_size=300)
    return d


def test_memory_bytes_counts_decoded_values_of_the_columns_read(tmp_path: Path) -> None:
    split = open_split(str(compressible_split(tmp_path / "d")), key="data.train")
    assert sum(os.path.getsize(f) for f in split.files) < 50_000  # on storage
    assert memory_bytes(split, ["input_ids", "label"]) == IN_MEMORY == 1_040_000
    assert memory_bytes(split, ["input_ids", "label", "id"]) == IN_MEMORY + ROWS * 8
    # Fixed-size lists and floats: values x width too.
    features = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30, dtype=np.float32)), 3)
    pq.write_table(pa.table({"features": features, "label": pa.array(np.ones(10))}), tmp_path / "r.parquet")
    regression = open_split(str(tmp_path / "r.parquet"), key="k", label_kind="value")
    assert memory_bytes(regression, ["features", "label"]) == 10 * 3 * 4 + 10 * 8


def test_a_split_small_on_storage_but_large_in_memory_streams(tmp_path: Path) -> None:
    # fits_in_memory is the whole decision: True = held in memory, False = stream.
    split = open_split(str(compressible_split(tmp_path / "d")), key="data.train")
    for limit, path in [(IN_MEMORY - 1, "stream"), (IN_MEMORY, "cache"), (2 * IN_MEMORY, "cache"), (0, "stream")]:
        taken = "cache" if fits_in_memory(split, ["input_ids", "label"], limit) else "stream"
        assert taken == path, limit


def test_the_decision_reuses_the_footers_open_split_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = open_split(str(compressible_split(tmp_path / "d")), key="data.train")

    def no_footers(*args: object, **kwargs: object) -> None:
        raise AssertionError("read a footer")

    monkeypatch.setattr(scan, "read_footer", no_footers)
    assert not scan.fits_in_memory(split, ["input_ids", "label"], IN_MEMORY - 1)
    assert scan.fits_in_memory(split, ["input_ids", "label"], IN_MEMORY)
