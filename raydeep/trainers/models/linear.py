"""``linear``: y = θ₀ + θ·x on a numeric feature vector (or flat pixels).

With ``model.task: regression`` it is linear regression (one output; the seed's worked example
y = 2x ends at θ₀ ≈ 0, θ₁ ≈ 2); with ``classification`` it is multinomial logistic regression
(``num_classes`` outputs, trained with cross-entropy). ``bias`` is θ₀, ``weight`` is θ.
"""

from __future__ import annotations

import torch
from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models.registry import register


class LinearModel(nn.Module):
    def __init__(self, cfg: ModelConfig, feature: FeatureSpec) -> None:
        super().__init__()
        if feature.kind == "tokens":
            raise ValueError(
                f"model.kind 'linear' reads numbers, but column {feature.column!r} holds token ids; "
                "use model.kind: transformer for token data"
            )
        self.num_features = feature.width
        self.one_output = cfg.output_dim == 1
        self.linear = nn.Linear(self.num_features, cfg.output_dim)
        # Zeros: the loss is convex in θ, so no symmetry needs breaking, and a run starts from
        # the same θ = 0 whatever the seed (the worked example's usual starting point).
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def bias(self) -> torch.Tensor:
        return self.linear.bias

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.dtype.is_floating_point:
            raise ValueError(f"expected float features, got {x.dtype} {list(x.shape)}")
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} features per row, got {x.shape[1]}")
        out = self.linear(x.to(self.linear.weight.dtype))
        return out.squeeze(-1) if self.one_output else out  # one value per row: [B], like the targets


@register("linear")
def build_linear(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module:
    return LinearModel(cfg, feature)
