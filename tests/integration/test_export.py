"""``raydeep export`` and ``raydeep generate`` on runs trained through the real pipeline: data made
by ``raydeep data prepare``, tiny random-init Hugging Face models (tests/hf_models.py) trained by
Ray Train workers under DeepSpeed, checkpoints consolidated on one CPU and reloaded by
transformers' own ``from_pretrained``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from raydeep.cli import main
from raydeep.trainers.checkpoints import find_checkpoint
from raydeep.trainers.evaluate import load_model
from tests.conftest import run_cli
from tests.helpers import tiny_config, write_config
from tests.hf_models import save_tiny_model, tiny_tokenizer
from tests.integration.test_ingest import corpus

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PROMPT = "the cat sat"
WORDS = "the cat sat on a mat and a dog ran far away today very good news of rain".split()


def docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) for _ in range(n)]


def prepare(ray_head, out: Path, *flags: str) -> Path:
    proc = run_cli("data", "prepare", "--output", str(out), "--format", "jsonl", "--val-fraction", "0.25",
                   "--address", ray_head.address, *flags, timeout=600, check=True)
    # progress on stderr, each phase ending in its totals and rate (the counts: tests/integration/test_ingest.py)
    for phase in ("scanning: records ", "tokenizing and writing: "):
        last = [x for x in proc.stderr.splitlines() if x.startswith(phase)][-1:]
        assert last and " in " in last[0] and "/s; " in last[0], proc.stderr
    return out


def train(ray_head, run_dir: Path, cfg: dict) -> Path:
    path = write_config(run_dir.parent / f"{run_dir.name}.yaml", cfg)
    run_cli("train", str(path), "--address", ray_head.address, "--run-dir", str(run_dir), check=True)
    return run_dir


def val_ids(data: Path) -> torch.Tensor:
    return torch.tensor(pq.read_table(data / "val").column("input_ids").to_pylist())


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) != 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("raydeep: error: ") and "\n" not in err, captured.err
    return err


# ---------------------------------------------------------------------------------------------
# A classifier: tokenizer trained by data prepare, a BERT-like encoder trained under ZeRO-3


@pytest.fixture(scope="module")
def clf_data(ray_head, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("clf-data")
    (tmp / "in.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in corpus(400)))
    return prepare(ray_head, tmp / "ds", "--input", str(tmp / "in.jsonl"), "--train-tokenizer", "bpe",
                   "--vocab-size", "300", "--max-len", "16")


@pytest.fixture(scope="module")
def clf_run(ray_head, clf_data, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("clf-run")
    bert = save_tiny_model(tmp / "bert", "bert", vocab_size=300)  # no tokenizer here: the data's is exported
    cfg = tiny_config(data={"train": str(clf_data / "train"), "val": str(clf_data / "val"), "batch_size": 16},
                      model={"kind": "hf", "path": str(bert), "num_classes": 3},
                      optim={"lr": 2.0e-3}, deepspeed={"zero_stage": 3}, run={"epochs": 2, "seed": 0})
    return train(ray_head, tmp / "run", cfg)


def test_export_of_a_zero3_classifier_reloads_with_the_same_logits_labels_and_tokenizer(clf_run, clf_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "exported"
    proc = run_cli("export", str(clf_run), "--out", str(out), check=True)
    assert "tokenizer: the prepared data's" in proc.stdout, proc.stdout
    ckpt, _ = find_checkpoint(clf_run)
    state = json.loads((ckpt / "raydeep.json").read_text())
    assert state["zero_stage"] == 3 and state["world_size"] == 2
    # each step's line on stderr, with what it produced and its duration
    err = proc.stderr.splitlines()
    assert any(x.startswith(f"consolidating {ckpt.name}: ") and x.endswith(" s") and " parameters (ZeRO-3, 2 ranks) in "
               in x for x in err), proc.stderr
    files = sum(1 for p in out.rglob("*") if p.is_file())
    assert any(x.startswith(f"saving to {out}: {files} files, ") for x in err), proc.stderr
    assert state["label_names"] == ["food", "sport", "tech"]

    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert exported.config.id2label == {0: "food", 1: "sport", 2: "tech"}
    assert exported.config.label2id == {"food": 0, "sport": 1, "tech": 2}
    ours, _, feature, _ = load_model(ckpt)
    ids = val_ids(clf_data)
    assert (ids == feature.pad_id).any()  # padded rows: the mask matters
    with torch.no_grad():
        want = ours(ids)
        got = exported(input_ids=ids, attention_mask=(ids != feature.pad_id).long()).logits
        unmasked = exported(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, want, atol=1e-3)  # without the mask, padding changes the logits

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id == feature.pad_id and len(tok) == feature.vocab_size
    text = corpus(3, seed=5)[0][0]
    assert tok.decode(tok(text)["input_ids"]) == text

    # raydeep evaluate on the same run agrees with the exported model's predictions
    proc = run_cli("evaluate", str(clf_run), "--data", str(clf_data / "val"), "--out", str(tmp_path / "ev.json"),
                   check=True)
    report = json.loads((tmp_path / "ev.json").read_text())
    labels = torch.tensor(pq.read_table(clf_data / "val").column("label").to_pylist())
    assert report["rows"] == len(labels)
    n = len(labels)
    assert any(x.startswith(f"evaluating: rows {n}/{n} in ") and x.endswith(" rows/s; batches 1")
               for x in proc.stderr.splitlines()), proc.stderr
    assert report["accuracy"] == pytest.approx((got.argmax(-1) == labels).float().mean().item())


def test_export_refuses_a_non_empty_out_unless_overwrite(clf_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = one_line_error(capsys, "export", str(clf_run), "--out", str(out))
    assert err == f"raydeep: error: --out {out}: exists and is not empty; pass --overwrite to replace it"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(clf_run), "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directories left behind


def test_merge_without_adapters_and_generate_on_a_classifier_are_one_line(clf_run, tmp_path, capsys):
    ckpt, _ = find_checkpoint(clf_run)
    err = one_line_error(capsys, "export", str(clf_run), "--out", str(tmp_path / "m"), "--merge")
    assert err == f"raydeep: error: export --merge: {ckpt}: no LoRA adapters in this checkpoint"
    assert not (tmp_path / "m").exists()
    err = one_line_error(capsys, "generate", str(clf_run), "--prompt", PROMPT)
    assert err == (f"raydeep: error: generate: {ckpt}: a model.task: classification checkpoint; generate needs "
                   "a causal_lm model")


def test_export_refuses_a_built_in_model_naming_its_kind(ray_head, clf_data, tmp_path, capsys):
    cfg = tiny_config(data={"train": str(clf_data / "train"), "val": str(clf_data / "val"), "batch_size": 32},
                      model={"kind": "transformer", "num_classes": 3, "d_model": 16, "layers": 1, "heads": 2,
                             "max_len": 16}, deepspeed={"zero_stage": 0})
    run = train(ray_head, tmp_path / "tiny", cfg)
    ckpt, _ = find_checkpoint(run)
    err = one_line_error(capsys, "export", str(run), "--out", str(tmp_path / "x"))
    assert err == (f"raydeep: error: export: {ckpt}: a model.kind: transformer checkpoint; only model.kind: hf "
                   "checkpoints have a Hugging Face form")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# A causal LM: packed blocks from data prepare --task lm, a GPT-2-like decoder with LoRA adapters


@pytest.fixture(scope="module")
def lm_model(tmp_path_factory) -> Path:
    texts = docs(300, seed=1)
    return save_tiny_model(tmp_path_factory.mktemp("lm-model") / "gpt2", "gpt2", tokenizer=tiny_tokenizer(texts))


@pytest.fixture(scope="module")
def lm_data(ray_head, lm_model, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lm-data")
    (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(300)))
    return prepare(ray_head, tmp / "ds", "--input", str(tmp / "docs.jsonl"), "--task", "lm", "--block-size", "16",
                   "--tokenizer", str(lm_model))


@pytest.fixture(scope="module")
def lm_run(ray_head, lm_model, lm_data, tmp_path_factory) -> Path:
    cfg = tiny_config(data={"train": str(lm_data / "train"), "val": str(lm_data / "val"), "batch_size": 16},
                      optim={"lr": 1.0e-2}, deepspeed={"zero_stage": 3}, run={"epochs": 2, "seed": 0})
    cfg["model"] = {"kind": "hf", "path": str(lm_model), "task": "causal_lm",
                    "lora": {"r": 4, "target_modules": ["c_attn"]}}
    return train(ray_head, tmp_path_factory.mktemp("lm-run") / "run", cfg)


def test_merged_lora_export_has_the_checkpoints_logits_and_generates_as_the_run(lm_run, lm_model, lm_data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    proc = run_cli("export", str(lm_run), "--out", str(out), "--merge", check=True)
    assert f"tokenizer: the model directory's ({lm_model})" in proc.stdout, proc.stdout
    assert "merging the LoRA adapters into the base weights: " in proc.stderr, proc.stderr
    ckpt, _ = find_checkpoint(lm_run)
    ours, cfg, feature, _ = load_model(ckpt)  # the unmerged PeftModel, as trained
    assert cfg.model.lora is not None and feature.pad_id == -1
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(lm_model).eval()
    ids = val_ids(lm_data)
    with torch.no_grad():
        want = ours(ids)
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-3)  # training moved the adapters
    assert not any("lora" in k for k in merged.state_dict())

    # greedy generation: the run directory (consolidated in place) and the exported directory agree
    from_run = run_cli("generate", str(lm_run), "--prompt", PROMPT, "--max-new-tokens", "12", check=True)
    from_dir = run_cli("generate", str(out), "--prompt", PROMPT, "--max-new-tokens", "12", check=True)
    assert from_run.stdout == from_dir.stdout and from_run.stdout.startswith(PROMPT), (from_run.stdout, from_dir.stdout)
    sampled = [run_cli("generate", str(out), "--prompt", PROMPT, "--temperature", "1.5", "--top-k", "20",
                       "--seed", "3", check=True).stdout for _ in range(2)]
    assert sampled[0] == sampled[1] and sampled[0].startswith(PROMPT)


def test_lora_export_without_merge_writes_adapters_that_peft_loads_onto_the_base(lm_run, lm_model, lm_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapters"
    assert main(["export", str(lm_run), "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(lm_model)
    ours, _, _, _ = load_model(find_checkpoint(lm_run)[0])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_model), out).eval()
    ids = val_ids(lm_data)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ours(ids), rtol=1e-4, atol=1e-4)
