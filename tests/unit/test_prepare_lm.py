"""``raydeep data prepare --task lm``: documents packed into blocks, with real tokenizers and files.

Most tests run the code Ray runs (``lm.encode_blocks`` per work unit) and the driver's side
(``_finish_blocks``, ``_commit``) directly, writing the encode task's tables partitioned by split
as Ray Data's ``write_parquet`` does, in unit order; that pins the exact packing order. The last
test runs the same through Ray on the shared local head.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import numpy as np
import pyarrow.parquet as pq
import pytest

from raydeep.datasets import open_split
from raydeep.datasets.inspect import inspect_path
from raydeep.datasets.prepare import lm
from raydeep.datasets.prepare.inputs import list_inputs, locate
from raydeep.datasets.prepare.pipeline import (
    PrepareOptions,
    _check_before_ray,
    _commit,
    _finish_blocks,
    _block_kwargs,
    _plan_documents,
    _scan,
    _special_id,
    check_options,
    prepare,
)
from raydeep.datasets.prepare.classification import encode_rows
from raydeep.datasets.prepare.raw_records import FieldNames, read_records
from raydeep.datasets.prepare.tokenizer import (
    EOS_TOKEN,
    LoadedTokenizer,
    encode_documents,
    load_tokenizer_path,
    train_tokenizer,
)
from raydeep.datasets.prepare.units import make_units, unit_items
from raydeep.errors import DataError
from tests.conftest import run_cli

FS = fsspec.filesystem("file")
WORDS = "the cat sat on a mat and a dog ran far away today very good news of rain".split()
NO_RAY = dict(start_ray=lambda: pytest.fail("Ray must not start"))


def docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(n)]


def write_jsonl(path: Path, texts: list[str], **extra) -> Path:
    path.write_text("".join(json.dumps({"text": t, **extra}) + "\n" for t in texts))
    return path


def one_line(info: pytest.ExceptionInfo) -> str:
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def lm_options(inp: Path, out: Path, **kw) -> PrepareOptions:
    kw = {"format": "jsonl", "block_size": 16, "val_fraction": 0.25, "shuffle": False, "shard_rows": 7,
          "train_tokenizer": "bpe", **kw}
    return PrepareOptions(input=str(inp), output=str(out), task="lm", **kw)


def bpe_file(tmp_path: Path) -> Path:
    tok = train_tokenizer("bpe", iter(docs(200, seed=9)), vocab_size=300, eos=True)
    (tmp_path / "tok.json").write_text(tok.to_str())
    return tmp_path / "tok.json"


def model_dir(tmp_path: Path, eos: str = "<|end|>") -> Path:
    """A tiny Hugging Face model directory: a BPE tokenizer (which also knows <|endoftext|>) whose
    tokenizer_config.json names its own eos_token."""
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer("bpe", iter(docs(200, seed=9)), vocab_size=300, eos=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="[PAD]").save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def bert_slow_dir(tmp_path: Path) -> Path:
    """A model directory with only slow-tokenizer files (vocab.txt): no tokenizer.json."""
    d = tmp_path / "bert"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    return d


def run_without_ray(o: PrepareOptions) -> dict:
    """``prepare`` with Ray's parts done in this process: scan, plan, tokenizer, the encode task per
    unit (its tables written partitioned by split, in unit order), then the driver's side as is."""
    check_options(o)
    src, out, inputs, loaded = _check_before_ray(o)
    units = make_units(inputs, o.format, o.files_per_task)
    scanned = [{k: v[0] for k, v in _scan({"unit": [i], "files": [json.dumps(u)]}, fs=src.fs, fmt=o.format,
                                          fields=o.fields, on_bad=o.on_bad_record, known=None).items()}
               for i, u in enumerate(units)]
    plan = _plan_documents(o, scanned, lambda s: None)
    if loaded is None:
        train = [t for i, u in enumerate(units) for t, c in zip(unit_texts(u, o), plan["codes"][i]) if c == 0]
        tok = train_tokenizer(o.train_tokenizer, iter(train), vocab_size=o.vocab_size, eos=True)
        loaded = LoadedTokenizer(tok, tok.to_str().encode(), "trained", None)
    tmp = Path(out.path).parent / f".{Path(out.path).name}.tmp-test"
    parts = tmp / "_parts"
    kwargs = _block_kwargs(o, loaded, _special_id(o, loaded), src.fs)
    n = 0
    for item in unit_items(units, plan):
        for table in lm.encode_blocks({k: [v] for k, v in item.items()}, **kwargs):
            for split in set(table.column("split").to_pylist()):
                rows = table.filter(table.column("split").to_numpy(zero_copy_only=False) == split)
                (parts / f"split={split}").mkdir(parents=True, exist_ok=True)
                pq.write_table(rows.drop_columns(["split"]), parts / f"split={split}" / f"p-{n:05d}.parquet")
                n += 1
    manifests, summary, _ = _finish_blocks(o, plan, loaded, out, str(parts))
    _commit(out, str(tmp), str(parts), manifests, loaded.data, summary, overwrite=o.overwrite)
    return {"summary": summary, "plan": plan, "units": units, "loaded": loaded}


