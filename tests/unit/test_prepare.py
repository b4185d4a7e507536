"""``raydeep data prepare`` without Ray: record parsing, labels, splits, tokenizers, and every bad input.

The scan function (``_scan``) and its driver side (``_plan``) are the code Ray runs; calling them
directly checks the exact one-line messages in milliseconds. ``tests/integration/test_ingest.py``
runs the same cases through Ray once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydeep.datasets.prepare.pipeline import (
    PrepareOptions,
    Location,
    _commit,
    _plan,
    _scan,
    assign_splits,
    check_options,
    label_names,
    list_inputs,
    locate,
    prepare,
)
from raydeep.datasets.prepare.raw_records import Bad, FieldNames, normalize_label, read_records
from raydeep.datasets.prepare.tokenizer import encode, load_tokenizer, pad_id_of, train_tokenizer
from raydeep.errors import DataError
from tests.conftest import run_cli

FS = fsspec.filesystem("file")


def records(path: Path, fmt: str, **fields: str) -> list:
    return list(read_records(FS, str(path), fmt, FieldNames(**fields)))


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def scan(paths: list[Path], fmt: str, *, on_bad: str = "error", known: set[str] | None = None,
         **opts) -> dict:
    """The scan as Ray runs it (one unit per file), then the driver's plan."""
    rows = []
    for i, p in enumerate(paths):
        out = _scan({"unit": [i], "files": [json.dumps([[str(p), None]])]}, fs=FS, fmt=fmt, fields=FieldNames(),
                    on_bad=on_bad, known=known)
        rows.append({k: v[0] for k, v in out.items()})
    o = PrepareOptions(input=str(paths[0]), format=fmt, output="unused", train_tokenizer="bpe",
                       on_bad_record=on_bad, **opts)
    return _plan(o, rows, log=lambda s: None)


# ---------------------------------------------------------------------------------------------
# Reading records


def test_jsonl_csv_parquet_text_dirs_records(tmp_path: Path) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello", "label": "pos"}, "", {"text": "bye", "label": 3.0}])
    assert records(j, "jsonl") == [("hello", "pos"), ("bye", 3)]
    c = tmp_path / "a.csv"
    c.write_text('label,text\n1,"a, quoted\nline"\nneg,plain\n')
    assert records(c, "csv") == [("a, quoted\nline", 1), ("plain", "neg")]
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x", "y"], "y": [0, 1]}), p)
    assert records(p, "parquet", text="body", label="y") == [("x", 0), ("y", 1)]
    (tmp_path / "t.txt").write_text("some text\n")
    assert list(read_records(FS, str(tmp_path / "t.txt"), "text-dirs", dir_label="sports")) == [("some text\n", "sports")]


@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), ("pos", "pos"), (" 7 ", 7)])
def test_normalize_label(value, expected) -> None:
    assert normalize_label(value, from_text=True) == expected


def test_normalize_label_in_json_keeps_digit_strings() -> None:
    assert normalize_label("7", from_text=False) == "7"


@pytest.mark.parametrize("value, why", [(None, "no label"), (True, "boolean"), (1.5, "not an integer"),
                                        (float("nan"), "not an integer"), ("", "empty label"), ([1], "list")])
def test_bad_labels(value, why) -> None:
    with pytest.raises(ValueError, match=why):
        normalize_label(value, from_text=False)


def test_bad_jsonl_records_name_the_line(tmp_path: Path) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok", "label": 1}, '{"text": "broken', "[1, 2]",
                                           {"txt": "x", "label": 1}, {"text": "", "label": 1},
                                           {"text": "x", "label": 2.5}, {"text": 5, "label": 1}])
    bad = [r for r in records(j, "jsonl") if isinstance(r, Bad)]
    assert [(b.where, b.why.split(" (")[0]) for b in bad] == [
        ("line 2", "not valid JSON"), ("line 3", "expected a JSON object, got list"),
        ("line 4", "no 'text' field"), ("line 5", "empty text"), ("line 6", "label 2.5 is not an integer or a string"),
        ("line 7", "text is a int, expected a string")]
    assert str(bad[0]).startswith(f"{j}: line 2: not valid JSON")
    assert "set --text-field" in bad[2].why


