"""Shaping a batch column for the image models."""

from __future__ import annotations

import torch

from raydeep.datasets.schema import FeatureSpec


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