def unit_texts(unit: list, o: PrepareOptions) -> list[str]:
    return [r[0] for path, label in unit for r in read_records(FS, path, o.format, o.fields, label)]


def streams(run: dict, o: PrepareOptions) -> dict[str, list[list[int]]]:
    """Per split, per unit: the documents' ids each followed by EOS, as the task defines them."""
    tok, eos = run["loaded"].tokenizer, _special_id(o, run["loaded"])
    out: dict[str, list[list[int]]] = {"train": [], "val": [], "test": []}
    for u, codes in zip(run["units"], run["plan"]["codes"]):
        ids = [list(tok.encode(t).ids) + [eos] for t in unit_texts(u, o)]
        for code, split in enumerate(("train", "val", "test")):
            out[split].append([i for d, c in zip(ids, codes) if c == code for i in d])
    return out


def blocks(root: Path, split: str) -> list[list[int]]:
    return pq.read_table(root / split).column("input_ids").to_pylist()


# ---------------------------------------------------------------------------------------------
# Flags: every bad combination is one line, before anything is read


@pytest.mark.parametrize("change, message", [
    ({"task": "lm"}, "--task lm needs --block-size N: the tokens in every packed training block"),
    ({"block_size": 8}, "--block-size 8: only for --task lm; classification pads or truncates every record to "
                        "--max-len"),
    ({"task": "lm", "block_size": 8, "labels": ["a", "b"]}, "--labels a,b: not used by --task lm"),
    ({"task": "lm", "block_size": 8, "label_field": "y"}, "--label-field y: not used by --task lm"),
    ({"task": "lm", "block_size": 8, "max_len": 64}, "--max-len 64: not used by --task lm"),
    ({"task": "lm", "block_size": 1}, "--block-size 1: must be >= 2"),
    ({"task": "mlm"}, "--task 'mlm': expected one of classification, lm"),
])
def test_bad_flag_combinations_are_one_line_before_reading(tmp_path: Path, change: dict, message: str) -> None:
    o = PrepareOptions(input=str(tmp_path / "missing.jsonl"), format="jsonl", output=str(tmp_path / "o"),
                       train_tokenizer="bpe", **change)
    with pytest.raises(DataError) as info:
        prepare(o, **NO_RAY)  # the input does not exist: the flags fail first
    assert one_line(info).startswith(message)