def test_bad_csv_records_and_header(tmp_path: Path) -> None:
    c = tmp_path / "a.csv"
    c.write_text("text,label\ngood,1\nonly-one-field\ntoo,many,fields\n")
    bad = [r for r in records(c, "csv") if isinstance(r, Bad)]
    assert [(b.where, b.why) for b in bad] == [("line 3", "expected 2 fields, got 1"), ("line 4", "expected 2 fields, got 3")]
    c.write_text("body,label\nx,1\n")
    with pytest.raises(DataError) as info:
        records(c, "csv")
    assert "no column 'text' in the csv header (columns: body, label); set --text-field" in one_line(info)


def test_non_integer_labels_in_parquet(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [1.0, 1.5]}), p)
    bad = [r for r in records(p, "parquet") if isinstance(r, Bad)]
    assert str(bad[0]) == f"{p}: row group 0, row 1: label 1.5 is not an integer or a string"
    pq.write_table(pa.table({"text": ["a"], "label": pa.array([[1]])}), p)
    with pytest.raises(DataError, match=r"column .label. is list<.*>, expected integer or string labels"):
        records(p, "parquet")


def test_corrupt_parquet_row_group_is_named(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [f"text {i}" * 20 for i in range(200)], "label": list(range(200))}), p,
                   row_group_size=100, compression="snappy")
    md = pq.ParquetFile(p).metadata
    col = md.row_group(0).column(0)
    data = bytearray(p.read_bytes())
    start = col.data_page_offset
    data[start + 10:start + 200] = b"\xff" * 190  # garbage inside row group 0's first page
    p.write_bytes(bytes(data))
    out = records(p, "parquet")
    bad = [r for r in out if isinstance(r, Bad)]
    assert len(bad) == 1 and bad[0].where == "row group 0" and bad[0].rows == 100
    assert "unreadable" in bad[0].why
    assert len([r for r in out if not isinstance(r, Bad)]) == 100  # row group 1 still read


def test_not_parquet_at_all(tmp_path: Path) -> None:
    p = tmp_path / "a.parquet"
    p.write_text("nope")
    with pytest.raises(DataError) as info:
        records(p, "parquet")
    assert one_line(info).startswith(f"{p}: not a readable parquet file")


# ---------------------------------------------------------------------------------------------
# Scan + plan: the messages a user sees


def test_error_mode_stops_at_first_bad_record(tmp_path: Path) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": 0}, "{oops", {"text": "b", "label": 1}])
    with pytest.raises(DataError) as info:
        scan([j], "jsonl")
    msg = one_line(info)
    assert msg.startswith(f"{j}: line 2: not valid JSON") and "--on-bad-record skip" in msg


def test_skip_mode_counts(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)] + ["{oops", {"text": "x"}]
    plan = scan([write_jsonl(tmp_path / "a.jsonl", rows)], "jsonl", on_bad="skip")
    assert plan["skipped"] == 2 and plan["total"] == 20 and "line 21" in plan["first_bad"]


def test_all_bad_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"all 2 records are bad \(first: .*line 1: not valid JSON"):
        scan([write_jsonl(tmp_path / "a.jsonl", ["{", "["])], "jsonl", on_bad="skip")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"no records \(empty input\)"):
        scan([tmp_path / "e.jsonl"], "jsonl")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty input"):
        scan([tmp_path / "e.csv"], "csv")


def test_missing_field_everywhere(tmp_path: Path) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"body": "a", "label": 0}])
    with pytest.raises(DataError) as info:
        scan([j], "jsonl")
    assert "line 1: no 'text' field (fields: body, label); set --text-field" in one_line(info)
    c = tmp_path / "a.csv"
    c.write_text("text,cls\nx,1\n")
    with pytest.raises(DataError) as info:
        scan([c], "csv")
    assert "no column 'label'" in one_line(info) and "--label-field" in one_line(info)


