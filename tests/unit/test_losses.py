"""Losses: focal and hinge against hand-computed values and against torch's cross-entropy,
deferred re-weighting, MSE shapes, and the seed's worked regression example."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raydeep.trainers.class_weights import ImbalanceConfig
from raydeep.trainers.losses import build_loss, focal_loss, mse_loss, multiclass_hinge_loss


def batch(b: int = 32, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 3, torch.randint(0, k, (b,), generator=g)


W5 = [0.2, 0.5, 1.0, 1.3, 2.0]


def close(a: torch.Tensor, b: torch.Tensor | float, tol: float = 1e-6) -> bool:
    return abs(float(a) - float(b)) < tol


# ---------------------------------------------------------------------------------------------
# focal


def test_focal_at_gamma_zero_is_cross_entropy():
    logits, y = batch()
    assert close(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))


def test_focal_at_gamma_zero_with_alpha_is_weighted_cross_entropy():
    logits, y = batch()
    w = torch.tensor(W5)
    assert close(focal_loss(logits, y, gamma=0.0, alpha=w), F.cross_entropy(logits, y, weight=w))


def test_focal_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    y = torch.tensor([1, 0])
    easy = (1 - 0.75) ** 2 * -math.log(0.75)  # p_t = 3/4: 0.0625 * 0.28768 = 0.0179801
    hard = (1 - 0.25) ** 2 * -math.log(0.25)  # p_t = 1/4: 0.5625 * 1.38629 = 0.7797906
    assert close(focal_loss(logits, y, gamma=2.0), (easy + hard) / 2)
    # alpha [1, 3]: the easy sample is class 1 (weight 3), the hard one class 0 (weight 1)
    assert close(focal_loss(logits, y, gamma=2.0, alpha=torch.tensor([1.0, 3.0])), (3 * easy + 1 * hard) / 4)


def test_focal_gradient_stays_finite_when_p_t_saturates():
    logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    for gamma in (0.0, 0.5, 2.0):
        logits.grad = None
        focal_loss(logits, torch.tensor([0]), gamma=gamma).backward()
        assert torch.isfinite(logits.grad).all(), gamma


# ---------------------------------------------------------------------------------------------
# hinge


def test_crammer_singer_hinge_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, 1.0]])
    y = torch.tensor([0, 2])
    # sample 0: true 2.0, best wrong 1.0: max(0, 1 - 2.0 + 1.0) = 0
    # sample 1: true 1.0, best wrong 1.5: max(0, 1 - 1.0 + 1.5) = 1.5
    assert close(multiclass_hinge_loss(logits, y), (0 + 1.5) / 2)
    # weights [1, 1, 3]: sample weights 1 (class 0) and 3 (class 2) -> (1*0 + 3*1.5) / (1 + 3)
    assert close(multiclass_hinge_loss(logits, y, weights=torch.tensor([1.0, 1.0, 3.0])), 4.5 / 4)
    # margin 0.5: sample 0 max(0, 0.5 - 1.0) = 0, sample 1 0.5 - 1.0 + 1.5 = 1.0
    assert close(multiclass_hinge_loss(logits, y, margin=0.5), 0.5)


# ---------------------------------------------------------------------------------------------
# build_loss


def test_weighted_cross_entropy_matches_torch():
    logits, y = batch()
    loss = build_loss(ImbalanceConfig(weighting="inverse"), W5, num_classes=5)
    assert close(loss(logits, y, 0), F.cross_entropy(logits, y, weight=torch.tensor(W5)))


def test_label_smoothing_matches_torch():
    logits, y = batch()
    plain = build_loss(ImbalanceConfig(label_smoothing=0.1), None, num_classes=5)
    assert close(plain(logits, y, 0), F.cross_entropy(logits, y, label_smoothing=0.1))
    weighted = build_loss(ImbalanceConfig(weighting="inverse", label_smoothing=0.1), W5, num_classes=5)
    expected = F.cross_entropy(logits, y, weight=torch.tensor(W5), label_smoothing=0.1)
    assert close(weighted(logits, y, 0), expected)


def test_focal_and_hinge_through_build_loss():
    logits, y = batch()
    focal = build_loss(ImbalanceConfig(weighting="inverse", loss="focal", gamma=2.0), W5, num_classes=5)
    assert close(focal(logits, y, 0), focal_loss(logits, y, 2.0, torch.tensor(W5)))
    hinge = build_loss(ImbalanceConfig(loss="hinge"), None, num_classes=5)
    assert close(hinge(logits, y, 0), multiclass_hinge_loss(logits, y))


def test_deferred_reweighting_switches_at_its_epoch():
    logits, y = batch()
    loss = build_loss(ImbalanceConfig(weighting="inverse", drw_start_epoch=2), W5, num_classes=5)
    plain, weighted = F.cross_entropy(logits, y), F.cross_entropy(logits, y, weight=torch.tensor(W5))
    assert not close(plain, weighted)
    assert close(loss(logits, y, 0), plain) and close(loss(logits, y, 1), plain)  # epochs 0, 1: plain
    assert close(loss(logits, y, 2), weighted) and close(loss(logits, y, 7), weighted)  # from epoch 2 on


def test_weights_follow_the_logits_dtype():
    logits, y = batch()
    loss = build_loss(ImbalanceConfig(weighting="inverse"), W5, num_classes=5)
    out = loss(logits.to(torch.bfloat16), y, 0)
    assert torch.isfinite(out) and close(out, F.cross_entropy(logits, y, weight=torch.tensor(W5)), tol=0.1)


def test_build_loss_refuses_mismatched_weights():
    with pytest.raises(ValueError, match="3 class weights for 5 classes"):
        build_loss(ImbalanceConfig(weighting="inverse"), [1.0, 1.0, 1.0], num_classes=5)
    with pytest.raises(ValueError, match="mse takes no class weights"):
        build_loss(ImbalanceConfig(loss="mse"), [1.0], num_classes=1)


# ---------------------------------------------------------------------------------------------
# mse and the seed's worked example


def test_mse_accepts_b_or_b1_predictions():
    preds, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 1.0])
    expected = (0 + 1 + 9) / 3
    assert close(mse_loss(preds, target), expected)
    assert close(mse_loss(preds[:, None], target), expected)
    assert close(mse_loss(preds[:, None], target.to(torch.float64)[:, None]), expected)
    with pytest.raises(ValueError, match="predictions"):
        mse_loss(torch.zeros(3, 2), target)  # would broadcast into a 3x3 average


def test_seed_regression_sgd_recovers_y_equals_2x():
    # The seed's worked example: y = 2x has slope 2 and intercept 0 (θ₁ ≈ 2, θ₀ ≈ 0).
    torch.manual_seed(0)
    x = torch.arange(1.0, 6.0)[:, None]  # [1..5]
    y = 2 * x[:, 0]
    model = torch.nn.Linear(1, 1)
    loss_fn = build_loss(ImbalanceConfig(loss="mse"), None, num_classes=1)
    # Full-batch SGD; the MSE Hessian's largest eigenvalue here is ~23.7, so lr < 2/23.7 is stable.
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        loss_fn(model(x), y, 0).backward()
        opt.step()
    assert abs(model.weight.item() - 2.0) < 1e-2
    assert abs(model.bias.item()) < 1e-2
