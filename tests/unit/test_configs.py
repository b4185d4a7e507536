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