def test_label_not_in_mapping(tmp_path: Path) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}])
    with pytest.raises(DataError) as info:
        scan([j], "jsonl", known={"pos", "neg"}, labels=["neg", "pos"])
    assert "label 'meh' is not one of --labels (neg, pos)" in one_line(info) and str(j) in one_line(info)


def test_one_label_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="every record has label 'x'"):
        scan([write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "x"}] * 3)], "jsonl")


def test_val_split_rounds_to_nothing(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    with pytest.raises(DataError, match="--val-fraction 0.1: rounds to 0 records"):
        scan([write_jsonl(tmp_path / "a.jsonl", rows)], "jsonl")


def test_plan_numbers_records_across_files(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": "b"}] * 10)
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "b", "label": "a"}] * 10)
    plan = scan([a, b], "jsonl", val_fraction=0.2)
    assert plan["names"] == ["a", "b"] and list(plan["offsets"]) == [0, 10]
    assert plan["label_ids"][0].tolist() == [1] * 10 and plan["split_rows"] == {"train": 16, "val": 4, "test": 0}


# ---------------------------------------------------------------------------------------------
# Labels and splits


def test_label_names_order() -> None:
    assert label_names([2, 0, 10, 1], None) == ["0", "1", "2", "10"]  # numeric, so 0..K-1 keep their ids
    assert label_names(["b", "a", 3], None) == ["3", "a", "b"]
    assert label_names(["a"], ["z", "a"]) == ["z", "a"]


def test_assign_splits_is_stratified_seeded_and_keeps_a_training_row() -> None:
    labels = np.repeat(np.arange(3), [100, 10, 1])
    codes = assign_splits(labels, 3, 0.2, 0.1, seed=0)
    for c, (n_val, n_test) in enumerate([(20, 10), (2, 1), (0, 0)]):
        assert ((labels == c) & (codes == 1)).sum() == n_val and ((labels == c) & (codes == 2)).sum() == n_test
    assert np.array_equal(codes, assign_splits(labels, 3, 0.2, 0.1, seed=0))
    assert not np.array_equal(codes, assign_splits(labels, 3, 0.2, 0.1, seed=1))
    two = assign_splits(np.array([0, 0]), 1, 0.5, 0.5, seed=0)
    assert (two == 0).sum() == 1  # never every row of a class out of training


# ---------------------------------------------------------------------------------------------
# Options, inputs, outputs


@pytest.mark.parametrize("change, flag", [
    ({"format": "xml"}, "--format"), ({"train_tokenizer": None}, "exactly one of --tokenizer"),
    ({"tokenizer": "t.json"}, "exactly one of"), ({"max_len": 0}, "--max-len"), ({"shard_rows": 0}, "--shard-rows"),
    ({"val_fraction": 1.0}, "--val-fraction"), ({"val_fraction": 0.6, "test_fraction": 0.5}, "leave no training"),
    ({"on_bad_record": "ignore"}, "--on-bad-record"), ({"labels": ["a"]}, "--labels"),
    ({"train_tokenizer": "unigram"}, "--train-tokenizer"),
])
def test_bad_options(change, flag) -> None:
    o = PrepareOptions(input="x", format="jsonl", output="y", train_tokenizer="bpe")
    for k, v in change.items():
        setattr(o, k, v)
    with pytest.raises(DataError, match=flag):
        check_options(o)