def test_cli_task_lm_without_block_size(tmp_path: Path) -> None:
    proc = run_cli("data", "prepare", "--input", str(tmp_path / "x.jsonl"), "--format", "jsonl", "--output",
                   str(tmp_path / "o"), "--train-tokenizer", "bpe", "--task", "lm", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("raydeep: error: --task lm needs --block-size N: the tokens in every packed "
                                   "training block")


# ---------------------------------------------------------------------------------------------
# Inputs and records: no label is read


def test_text_dirs_for_lm_is_every_txt_file_recursively(tmp_path: Path) -> None:
    for rel in ("b.txt", "a/z.txt", "a/deeper/x.TXT", "a/notes.md", ".hidden/h.txt", "a/_tmp.txt", "c/.d.txt"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_text("some words")
    loc = locate(str(tmp_path / "in"), None, key="--input")
    found = list_inputs(loc, "text-dirs", labelled=False)
    assert found == [(str(tmp_path / "in" / p), None) for p in ("a/deeper/x.TXT", "a/z.txt", "b.txt")]
    assert [(Path(p).name, label) for p, label in list_inputs(loc, "text-dirs")] == [("notes.md", "a"), ("z.txt", "a")]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        list_inputs(locate(str(tmp_path / "empty"), None, key="--input"), "text-dirs", labelled=False)
    assert one_line(info) == f"--input {tmp_path / 'empty'}: no *.txt files under this directory (searched recursively)"
    with pytest.raises(DataError, match=r"is a file; --format text-dirs takes a directory of \*\.txt files"):
        list_inputs(locate(str(tmp_path / "in" / "b.txt"), None, key="--input"), "text-dirs", labelled=False)


def test_records_without_a_label_field(tmp_path: Path) -> None:
    fields = FieldNames("body", None)
    j = tmp_path / "a.jsonl"
    j.write_text('{"body": "one"}\n{"body": "two", "label": 3}\n{"text": "x"}\n')
    got = list(read_records(FS, str(j), "jsonl", fields))
    assert got[:2] == [("one", None), ("two", None)] and "no 'body' field" in str(got[2])
    c = tmp_path / "a.csv"
    c.write_text("body\nthree\n")
    assert list(read_records(FS, str(c), "csv", fields)) == [("three", None)]
    (tmp_path / "t.txt").write_text("four")
    assert list(read_records(FS, str(tmp_path / "t.txt"), "text-dirs", fields, "ignored")) == [("four", None)]


def test_documents_are_split_whole_and_seeded(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", docs(30))
    b = write_jsonl(tmp_path / "b.jsonl", docs(10, seed=1))
    o = lm_options(a, tmp_path / "o", val_fraction=0.2, test_fraction=0.1)
    scanned = [{k: v[0] for k, v in _scan({"unit": [i], "files": [json.dumps([[str(p), None]])]}, fs=FS,
                                          fmt="jsonl", fields=o.fields, on_bad="error", known=None).items()}
               for i, p in enumerate([a, b])]
    assert [json.loads(r["labels"]) for r in scanned] == [[], []]  # documents send back only their count
    plan = _plan_documents(o, scanned, lambda s: None)
    assert plan["split_rows"] == {"train": 28, "val": 8, "test": 4} and list(plan["offsets"]) == [0, 30]
    again = _plan_documents(lm_options(a, tmp_path / "o", val_fraction=0.2, test_fraction=0.1, seed=0), scanned,
                            lambda s: None)
    other = _plan_documents(lm_options(a, tmp_path / "o", val_fraction=0.2, test_fraction=0.1, seed=1), scanned,
                            lambda s: None)
    assert all(np.array_equal(x, y) for x, y in zip(plan["codes"], again["codes"]))
    assert not all(np.array_equal(x, y) for x, y in zip(plan["codes"], other["codes"]))
    with pytest.raises(DataError) as info:
        _plan_documents(lm_options(a, tmp_path / "o", val_fraction=0.01), scanned[1:], lambda s: None)
    assert one_line(info) == "--val-fraction 0.01: rounds to 0 of the 10 documents; raise it or add data"


# ---------------------------------------------------------------------------------------------
# Packing


def test_block_cutter_keeps_the_rest() -> None:
    cut = lm.BlockCutter(4)
    cut.add(np.arange(3, dtype=np.int32))
    assert cut.full_blocks().shape == (0, 4) and cut.size == 3
    cut.add(np.arange(3, 9, dtype=np.int32))
    assert cut.full_blocks().tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and cut.rest().tolist() == [8]


def test_tails_are_packed_in_unit_order(tmp_path: Path) -> None:
    """Ray writes the tail rows (unit, tokens...) in any order and grouping; they pack by unit."""
    tail_dir = tmp_path / "_parts" / "split=train.tail"
    tail_dir.mkdir(parents=True)
    pq.write_table(pa.table({"input_ids": pa.array([[2, 9, 9], [0, 1, 2, 3]], pa.list_(pa.int32()))}),
                   tail_dir / "a.parquet")
    pq.write_table(pa.table({"input_ids": pa.array([[1, 5, 6]], pa.list_(pa.int32()))}), tail_dir / "b.parquet")
    out = locate(str(tmp_path / "ds"), None, key="--output")
    assert lm.pack_tails(out, str(tmp_path / "_parts"), "train", block_size=3, shard_rows=1, seed=None) == 1
    assert not tail_dir.exists()
    written = sorted((tmp_path / "_parts" / "split=train").iterdir())
    assert [pq.read_table(p).column("input_ids").to_pylist() for p in written] == [[[1, 2, 3]], [[5, 6, 9]]]


def test_packing_is_exact_and_split_by_document(tmp_path: Path) -> None:
    o = lm_options(write_jsonl(tmp_path / "in.jsonl", docs(120), label="ignored"), tmp_path / "ds")
    run = run_without_ray(o)
    root, n = tmp_path / "ds", 16
    eos = run["loaded"].tokenizer.token_to_id(EOS_TOKEN)
    expected = streams(run, o)
    for split in ("train", "val"):
        m = json.loads((root / split / "_raydeep.json").read_text())
        got = blocks(root, split)
        stream = expected[split][0]  # one file: one unit, so the blocks are the stream cut in order
        k = len(stream) // n
        assert got == [stream[i * n:(i + 1) * n] for i in range(k)]
        assert m["tokens"] == len(stream) == k * n + m["dropped_tokens"] and m["dropped_tokens"] < n
        assert m["num_rows"] == k and m["documents"] == run["plan"]["split_rows"][split]
        assert stream.count(eos) == m["documents"]  # every document ends with EOS, none carries two
        schema = pq.read_schema(root / split / "part-00000.parquet")
        assert schema.names == ["input_ids"] and str(schema.field("input_ids").type) == "list<element: int32>"
        assert m["feature"] == {"column": "input_ids", "kind": "tokens", "seq_len": n, "vocab_size": m["tokenizer"][
            "vocab_size"], "pad_id": -1}
        assert (m["task"], m["eos_id"], m["block_size"], m["label_names"]) == ("causal_lm", eos, n, None)
        assert m["tokenizer_source"] == {"kind": "trained", "path": None}
    summary = json.loads((root / "_raydeep_prepare.json").read_text())
    assert summary["dropped_tokens"] == sum(s["dropped_tokens"] for s in summary["splits"].values())
    assert summary["documents"] == 120 and summary["task"] == "causal_lm"


def test_units_pack_their_own_blocks_then_their_tails_in_order(tmp_path: Path) -> None:
    """Several units (text-dirs, 3 files per task): each unit's full blocks in order, then the units'
    tails concatenated in unit order and cut; every token is in a block or among the dropped."""
    for i, text in enumerate(docs(20, seed=3)):
        path = tmp_path / "in" / f"d{i % 3}" / f"{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    o = lm_options(tmp_path / "in", tmp_path / "ds", format="text-dirs", files_per_task=3, block_size=8,
                   tokenizer=str(bpe_file(tmp_path)), train_tokenizer=None, val_fraction=0.2)
    run = run_without_ray(o)
    assert len(run["units"]) == 7
    for split in ("train", "val"):
        want, tails = [], []
        for s in streams(run, o)[split]:
            k = len(s) // 8
            want += s[:k * 8]
            tails += s[k * 8:]
        want += tails[:len(tails) // 8 * 8]
        got = [i for b in blocks(tmp_path / "ds", split) for i in b]
        assert got == want
        m = json.loads((tmp_path / "ds" / split / "_raydeep.json").read_text())
        assert m["dropped_tokens"] == len(tails) % 8 == m["tokens"] - len(got)
    assert json.loads((tmp_path / "ds" / "train" / "_raydeep.json").read_text())["tokenizer_source"] == {
        "kind": "file", "path": str(tmp_path / "tok.json")}


def test_a_split_too_small_for_one_block_is_one_line(tmp_path: Path) -> None:
    o = lm_options(write_jsonl(tmp_path / "in.jsonl", ["a b", "c", "d", "e"]), tmp_path / "ds", block_size=512,
                   tokenizer=str(bpe_file(tmp_path)), train_tokenizer=None)
    with pytest.raises(DataError) as info:
        run_without_ray(o)
    assert one_line(info).startswith("--block-size 512: the train split's 3 document(s) hold ")
    assert one_line(info).endswith("fewer than one block; lower --block-size or add data")


# ---------------------------------------------------------------------------------------------
# Tokenizers: model directories, EOS


def test_model_dir_tokenizer_uses_its_own_eos(tmp_path: Path) -> None:
    d = model_dir(tmp_path)
    loaded = load_tokenizer_path(FS, str(d), str(d), local=True)
    assert (loaded.kind, loaded.eos_token, loaded.pad_token) == ("model_dir", "<|end|>", "[PAD]")
    end = loaded.tokenizer.token_to_id("<|end|>")
    assert end != loaded.tokenizer.token_to_id(EOS_TOKEN)  # the config's eos_token wins over a known name
    o = lm_options(write_jsonl(tmp_path / "in.jsonl", docs(80)), tmp_path / "ds", tokenizer=str(d),
                   train_tokenizer=None)
    run_without_ray(o)
    m = json.loads((tmp_path / "ds" / "train" / "_raydeep.json").read_text())
    assert m["eos_id"] == end and m["tokenizer_source"] == {"kind": "model_dir", "path": str(d)}
    assert (tmp_path / "ds" / "tokenizer.json").read_bytes() == (d / "tokenizer.json").read_bytes()
    assert sum(b.count(end) for b in blocks(tmp_path / "ds", "train")) > 0
    split = open_split(str(tmp_path / "ds" / "train"), key="data.train", label_kind="none")
    assert (split.eos_id, split.feature.pad_id, split.columns, split.task) == (end, -1, ["input_ids"], "causal_lm")
    text = inspect_path(str(tmp_path / "ds"), samples=1)
    assert "task: causal_lm, blocks of 16 tokens" in text and "no padding" in text and "labels (" not in text
    assert f"causal-LM blocks: {split.num_rows:,} of 16 tokens" in text and f"EOS id {end} ends every document" in text


def test_slow_tokenizer_dir_and_its_post_processor(tmp_path: Path) -> None:
    d = bert_slow_dir(tmp_path)
    loaded = load_tokenizer_path(FS, str(d), str(d), local=True)
    tok = loaded.tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert loaded.kind == "model_dir" and json.loads(loaded.data)["post_processor"]["type"] == "TemplateProcessing"
    # Classification: BERT's [CLS] ... [SEP] around every record, as encode_batch does by default.
    item = {"unit": [0], "files": [json.dumps([[str(write_jsonl(tmp_path / "a.jsonl", ["the cat sat"])), None]])],
            "offset": [0], "codes": [np.zeros(1, np.int8).tobytes()], "label_ids": [np.zeros(1, np.int64).tobytes()]}
    (table,) = encode_rows(item, fs=FS, fmt="jsonl", fields=FieldNames("text", None), known=None,
                           tokenizer_json=loaded.data.decode(), max_len=8, pad_id=0)
    words = tok.encode("the cat sat", add_special_tokens=False).ids
    assert table.column("input_ids").to_pylist()[0][:5] == [cls, *words, sep]
    # Causal LM: [SEP] is the EOS (no eos_token in the config), and a document keeps only one.
    o = PrepareOptions(input="x", format="jsonl", output="y", task="lm", block_size=8, tokenizer=str(d))
    assert _special_id(o, loaded) == sep
    with_specials = tok.encode("the cat sat").ids
    assert with_specials[0] == cls and with_specials[-1] == sep
    assert encode_documents(tok, ["the cat sat"], eos_id=sep)[0].tolist() == with_specials


def test_tokenizer_path_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as info:
        load_tokenizer_path(FS, str(tmp_path / "empty"), "M", local=True)
    assert one_line(info).startswith("--tokenizer M: a directory with no tokenizer.json and no slow-tokenizer files")
    with pytest.raises(DataError) as info:
        load_tokenizer_path(FS, str(tmp_path / "nope"), "N", local=True)
    assert one_line(info).startswith("--tokenizer N: no such file or directory")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (bad / "tokenizer_config.json").write_text('{"tokenizer_class": "NoSuchTokenizer"}')
    with pytest.raises(DataError) as info:
        load_tokenizer_path(FS, str(bad), "B", local=True)
    assert one_line(info).startswith("--tokenizer B: transformers could not load its tokenizer (")
    with pytest.raises(DataError) as info:
        load_tokenizer_path(FS, str(bad), "s3://b/bad", local=False)
    assert one_line(info).startswith("--tokenizer s3://b/bad: has no tokenizer.json, and its slow tokenizer")


def test_a_tokenizer_without_eos_fails_before_ray(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "cat": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tokenizer.json").write_text(tok.to_str())
    o = lm_options(write_jsonl(tmp_path / "in.jsonl", ["cat"]), tmp_path / "ds", tokenizer=str(tmp_path / "m"),
                   train_tokenizer=None)
    with pytest.raises(DataError) as info:
        prepare(o, **NO_RAY)
    assert one_line(info).startswith(f"--tokenizer {tmp_path / 'm'}: the tokenizer has no end-of-sequence token")
    (tmp_path / "m" / "tokenizer_config.json").write_text('{"eos_token": {"content": "</eos>"}}')
    with pytest.raises(DataError) as info:
        prepare(o, **NO_RAY)
    assert one_line(info) == (f"--tokenizer {tmp_path / 'm'}: its eos_token '</eos>' is not in the tokenizer's "
                              "vocabulary")


def test_trained_tokenizer_gets_an_eos_for_lm_only() -> None:
    texts = docs(50)
    assert train_tokenizer("wordpiece", iter(texts), vocab_size=200, eos=True).token_to_id(EOS_TOKEN) is not None
    assert train_tokenizer("bpe", iter(texts), vocab_size=300).token_to_id(EOS_TOKEN) is None


# ---------------------------------------------------------------------------------------------
# Through Ray


@pytest.mark.ray
def test_prepare_lm_through_ray(ray_connected, tmp_path: Path) -> None:
    from raydeep.datasets.streaming import to_ray_dataset

    write_jsonl(tmp_path / "a.jsonl", docs(150))
    write_jsonl(tmp_path / "b.jsonl", docs(60, seed=1))
    o = lm_options(tmp_path / "*.jsonl", tmp_path / "ds", shuffle=True, shard_rows=40, vocab_size=300)
    summary = prepare(o, log=lambda s: None)
    root = tmp_path / "ds"
    assert sorted(p.name for p in root.iterdir()) == ["_raydeep_prepare.json", "tokenizer.json", "train", "val"]
    total_in = 0
    tok = load_tokenizer_path(FS, str(root / "tokenizer.json"), "t", local=True).tokenizer
    eos = tok.token_to_id(EOS_TOKEN)
    for split, info in summary["splits"].items():
        m = json.loads((root / split / "_raydeep.json").read_text())
        got = blocks(root, split)
        assert len(got) == m["num_rows"] == info["num_rows"] and {len(b) for b in got} == {16}
        assert all(1 <= s["rows"] <= 40 for s in m["shards"])
        assert m["tokens"] == 16 * len(got) + m["dropped_tokens"] and m["dropped_tokens"] < 16
        assert sorted(p.name for p in (root / split).iterdir()) == ["_raydeep.json", *(s["file"] for s in m["shards"])]
        total_in += m["tokens"]
        opened = open_split(str(root / split), key=f"data.{split}", label_kind="none")
        assert opened.eos_id == eos and opened.feature.pad_id == -1
    ids = [list(tok.encode(t).ids) + [eos] for t in docs(150) + docs(60, seed=1)]
    assert total_in == sum(map(len, ids)) and summary["documents"] == 210
    # The same blocks, whatever the shuffle: packing depends on the input and seed alone.
    first = Counter(tuple(b) for s in ("train", "val") for b in blocks(root, s))
    o.overwrite, o.shuffle = True, False
    prepare(o, log=lambda s: None)
    assert Counter(tuple(b) for s in ("train", "val") for b in blocks(root, s)) == first
    rows = to_ray_dataset(open_split(str(root / "val"), key="data.val", label_kind="none")).take_all()
    assert len(rows) == summary["splits"]["val"]["num_rows"] and set(rows[0]) == {"input_ids"}
