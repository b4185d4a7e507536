"""``raydeep export``'s parts that need no checkpoint: where ``--out`` may go and how it is written,
and which tokenizer a run has. Exports of trained checkpoints: tests/integration/test_export.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydeep.config import Config
from raydeep.datasets.schema import FeatureSpec
from raydeep.errors import RaydeepError
from raydeep.trainers.export import atomic_directory, check_out, data_tokenizer_uri, find_tokenizer
from tests.hf_models import save_tiny_model, tiny_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran far away"] * 10


def run_config(model_path: Path, train: str) -> Config:
    return Config.model_validate({"data": {"train": train, "val": train},
                                  "model": {"kind": "hf", "path": str(model_path), "num_classes": 2}})


def tokens(pad_id: int = 0) -> FeatureSpec:
    return FeatureSpec(column="input_ids", kind="tokens", seq_len=16, pad_id=pad_id)


def test_out_may_be_new_or_empty_and_a_non_empty_one_needs_overwrite(tmp_path):
    assert check_out(str(tmp_path / "new"), False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert check_out(str(tmp_path / "empty"), False) == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RaydeepError, match=r"^--out .*full: exists and is not empty; pass --overwrite to replace it$"):
        check_out(str(tmp_path / "full"), False)
    assert check_out(str(tmp_path / "full"), True) == tmp_path / "full"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RaydeepError, match=r"file: exists and is not a directory$"):
        check_out(str(tmp_path / "file"), True)
    with pytest.raises(RaydeepError, match=r"^--out s3://b/m: export writes a local directory"):
        check_out("s3://b/m", False)


def test_the_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out) as tmp:
            (tmp / "config.json").write_text("{}")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # neither out nor the temporary directory
    out.mkdir()
    (out / "old.bin").write_text("old")
    with atomic_directory(out) as tmp:
        (tmp / "config.json").write_text("{}")
        assert not (out / "config.json").exists()  # not visible before the block ends
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("train, expected", [
    ("/data/ds/train", "/data/ds/tokenizer.json"),
    ("/data/ds/train/", "/data/ds/tokenizer.json"),
    ("/data/ds/train/part-00000.parquet", "/data/ds/tokenizer.json"),
    ("/data/ds/train/*.parquet", "/data/ds/tokenizer.json"),
    ("s3://bucket/ds/train", "s3://bucket/ds/tokenizer.json"),
    ("datasets://synthetic-text/train?rows=10", None),
])
def test_the_prepared_datas_tokenizer_sits_beside_the_split(train, expected):
    assert data_tokenizer_uri(train) == expected


def test_the_model_directorys_tokenizer_comes_first(tmp_path):
    model = save_tiny_model(tmp_path / "gpt2", "gpt2", tokenizer=tiny_tokenizer(TEXTS))
    tok, source = find_tokenizer(run_config(model, "datasets://synthetic-text/train?rows=10"), tokens())
    assert source == f"the model directory's ({model})"
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"


def test_else_the_prepared_datas_with_its_pad_and_eos(tmp_path):
    model = save_tiny_model(tmp_path / "bert", "bert", vocab_size=300)  # no tokenizer files
    (tmp_path / "ds" / "train").mkdir(parents=True)
    tiny_tokenizer(TEXTS).backend_tokenizer.save(str(tmp_path / "ds" / "tokenizer.json"))
    tok, source = find_tokenizer(run_config(model, str(tmp_path / "ds" / "train")), tokens(pad_id=0))
    assert source == f"the prepared data's ({tmp_path / 'ds' / 'tokenizer.json'})"
    assert (tok.pad_token, tok.pad_token_id, tok.eos_token) == ("[PAD]", 0, "<|endoftext|>")
    saved = tmp_path / "saved"
    tok.save_pretrained(saved)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(saved)
    assert (again.pad_token_id, again.eos_token) == (0, "<|endoftext|>")
    assert again("a dog ran")["input_ids"] == tok("a dog ran")["input_ids"]


def test_else_none_and_why(tmp_path):
    model = save_tiny_model(tmp_path / "bert", "bert", vocab_size=64)
    tok, why = find_tokenizer(run_config(model, "datasets://synthetic-text/train?rows=10"), tokens())
    assert tok is None
    assert why == (f"model.path {model} has no tokenizer files, and data.train datasets://synthetic-text/train?rows=10 "
                   "is a bundled data set without a tokenizer")
    tok, why = find_tokenizer(run_config(model, str(tmp_path / "ds" / "train")), tokens())
    assert tok is None and why.endswith(f"and data.train has no {tmp_path / 'ds' / 'tokenizer.json'}")