def test_inputs(tmp_path: Path) -> None:
    loc = lambda p: locate(str(p), None, key="--input")  # noqa: E731
    with pytest.raises(DataError, match="path does not exist"):
        list_inputs(loc(tmp_path / "nope.jsonl"), "jsonl")
    with pytest.raises(DataError, match="no file matches this glob"):
        list_inputs(loc(tmp_path / "*.jsonl"), "jsonl")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"no \.jsonl/\.json/\.ndjson files in this directory"):
        list_inputs(loc(tmp_path), "jsonl")
    with pytest.raises(DataError, match="no subdirectories"):
        list_inputs(loc(tmp_path), "text-dirs")
    (tmp_path / "pos").mkdir()
    (tmp_path / "neg").mkdir()
    with pytest.raises(DataError, match=r"hold no files \(empty input\)"):
        list_inputs(loc(tmp_path), "text-dirs")
    (tmp_path / "pos" / "1.txt").write_text("good")
    (tmp_path / "neg" / "1.txt").write_text("bad")
    (tmp_path / "neg" / ".hidden").write_text("skip me")
    assert [x[1] for x in list_inputs(loc(tmp_path), "text-dirs")] == ["neg", "pos"]
    with pytest.raises(DataError, match="s3:// ... not supported|gs:// is not supported"):
        locate("gs://b/x", None, key="--input")


def test_existing_output_is_refused(tmp_path: Path) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": 0}])
    (tmp_path / "out").mkdir()
    o = PrepareOptions(input=str(j), format="jsonl", output=str(tmp_path / "out"), train_tokenizer="bpe")
    with pytest.raises(DataError, match="already exists; choose a new path or pass --overwrite"):
        prepare(o, start_ray=lambda: pytest.fail("Ray must not start"))


def test_cli_bad_input_is_one_line_before_ray(tmp_path: Path) -> None:
    proc = run_cli("data", "prepare", "--input", str(tmp_path / "missing.jsonl"), "--format", "jsonl",
                   "--output", str(tmp_path / "out"), "--train-tokenizer", "bpe", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"raydeep: error: --input {tmp_path / 'missing.jsonl'}: path does not exist"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Tokenizers


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_train_encode_pad_truncate(kind: str) -> None:
    texts = ["the cat sat on the mat", "a dog ran", "the dog sat"] * 5
    tok = train_tokenizer(kind, iter(texts), vocab_size=300)
    assert tok.token_to_id("[PAD]") == 0 and pad_id_of(tok, where="t") == 0
    ids, lengths = encode(tok, ["the cat", "the cat sat on the mat the cat sat on the mat"], max_len=6, pad_id=0)
    assert ids.shape == (2, 6) and ids.dtype == np.int32
    assert lengths[0] < 6 and (ids[0, lengths[0]:] == 0).all() and (ids[0, :lengths[0]] != 0).all()
    assert lengths[1] > 6 and (ids[1] != 0).all()  # truncated, and the untruncated length kept


def test_loaded_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_tokenizer("{not json", where="--tokenizer t.json")
    assert one_line(info).startswith("--tokenizer t.json: not a Hugging Face tokenizer.json")
    from tokenizers import Tokenizer, models

    no_pad = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    with pytest.raises(DataError, match="has no padding token"):
        pad_id_of(no_pad, where="--tokenizer t.json")
    o = PrepareOptions(input=str(tmp_path), format="text-dirs", output=str(tmp_path / "o"),
                       tokenizer=str(tmp_path / "none.json"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="none.json: no such file"):
        prepare(o, start_ray=lambda: pytest.fail("Ray must not start"))


# ---------------------------------------------------------------------------------------------
# Commit: an interrupted prepare leaves nothing that looks complete


def test_interrupted_local_commit_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = locate(str(tmp_path / "ds"), None, key="--output")
    tmp = str(tmp_path / ".ds.tmp-x")
    parts = os.path.join(tmp, "_parts", "split=train")
    os.makedirs(parts)
    pq.write_table(pa.table({"label": [0]}), os.path.join(parts, "a.parquet"))
    moves = [(os.path.join(parts, "a.parquet"), "part-00000.parquet")]

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Location, "join", boom)  # unused locally: the local path must not need it
    monkeypatch.setattr(FS.__class__, "pipe_file", boom)
    with pytest.raises(KeyboardInterrupt):
        _commit(out, tmp, os.path.join(tmp, "_parts"), {"train": (moves, {})}, b"{}", {}, overwrite=False)
    assert not (tmp_path / "ds").exists()  # only the hidden temp directory, which nothing reads
