"""model.kind: hf — real transformers models (tiny, random-init, saved locally) behind raydeep's
model contract, without Ray: loading, padding masks, the causal-LM loss, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models import build_model
from raydeep.trainers.tasks import IGNORE, TASKS
from tests.hf_models import ARCHS, save_tiny_model

VOCAB, PAD = 64, 0


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: save_tiny_model(root / arch, arch, vocab_size=VOCAB) for arch in ARCHS}


def tokens(seq_len: int = 16, pad_id: int = PAD, vocab: int = VOCAB) -> FeatureSpec:
    return FeatureSpec("input_ids", "tokens", seq_len=seq_len, vocab_size=vocab, pad_id=pad_id)


def hf(path: Path, **kw) -> ModelConfig:
    kw.setdefault("num_classes", 3 if kw.get("task", "classification") == "classification" else None)
    return ModelConfig(kind="hf", path=str(path), **kw)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_is_masked_one_sequence_two_lengths_same_logits(model_dirs, arch):
    torch.manual_seed(0)
    model = build_model(hf(model_dirs[arch]), tokens()).eval()
    seq = torch.randint(2, VOCAB, (1, 7))
    short = torch.cat([seq, torch.full((1, 3), PAD)], 1)
    long = torch.cat([seq, torch.full((1, 12), PAD)], 1)
    with torch.no_grad():
        a, b = model(short), model(long)
    assert a.shape == (1, 3)
    assert torch.allclose(a, b, atol=1e-5), (a, b)
    # and the mask matters: the same row with its padding treated as tokens gives other logits
    unmasked = build_model(hf(model_dirs[arch]), tokens(pad_id=-1)).eval()
    with torch.no_grad():
        assert not torch.allclose(unmasked(long), a, atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_lm_logits_at_real_positions_ignore_padding(model_dirs, arch):
    model = build_model(hf(model_dirs[arch], task="causal_lm"), tokens()).eval()
    seq = torch.randint(2, VOCAB, (1, 9))
    padded = torch.cat([seq, torch.full((1, 5), PAD)], 1)
    with torch.no_grad():
        a, b = model(seq), model(padded)
    assert a.shape == (1, 9, VOCAB)
    assert torch.allclose(a, b[:, :9], atol=1e-5)


def test_pretrained_loads_the_saved_weights_and_false_draws_new_ones(model_dirs):
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"]).eval()
    ids = torch.randint(2, VOCAB, (2, 10))
    with torch.no_grad():
        want = saved(input_ids=ids).logits
        loaded = build_model(hf(model_dirs["gpt2"], task="causal_lm"), tokens(pad_id=-1)).eval()(ids)
        torch.manual_seed(123)
        fresh = build_model(hf(model_dirs["gpt2"], task="causal_lm", pretrained=False), tokens(pad_id=-1)).eval()(ids)
    assert torch.allclose(loaded, want, atol=1e-5)
    assert not torch.allclose(fresh, want, atol=1e-3)


def test_regression_head_has_one_output(model_dirs):
    model = build_model(hf(model_dirs["bert"], task="regression"), tokens()).eval()
    with torch.no_grad():
        assert model(torch.randint(2, VOCAB, (4, 8))).shape == (4,)


def test_meta_device_build_reads_no_weights(model_dirs, tmp_path):
    # the driver's shape check: a directory whose weights are unreadable still checks
    broken = tmp_path / "m"
    broken.mkdir()
    (broken / "config.json").write_text((model_dirs["bert"] / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with torch.device("meta"):
        model = build_model(hf(broken), tokens())
    assert next(model.parameters()).device.type == "meta"


def test_causal_lm_loss_is_per_real_token_and_ignores_padding():
    task = TASKS["causal_lm"]
    feature = tokens(pad_id=PAD)
    ids = torch.tensor([[5, 6, 7, 8, PAD, PAD], [9, 10, 11, 12, 13, 14]])
    y = task.targets({"input_ids": ids}, feature)
    assert (y == IGNORE).sum() == 2 and int(task.tokens(y)) == 3 + 5
    logits = torch.randn(2, 6, VOCAB)
    real = [(0, t) for t in range(3)] + [(1, t) for t in range(5)]
    want = sum(float(F.cross_entropy(logits[b, t][None], ids[b, t + 1][None])) for b, t in real) / len(real)
    assert float(task.loss(None, None)(logits, y, 0)) == pytest.approx(want, rel=1e-5)
    acc = task.accumulator(None)
    acc.update(logits[:1], y[:1])
    acc.update(logits[1:], y[1:])
    m = acc.metrics("val/")
    assert m["val/loss"] == pytest.approx(want, rel=1e-5)
    assert m["val/perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    packed = tokens(pad_id=-1)  # prepared LM blocks: no padding, every id (EOS included) is a target
    assert int(task.tokens(task.targets({"input_ids": ids}, packed))) == 10


def write_config(d: Path, **fields) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(fields))
    return d


@pytest.mark.parametrize("case, needles", [
    ("missing", ["model.path = ", "not a directory"]),
    ("no_config", ["no config.json in this directory"]),
    ("unknown_arch", ["transformers cannot read its config"]),
    ("no_weights", ["model.pretrained: true, but", "holds no weights", "model.pretrained: false"]),
    ("vocab", ["the data's tokenizer has 5000 ids", "vocabulary 64", "--tokenizer"]),
    ("too_long", ["sequences of 500 tokens exceed", "max_position_embeddings (128)"]),
    ("pixels", ["reads token ids", "holds image"]),
])
def test_bad_model_directories_are_one_line(model_dirs, tmp_path, case, needles):
    path, feature, extra = model_dirs["bert"], tokens(), {}
    if case == "missing":
        path = tmp_path / "nope" / "model"
    elif case == "no_config":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "unknown_arch":
        path = write_config(tmp_path / "odd", model_type="not-a-model")
    elif case == "no_weights":
        path = tmp_path / "bare"
        path.mkdir()
        (path / "config.json").write_text((model_dirs["bert"] / "config.json").read_text())
    elif case == "vocab":
        feature = tokens(vocab=5000)
    elif case == "too_long":
        feature = tokens(seq_len=500)
    elif case == "pixels":
        feature = FeatureSpec("pixels", "image", image_shape=(1, 8, 8))
    with pytest.raises(ValueError) as info, torch.device("meta"):
        build_model(hf(path, **extra), feature)
    text = str(info.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


ZERO3_SCRIPT = """
import os, sys
os.environ["DS_ACCELERATOR"] = "cpu"
import torch, torch.distributed as dist
from raydeep.trainers.engine import isolate_extension_builds
isolate_extension_builds()  # the suite's own build of DeepSpeed's CPU comm op, built once
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo")
import deepspeed
from transformers import AutoModelForCausalLM
from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models import build_model
ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3}}
feature = FeatureSpec("input_ids", "tokens", seq_len=16, vocab_size=64, pad_id=-1)
# the reference first: once a ZeRO-3 model is built, every from_pretrained in the process partitions
saved = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(sys.argv[1]).named_parameters()}
model = build_model(ModelConfig(kind="hf", path=sys.argv[1], task="causal_lm"), feature, ds)
params = dict(model.named_parameters())
# partitioned as constructed: every parameter is a ZeRO-3 handle holding none of its values here
assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in params.values()), "not partitioned at construction"
with deepspeed.zero.GatheredParameters(list(params.values())):
    for name, p in params.items():
        assert torch.equal(p.data, saved[name.removeprefix("model.")]), name
