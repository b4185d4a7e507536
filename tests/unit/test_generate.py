"""``raydeep generate`` on Hugging Face directories as ``save_pretrained`` writes them (what
``raydeep export`` produces): a tiny random-init GPT-2-like decoder whose BPE tokenizer is trained
on a toy corpus. No Ray: the run-directory case is in tests/integration/test_export.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydeep.cli import main
from raydeep.trainers.generate import generate, load_lm
from tests.hf_models import save_tiny_model, tiny_tokenizer

CORPUS = ["the cat sat on the mat", "the dog ate the bone", "a bird sang in the old tree",
          "the mat was red and the bone was white"] * 10
PROMPT = "the cat sat"


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("gen") / "gpt2", "gpt2", tokenizer=tiny_tokenizer(CORPUS))


@pytest.fixture(scope="module")
def lm(lm_dir):
    return load_lm(str(lm_dir))


def test_greedy_is_deterministic_and_adds_at_most_max_new_tokens(lm):
    model, tok = lm
    a = generate(model, tok, PROMPT, max_new_tokens=12)
    b = generate(model, tok, PROMPT, max_new_tokens=12)
    assert a == b
    assert a.prompt_ids == tok(PROMPT)["input_ids"]
    assert 1 <= len(a.new_ids) <= 12
    assert a.text.startswith(PROMPT) and len(a.text) > len(PROMPT)
    assert a.text == tok.decode(a.prompt_ids + a.new_ids, skip_special_tokens=True)
    # greedy: each new token is the argmax of the model's next-token logits
    import torch

    ids = torch.tensor([a.prompt_ids + a.new_ids])
    logits = model(input_ids=ids).logits[0]
    p = len(a.prompt_ids)
    assert logits[p - 1: p - 1 + len(a.new_ids)].argmax(-1).tolist() == a.new_ids


def test_sampling_with_a_seed_repeats_and_another_seed_differs(lm):
    model, tok = lm
    # temperature 5 flattens the tiny model's logits: 20 draws over ~300 tokens
    runs = [generate(model, tok, PROMPT, max_new_tokens=20, temperature=5.0, seed=s) for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0].new_ids != runs[2].new_ids
    greedy = generate(model, tok, PROMPT, max_new_tokens=20)
    assert runs[0].new_ids != greedy.new_ids
    top1 = generate(model, tok, PROMPT, max_new_tokens=20, temperature=5.0, top_k=1, seed=7)
    assert top1.new_ids == greedy.new_ids  # sampling among the single likeliest token is greedy


def test_cli_prints_the_continued_prompt(lm_dir, capsys):
    assert main(["generate", str(lm_dir), "--prompt", PROMPT, "--max-new-tokens", "5", "--device", "cpu"]) == 0
    # when this pytest process is a Ray driver (integration tests ran first), Ray may print a worker's
    # late log line ("(RayTrainWorker pid=...) ...") into the same stdout: not the command's output
    out = "\n".join(ln for ln in capsys.readouterr().out.splitlines() if "(RayTrainWorker pid=" not in ln).strip()
    model, tok = load_lm(str(lm_dir))
    assert out == generate(model, tok, PROMPT, max_new_tokens=5).text


def one_line_error(capsys, *argv: str) -> str:
    assert main(list(argv)) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("raydeep: error: ") and "\n" not in err, err
    return err


def test_a_classifier_directory_is_refused_in_one_line(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from tests.hf_models import hf_config

    AutoModelForSequenceClassification.from_config(hf_config("bert", 64)).save_pretrained(tmp_path / "clf")
    err = one_line_error(capsys, "generate", str(tmp_path / "clf"), "--prompt", "hi")
    assert "BertForSequenceClassification" in err and "causal language model" in err


@pytest.mark.parametrize("flags, needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--temperature", "-1"], "--temperature -1"),
    (["--top-k", "5"], "needs --temperature > 0"),
    (["--max-new-tokens", "200"], "exceed the model's 128 positions"),
    (["--prompt", ""], "--prompt: empty"),
])
def test_bad_options_are_one_line(lm_dir, capsys, flags, needle):
    argv = ["generate", str(lm_dir), "--prompt", PROMPT, *flags]
    assert needle in one_line_error(capsys, *argv)


def test_a_missing_path_is_one_line(tmp_path, capsys):
    assert "no such file or directory" in one_line_error(capsys, "generate", str(tmp_path / "nope"), "--prompt", "x")
