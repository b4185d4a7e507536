"""Models, built by ``model.kind`` from the run config and the data's feature spec.

Every model's ``forward(x)`` takes the batch column as the data loader yields it (token ids
``[B, L]``, pixels flat ``[B, C*H*W]`` / ``[B, C, H, W]``, or numeric features ``[B, N]``) and
returns ``[B, model.output_dim]``: logits ``[B, num_classes]`` for classification, one value per
row for ``task: regression`` (``[B, 1]``, or ``[B]``). A new kind is one decorated builder
function in its own module::

    @register("mlp")
    def build_mlp(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module: ...
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec

ModelBuilder = Callable[[ModelConfig, FeatureSpec], nn.Module]

MODELS: dict[str, ModelBuilder] = {}


def register(kind: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a builder to ``MODELS`` under ``kind`` (the value of ``model.kind`` in the config)."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        if kind in MODELS:
            raise ValueError(f"model kind {kind!r} is already registered (by {MODELS[kind].__module__})")
        MODELS[kind] = builder
        return builder

    return add


def build_model(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module:
    """The ``cfg.kind`` model for inputs described by ``feature``; ValueError if they do not fit."""
    try:
        builder = MODELS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown model.kind {cfg.kind!r}; registered kinds: {', '.join(sorted(MODELS))}") from None
    return builder(cfg, feature)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what the optimizer holds state for, and what ZeRO partitions)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def image_shape_of(feature: FeatureSpec) -> tuple[int, int, int]:
    """``feature.image_shape`` as (C, H, W), or a ValueError that says what is missing."""
    if feature.kind != "image":
        raise ValueError(f"column {feature.column!r} holds {feature.kind}, not images")
    if feature.image_shape is None or len(feature.image_shape) != 3:
        raise ValueError(
            f"column {feature.column!r}: image models need image_shape (C, H, W) in the data's manifest, "
            f"got {feature.image_shape!r}"
        )
    c, h, w = (int(s) for s in feature.image_shape)
    if min(c, h, w) < 1:
        raise ValueError(f"column {feature.column!r}: image_shape {feature.image_shape!r} has a zero or negative side")
    return c, h, w


def as_images(x: torch.Tensor, shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """A pixel batch as ``[B, C, H, W]`` in ``dtype``; pixels are stored flat (C-major) in parquet."""
    c, h, w = shape
    if not x.dtype.is_floating_point:
        # Token ids of length C*H*W would otherwise pass the shape check and train on garbage.
        raise ValueError(f"expected float pixels, got {x.dtype} {list(x.shape)} (token ids?)")
    if x.dim() == 2 and x.shape[1] == c * h * w:
        x = x.reshape(x.shape[0], c, h, w)
    elif not (x.dim() == 4 and tuple(x.shape[1:]) == shape):
        raise ValueError(
            f"expected images of shape [B, {c * h * w}] or [B, {c}, {h}, {w}], got {list(x.shape)}"
        )
    # Under DeepSpeed bf16/fp16 the module's weights are half precision but the loader's pixels
    # are float32; convolutions need both in one dtype.
    return x.to(dtype)


# Importing the modules registers their builders; they import `register` from here, so these
# imports must come after it.
from raydeep.trainers.models import cnn, linear, transformer  # noqa: E402,F401
