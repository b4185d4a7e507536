"""The model registry: ``model.kind`` -> the builder function that makes it."""

from __future__ import annotations

from typing import Callable

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
