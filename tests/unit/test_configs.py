"""Every shipped config loads: a YAML in configs/ that no longer matches the config models would
otherwise be found by the first user who runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydeep.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_loads(path):
    assert load_config(path).name


def test_the_causal_lm_configs_model_directory_is_a_transformers_config():
    from raydeep.trainers.models.hf import load_hf_config

    cfg = load_config(ROOT / "configs" / "causal-lm.yaml")
    assert not cfg.model.pretrained
    assert load_hf_config(str(ROOT / "configs" / "models" / "gpt2-mini")).model_type == "gpt2"


def _finetune_encoder_benchmark():
    """benchmarks/finetune_encoder.py as a module (benchmarks/ is not a package; it imports only the stdlib)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_encoder", ROOT / "benchmarks" / "finetune_encoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_finetune_encoder_config_is_a_pretrained_classifier_on_the_benchmarks_labels():
    """configs/finetune-encoder.yaml points at a model directory and data CI never has (the MiniLM
    comes from an optional extra, the corpus from the machine's apt index): it validates without
    them, and its head, the labels its comments prepare and the benchmark's sections agree."""
    cfg = load_config(ROOT / "configs" / "finetune-encoder.yaml")
    bench = _finetune_encoder_benchmark()
    assert (cfg.model.kind, cfg.model.task, cfg.model.pretrained) == ("hf", "classification", True)
    assert cfg.model.path.endswith("models/all-MiniLM-L6-v2") and cfg.data.train.endswith("data/debian-sections/train")
    assert cfg.model.num_classes == len(bench.SECTIONS)
    text = (ROOT / "configs" / "finetune-encoder.yaml").read_text()
    assert f"--labels {','.join(bench.SECTIONS)}" in text
    for arm, (overrides, _) in bench.ARMS.items():  # every arm the benchmark runs is a valid config
        arm_cfg = load_config(ROOT / "configs" / "finetune-encoder.yaml", list(overrides))
        assert arm_cfg.model.kind == ("hf" if arm == "minilm" else "transformer"), arm


def test_the_finetune_encoder_config_builds_on_a_bert_directory_before_ray(tmp_path):
    """What the driver does before Ray starts (the model built on the meta device against the data's
    feature), on a tiny saved BERT standing in for the MiniLM: the config's model section is buildable."""
    from raydeep.datasets.schema import FeatureSpec
    from raydeep.trainers.plan import check_model
    from tests.hf_models import save_tiny_model

    bert = save_tiny_model(tmp_path / "bert", "bert", vocab_size=300)
    cfg = load_config(ROOT / "configs" / "finetune-encoder.yaml", [f"model.path={bert}"])
    assert cfg.model.path == str(bert)
    check_model(cfg, FeatureSpec(column="input_ids", kind="tokens", seq_len=32, vocab_size=300, pad_id=0))
