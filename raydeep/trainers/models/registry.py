"""The model registry: ``model.kind`` -> the builder function that makes it."""

from __future__ import annotations

from typing import Callable

from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec

ModelBuilder = Callable[..., nn.Module]  # (cfg, feature) [+ ds_config=, for PARTITIONED kinds]

MODELS: dict[str, ModelBuilder] = {}
PARTITIONED: set[str] = set()  # kinds that build under ZeRO-3 themselves: their builder takes ds_config=


def register(kind: str, *, partitioned: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a builder to ``MODELS`` under ``kind`` (the value of ``model.kind`` in the config).

    ``partitioned``: the builder is handed the worker's DeepSpeed config (``ds_config=``, None off
    a worker) because it must construct the model partitioned under ZeRO-3 (a pretrained model
    too large for one worker); other models are partitioned by ``deepspeed.initialize``.
    """

    def add(builder: ModelBuilder) -> ModelBuilder:
        if kind in MODELS:
            raise ValueError(f"model kind {kind!r} is already registered (by {MODELS[kind].__module__})")
        MODELS[kind] = builder
        if partitioned:
            PARTITIONED.add(kind)
        return builder

    return add
