"""Causal language modelling end to end, as a user runs it: a text corpus -> ``data prepare --task
lm`` with the model's own tokenizer -> ``raydeep train`` of a tiny GPT-2-like and Llama-like
decoder (saved locally, loaded by from_pretrained) on 2 DeepSpeed workers; LoRA; resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import write_config
from tests.hf_models import save_tiny_model, tiny_tokenizer

pytestmark = pytest.mark.ray

WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
BLOCK = 32


def corpus(n: int, seed: int) -> list[str]:
    """Counting runs ("four five six seven ..."): after the first word every next word is
    determined, so a model that learns drives its loss far below a uniform guess."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        start = rng.randrange(len(WORDS) - 4)
        docs.append(" ".join(WORDS[start:start + rng.randint(4, len(WORDS) - start)]))
    return docs


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory, ray_head) -> dict:
    root = tmp_path_factory.mktemp("lm")
    texts = corpus(1200, seed=0)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = tiny_tokenizer(texts, vocab_size=80)
    models = {arch: save_tiny_model(root / arch, arch, tokenizer=tok) for arch in ("gpt2", "llama")}
    data = root / "data"
    proc = run_cli("data", "prepare", "--input", str(root / "corpus.jsonl"), "--format", "jsonl", "--task", "lm",
                   "--block-size", str(BLOCK), "--tokenizer", str(models["gpt2"]), "--output", str(data),
                   "--val-fraction", "0.2", "--address", ray_head.address, check=True)
    assert "causal_lm" in json.loads((data / "train" / "_raydeep.json").read_text())["task"], proc.stdout
    return {"root": root, "models": models, "data": data}


def lm_config(setup: dict, arch: str, **model) -> dict:
    return {
        "name": f"lm-{arch}",
        "data": {"train": str(setup["data"] / "train"), "val": str(setup["data"] / "val"), "batch_size": 16},
        "model": {"kind": "hf", "path": str(setup["models"][arch]), "task": "causal_lm", **model},
        "optim": {"lr": 3.0e-3},
        "deepspeed": {"zero_stage": 1},
        "scaling": {"num_workers": 2},
        "run": {"epochs": 3, "seed": 0},
    }


def epochs_of(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def vocab_of(setup: dict) -> int:
    return json.loads((setup["data"] / "train" / "_raydeep.json").read_text())["feature"]["vocab_size"]


def assert_lm_learned(run_dir: Path, vocab: int) -> list[dict]:
    """Finite losses, perplexity = exp(loss), tokens/s counted, and a val loss that falls and
    starts below a uniform guess over the vocabulary's (log V)."""
    epochs = epochs_of(run_dir)
    for m in epochs:
        assert math.isfinite(m["train/loss"]) and math.isfinite(m["val/loss"]), m
        assert m["val/perplexity"] == pytest.approx(math.exp(m["val/loss"]), rel=1e-6)
        # every row is a full block of BLOCK tokens, BLOCK - 1 of them targets
        assert m["train/tokens_per_s"] == pytest.approx(m["samples_per_s"] * (BLOCK - 1), rel=1e-6)
        assert "val/accuracy" not in m and "val/confusion" not in m
    assert epochs[-1]["val/loss"] < epochs[0]["val/loss"] < math.log(vocab), epochs
    return epochs


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_learns_the_corpus(ray_head, tmp_path, lm_setup, arch):
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "lm.yaml", lm_config(lm_setup, arch))
    proc = run_cli("train", str(cfg), "--address", ray_head.address, "--run-dir", str(run_dir), check=True)
    assert "ppl " in proc.stdout and "tokens/s" in proc.stdout
    epochs = assert_lm_learned(run_dir, vocab=vocab_of(lm_setup))
    # counting is nearly deterministic: the model ends far below a uniform guess's perplexity (V > 250)
    assert epochs[-1]["val/perplexity"] < 8, epochs[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "causal_lm" and summary["best"]["metric"] == "val/loss"


@pytest.mark.slow
def test_lora_trains_adapters_and_a_run_resumes(ray_head, tmp_path, lm_setup):
    run_dir = tmp_path / "lora"
    cfg = lm_config(lm_setup, "gpt2", lora={"r": 4, "target_modules": ["c_attn", "c_fc"]})
    cfg["optim"]["lr"] = 1.0e-2
    cfg["run"]["epochs"] = 1
    path = write_config(tmp_path / "lora.yaml", cfg)
    run_cli("train", str(path), "--address", ray_head.address, "--run-dir", str(run_dir), check=True)
    first = json.loads((run_dir / "summary.json").read_text())
    run_cli("train", "--resume", str(run_dir), "--set", "run.epochs=3", "--address", ray_head.address, check=True)
    second = json.loads((run_dir / "summary.json").read_text())
    assert second["final"]["resumed_from_step"] == first["final"]["global_step"]
    epochs = assert_lm_learned(run_dir, vocab=vocab_of(lm_setup))  # adapters on a random base: slower
    assert [m["epoch"] for m in epochs] == [0, 1, 2]
