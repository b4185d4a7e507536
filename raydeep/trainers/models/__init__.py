"""Models, built by ``model.kind`` from the run config and the data's feature spec.

Every model's ``forward(x)`` takes the batch column as the data loader yields it (token ids
``[B, L]``, pixels flat ``[B, C*H*W]`` / ``[B, C, H, W]``, or numeric features ``[B, N]``) and
returns ``[B, model.output_dim]``: logits ``[B, num_classes]`` for classification, one value per
row for ``task: regression`` (``[B, 1]``, or ``[B]``). A new kind is one builder decorated with
``registry.register``, in its own module imported below::

    @register("mlp")
    def build_mlp(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module: ...
"""

from __future__ import annotations

from typing import Any

from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models import cnn, hf, linear, lstm, transformer  # noqa: F401  (importing registers each kind)
from raydeep.trainers.models.registry import MODELS, PARTITIONED


def build_model(cfg: ModelConfig, feature: FeatureSpec, ds_config: dict[str, Any] | None = None) -> nn.Module:
    """The ``cfg.kind`` model for inputs described by ``feature``; ValueError if they do not fit.
    ``ds_config``: the worker's DeepSpeed config (a ``PARTITIONED`` kind builds under ZeRO-3 by it)."""
    try:
        builder = MODELS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown model.kind {cfg.kind!r}; registered kinds: {', '.join(sorted(MODELS))}") from None
    return builder(cfg, feature, ds_config=ds_config) if cfg.kind in PARTITIONED else builder(cfg, feature)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what the optimizer holds state for, and what ZeRO partitions)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
