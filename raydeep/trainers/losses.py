"""Losses for the worker loop: weighted cross-entropy, focal, multi-class hinge, and MSE.

One weighting convention for every classification loss, the one
``torch.nn.functional.cross_entropy(weight=w)`` uses: the batch loss is the weighted mean
``Σ_i w[y_i] · l_i / Σ_i w[y_i]``. So ``focal`` with ``gamma=0`` and ``alpha=w`` is exactly the
weighted cross-entropy, and switching ``imbalance.loss`` never changes what the weights mean.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raydeep.trainers.class_weights import ImbalanceConfig

LossFn = Callable[[Tensor, Tensor, int], Tensor]


def _weighted_mean(per_sample: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return per_sample.mean()
    w = weights.to(per_sample.dtype)[targets]
    return (per_sample * w).sum() / w.sum()


def focal_loss(logits: Tensor, targets: Tensor, gamma: float, alpha: Tensor | None = None) -> Tensor:
    """Multi-class focal loss (Lin et al. 2017): ``l_i = -(1 - p_t)**gamma · log p_t``.

    ``logits`` ``[B, K]``, ``targets`` ``[B]`` class indices; ``alpha`` ``[K]`` per-class weights
    (the class-balanced focal loss of Cui et al. 2019 when they come from ``class_weights``).
    Reduced as the weighted mean ``Σ alpha[y_i] l_i / Σ alpha[y_i]`` (plain mean without
    ``alpha``), the ``F.cross_entropy(weight=...)`` convention, so ``gamma=0`` is cross-entropy.
    """
    # float32 for the softmax: bf16 logits would quantize p_t, and the focusing term with it.
    log_pt = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    pt = log_pt.exp()
    # The clamp keeps the gradient of (1 - p_t)**gamma finite where p_t saturates to 1 and
    # 0 < gamma < 1; (tiny)**0 is still 1, so gamma=0 is exactly -log p_t.
    per_sample = -((1.0 - pt).clamp(min=1e-12) ** gamma) * log_pt
    return _weighted_mean(per_sample, targets, alpha)


def multiclass_hinge_loss(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None, margin: float = 1.0
) -> Tensor:
    """Crammer–Singer multi-class hinge: ``l_i = max(0, margin - s_{y_i} + max_{j≠y_i} s_j)``.

    Chosen over Weston–Watkins (a sum over every wrong class) because it is zero exactly when
    the true class beats the best wrong class by ``margin``, and its scale does not grow with
    the number of classes. Weighted mean as in ``F.cross_entropy(weight=...)``.
    """
    true = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    is_true = F.one_hot(targets, logits.shape[-1]).bool()
    best_wrong = logits.masked_fill(is_true, float("-inf")).amax(dim=-1)
    per_sample = (margin - true + best_wrong).clamp(min=0.0)
    return _weighted_mean(per_sample, targets, weights)


def mse_loss(preds: Tensor, targets: Tensor) -> Tensor:
    """Regression: ``preds`` ``[B]`` or ``[B, 1]`` against float targets ``[B]`` (or ``[B, 1]``)."""
    if preds.dim() == 2 and preds.shape[1] == 1:
        preds = preds.squeeze(1)
    if targets.dim() == 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    if preds.dim() != 1 or preds.shape != targets.shape:
        # Broadcasting [B, 1] against [B] would silently average a B×B matrix.
        raise ValueError(
            f"mse loss wants predictions [B] or [B, 1] and targets [B]; got {tuple(preds.shape)} "
            f"and {tuple(targets.shape)}"
        )
    return F.mse_loss(preds, targets.to(preds.dtype))


def build_loss(cfg: ImbalanceConfig, weights: Sequence[float] | None, num_classes: int) -> LossFn:
    """``loss_fn(logits_or_preds, targets, epoch) -> scalar mean loss`` for ``cfg.loss``.

    ``weights`` are the per-class weights from ``class_weights`` (``None`` or all ones for
    ``weighting: none``). With ``cfg.drw_start_epoch`` set, epochs before it use the plain,
    unweighted loss and epochs from it on (0-based) use the weights (Cao et al. 2019).
    """
    if cfg.loss == "mse":
        if weights is not None:
            raise ValueError("loss mse takes no class weights")
        return lambda preds, targets, epoch: mse_loss(preds, targets)

    if weights is not None and len(weights) != num_classes:
        raise ValueError(f"got {len(weights)} class weights for {num_classes} classes")
    base = None if weights is None else torch.tensor([float(w) for w in weights])
    on_device: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def weights_for(logits: Tensor, epoch: int) -> Tensor | None:
        if base is None or (cfg.drw_start_epoch is not None and epoch < cfg.drw_start_epoch):
            return None
        key = (logits.device, logits.dtype)
        if key not in on_device:  # one host-to-device copy per device, not one per step
            on_device[key] = base.to(device=logits.device, dtype=logits.dtype)
        return on_device[key]

    if cfg.loss == "cross_entropy":
        smoothing = cfg.label_smoothing
        return lambda logits, targets, epoch: F.cross_entropy(
            logits, targets, weight=weights_for(logits, epoch), label_smoothing=smoothing
        )
    if cfg.loss == "focal":
        gamma = cfg.gamma
        return lambda logits, targets, epoch: focal_loss(logits, targets, gamma, weights_for(logits, epoch))
    if cfg.loss == "hinge":
        return lambda logits, targets, epoch: multiclass_hinge_loss(logits, targets, weights_for(logits, epoch))
    raise ValueError(f"unknown loss {cfg.loss!r}")
