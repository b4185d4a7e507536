"""The seed project's small convolutional image classifier, kept as the non-Transformer baseline."""

from __future__ import annotations

import torch
from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models.inputs import as_images, image_shape_of
from raydeep.trainers.models.registry import register


class ConvClassifier(nn.Module):
    """Conv(32)-ReLU-MaxPool-Conv(64)-ReLU-MaxPool-Conv(64)-ReLU-Flatten-Dense(64)-ReLU-Dense(K).

    Padding 1 keeps each 3x3 convolution size-preserving, so only the pools shrink the image
    (8 -> 4 -> 2, 32 -> 16 -> 8); unpadded, an 8x8 digit would be gone before the third conv.
    """

    def __init__(self, cfg: ModelConfig, feature: FeatureSpec) -> None:
        super().__init__()
        if feature.kind != "image":
            raise ValueError(
                f"model.kind 'cnn' classifies images, but column {feature.column!r} holds {feature.kind}; "
                + ("use model.kind: linear for numeric features" if feature.kind == "numeric"
                   else "use model.kind: transformer for token data")
            )
        self.image_shape = image_shape_of(feature)
        c, h, w = self.image_shape
        if h < 4 or w < 4:
            raise ValueError(f"the cnn pools twice by 2, so images must be at least 4x4, got {h}x{w}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        # Sizing the dense layer by running the stack once keeps it right for any image shape
        # without restating the pooling arithmetic here.
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, cfg.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = as_images(x, self.image_shape, self.classifier[0].weight.dtype)
        return self.classifier(self.features(img))


@register("cnn")
def build_cnn(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module:
    return ConvClassifier(cfg, feature)