print("ok", len(params))
"""


def test_zero3_builds_the_model_partitioned_and_loads_its_weights(model_dirs):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a free port for the one-process gloo group
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = subprocess.run([sys.executable, "-c", ZERO3_SCRIPT, str(model_dirs["gpt2"]), port],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("ok ")


def test_lora_trains_only_the_adapters(model_dirs):
    from raydeep.config import LoraSection
    from raydeep.trainers.models import count_parameters

    lm = build_model(hf(model_dirs["gpt2"], task="causal_lm", lora=LoraSection(r=4, target_modules=["c_attn"])),
                     tokens(pad_id=-1))
    # GPT-2's c_attn maps 32 -> 96: A is r x 32 and B is 96 x r, in each of 2 layers
    assert count_parameters(lm) == 2 * 4 * (32 + 96)
    clf = build_model(hf(model_dirs["bert"], lora=LoraSection(r=2, target_modules=["query", "value"])), tokens())
    adapters = 2 * 2 * 2 * (32 + 32)  # query and value, 32 -> 32, r = 2, in 2 layers
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "classifier" in n for n in trainable), trainable
    assert count_parameters(clf) == adapters + 32 * 3 + 3  # + the new 3-class head, which must train


def test_lora_on_a_module_the_model_lacks_is_one_line(model_dirs):
    from raydeep.config import LoraSection

    with pytest.raises(ValueError, match=r"^model.lora: ") as info:
        build_model(hf(model_dirs["gpt2"], task="causal_lm", lora=LoraSection(target_modules=["q_proj"])),
                    tokens(pad_id=-1))
    assert "\n" not in str(info.value)


def test_data_tokenized_by_another_tokenizer_is_refused(tmp_path):
    from raydeep.trainers.models.hf import check_data_tokenizer
    from tests.hf_models import tiny_tokenizer

    mine = tiny_tokenizer(["alpha beta gamma delta"] * 20, vocab_size=270)
    other = tiny_tokenizer(["one two three four five"] * 20, vocab_size=270)
    model = save_tiny_model(tmp_path / "model", "gpt2", tokenizer=mine)
    for name, tok in (("same", mine), ("other", other)):
        (tmp_path / name / "train").mkdir(parents=True)
        tok.backend_tokenizer.save(str(tmp_path / name / "tokenizer.json"))
    cfg = hf(model, task="causal_lm")
    check_data_tokenizer(cfg, str(tmp_path / "same" / "train"))
    with pytest.raises(ValueError, match=r"tokens and ids differ from the model's .*--tokenizer "):
        check_data_tokenizer(cfg, str(tmp_path / "other" / "train"))


def test_a_relative_model_path_reaches_the_workers_absolute(model_dirs, monkeypatch):
    # workers start in another directory: the driver's relative path would not be found there
    monkeypatch.chdir(model_dirs["bert"].parent)
    cfg = ModelConfig(kind="hf", path="bert", num_classes=2)
    assert cfg.path == str(model_dirs["bert"])


def test_a_pretrained_load_prints_one_line_naming_the_new_head_and_no_load_report(model_dirs, capsys, caplog):
    """transformers would print a weight-loading bar and a LOAD REPORT table on every worker; raydeep
    prints one line: what the checkpoint did not hold (a classifier head on a base checkpoint)."""
    import logging

    with caplog.at_level(logging.WARNING):
        build_model(hf(model_dirs["bert"]), tokens())
    out, err = capsys.readouterr()
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"raydeep: model.path {model_dirs['bert']}: newly initialised"), out
    assert "classifier.weight" in lines[0] and "classifier.bias" in lines[0], lines
    assert "LOAD REPORT" not in out + err + caplog.text and "Loading weights" not in err
    # the causal LM's checkpoint holds every weight: nothing to say
    build_model(hf(model_dirs["gpt2"], task="causal_lm"), tokens(pad_id=-1))
    assert capsys.readouterr().out.strip() == ""


def test_loading_line_names_missing_mismatched_and_unused_keys():
    from raydeep.trainers.models.hf import loading_line

    assert loading_line("m", {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}) is None
    info = {"missing_keys": {f"k{i}" for i in range(6)}, "unexpected_keys": {"pooler.dense.bias"},
            "mismatched_keys": {("score.weight", (2, 8), (3, 8))}}
    assert loading_line("m", info) == (
        "raydeep: model.path m: newly initialised (not in the checkpoint): k0, k1, k2, k3 and 2 more; "
        "re-initialised (shape differs): score.weight; unused from the checkpoint: pooler.dense.bias")
