"""Class weights against hand-computed vectors, zero-count handling, expected resampled counts,
and the ``imbalance`` config section."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from raydeep.errors import DataError
from raydeep.trainers.class_weights import (
    ImbalanceConfig,
    class_weights,
    expected_sampled_counts,
    sampling_rates,
)

COUNTS = [100, 10, 1]


def approx(xs: list[float]) -> object:
    return pytest.approx(xs, rel=1e-12)


def test_inverse():
    # raw [1/100, 1/10, 1/1] = [0.01, 0.1, 1], sum 1.11; normalized to sum to K = 3: x 3/1.11
    assert class_weights(COUNTS, "inverse") == approx([0.01 * 3 / 1.11, 0.1 * 3 / 1.11, 1 * 3 / 1.11])
    assert class_weights(COUNTS, "inverse") == approx([0.02702702702702703, 0.2702702702702703, 2.7027027027027026])


def test_sqrt_inverse():
    # raw [1/10, 1/sqrt(10), 1] = [0.1, 0.31622776601683794, 1], sum 1.416227766016838
    s = 0.1 + 1 / math.sqrt(10) + 1
    assert class_weights(COUNTS, "sqrt_inverse") == approx([0.1 * 3 / s, (1 / math.sqrt(10)) * 3 / s, 3 / s])
    assert class_weights(COUNTS, "sqrt_inverse") == pytest.approx([0.2118303, 0.6698663, 2.1183033], rel=1e-6)


def test_effective_number():
    # beta 0.9: raw (1 - 0.9) / (1 - 0.9**n) for n = 100, 10, 1
    raw = [0.1 / (1 - 0.9**100), 0.1 / (1 - 0.3486784401), 0.1 / 0.1]  # 0.9**10 = 0.3486784401
    assert raw == pytest.approx([0.10000265614, 0.15353399327, 1.0], rel=1e-9)
    s = sum(raw)
    assert class_weights(COUNTS, "effective_number", beta=0.9) == approx([r * 3 / s for r in raw])


def test_effective_number_limits():
    # beta 0: every class counts as one effective sample -> uniform
    assert class_weights(COUNTS, "effective_number", beta=0.0) == approx([1.0, 1.0, 1.0])
    # beta -> 1: (1 - beta) / (1 - beta**n) -> 1/n, the inverse weighting
    near = class_weights(COUNTS, "effective_number", beta=1 - 1e-9)
    assert near == pytest.approx(class_weights(COUNTS, "inverse"), rel=1e-6)


def test_none_is_all_ones_even_with_empty_classes():
    assert class_weights(COUNTS, "none") == [1.0, 1.0, 1.0]
    assert class_weights([5, 0], "none") == [1.0, 1.0]


@pytest.mark.parametrize("weighting", ["none", "inverse", "sqrt_inverse", "effective_number"])
def test_weights_sum_to_the_number_of_classes(weighting):
    counts = [5000, 2400, 1100, 530, 250, 120, 57, 27, 13, 6]  # ratio ~ 1000
    w = class_weights(counts, weighting, beta=0.999)
    assert sum(w) == pytest.approx(len(counts), rel=1e-12)
    assert w == sorted(w)  # rarer class, larger (or equal) weight
    assert class_weights([7, 7, 7, 7], weighting) == approx([1.0] * 4)  # balanced -> all ones


def test_zero_count_is_an_error_naming_the_class():
    with pytest.raises(DataError, match=r"class 1 has no training samples.*imbalance\.zero_count: max_weight"):
        class_weights([100, 0, 1], "inverse")
    with pytest.raises(DataError, match="classes 0, 2 have no training samples"):
        class_weights([0, 5, 0], "sqrt_inverse")


def test_zero_count_max_weight():
    # raw [0.01, -, 1]; the empty class takes the largest raw weight, 1 -> [0.01, 1, 1], sum 2.01
    assert class_weights([100, 0, 1], "inverse", zero_count="max_weight") == approx(
        [0.01 * 3 / 2.01, 1 * 3 / 2.01, 1 * 3 / 2.01]
    )
    with pytest.raises(DataError):
        class_weights([0, 0], "inverse", zero_count="max_weight")  # nothing to take a weight from


@pytest.mark.parametrize(
    "counts, kw",
    [([], {}), ([3, -1], {}), ([3, 1.5], {}), ([3, True], {}), ([3, 1], {"weighting": "balanced"}),
     ([3, 1], {"beta": 1.0}), ([3, 1], {"zero_count": "skip"})],
)
def test_bad_arguments(counts, kw):
    args = {"weighting": "inverse", **kw}
    with pytest.raises(ValueError):
        class_weights(counts, **args)


# ---------------------------------------------------------------------------------------------
# resampling


def test_expected_sampled_counts():
    assert expected_sampled_counts(COUNTS, "none") == [100.0, 10.0, 1.0]
    assert expected_sampled_counts(COUNTS, "oversample") == [100.0, 100.0, 100.0]  # up to n_max
    assert expected_sampled_counts(COUNTS, "undersample") == [1.0, 1.0, 1.0]  # down to n_min
    # sqrt: sqrt(n_c * n_max) = sqrt(10000), sqrt(1000), sqrt(100)
    assert expected_sampled_counts(COUNTS, "sqrt") == approx([100.0, 31.622776601683793, 10.0])
    # an empty class stays empty and does not count as the minimum
    assert expected_sampled_counts([100, 0, 4], "oversample") == [100.0, 0.0, 100.0]
    assert expected_sampled_counts([100, 0, 4], "undersample") == [4.0, 0.0, 4.0]
    assert expected_sampled_counts([100, 0, 4], "sqrt") == [100.0, 0.0, 20.0]
    with pytest.raises(ValueError):
        expected_sampled_counts(COUNTS, "smote")
    with pytest.raises(DataError):
        expected_sampled_counts([0, 0], "oversample")


def test_sampling_rates():
    assert sampling_rates(COUNTS, "oversample") == approx([1.0, 10.0, 100.0])
    assert sampling_rates(COUNTS, "undersample") == approx([0.01, 0.1, 1.0])
    assert sampling_rates([3, 7, 0], "oversample") == approx([7 / 3, 1.0, 0.0])


def test_rates_realized_as_copies_plus_a_coin_reach_the_expected_counts():
    # The realization sampling_rates documents: floor(r) copies plus one more with prob frac(r).
    counts = [300_000, 30_000, 3_000]  # large enough that 10% is > 5 binomial std devs
    rng = np.random.default_rng(0)
    for sampling in ("oversample", "undersample", "sqrt"):
        got = []
        for n, r in zip(counts, sampling_rates(counts, sampling)):
            got.append(n * math.floor(r) + int((rng.random(n) < r - math.floor(r)).sum()))
        expected = expected_sampled_counts(counts, sampling)
        assert got == pytest.approx(expected, rel=0.1), sampling


# ---------------------------------------------------------------------------------------------
# the config section


def test_imbalance_config_defaults():
    cfg = ImbalanceConfig()
    assert (cfg.weighting, cfg.beta, cfg.loss, cfg.gamma, cfg.label_smoothing) == ("none", 0.999, "cross_entropy", 2.0, 0.0)
    assert (cfg.drw_start_epoch, cfg.zero_count, cfg.sampling) == (None, "error", "none")


@pytest.mark.parametrize(
    "kw",
    [
        {"beta": 1.0}, {"beta": -0.1}, {"gamma": -1.0}, {"label_smoothing": 1.0}, {"drw_start_epoch": -1},
        {"weighting": "balanced"}, {"loss": "ldam"}, {"sampling": "smote"}, {"zero_count": "skip"},
        {"weights": [1, 2]},  # unknown key
        {"loss": "focal", "label_smoothing": 0.1},
        {"loss": "mse", "weighting": "inverse"},
        {"loss": "mse", "sampling": "oversample"},
    ],
)
def test_imbalance_config_rejects(kw):
    with pytest.raises(ValidationError):
        ImbalanceConfig(**kw)


def test_imbalance_config_accepts_unused_knobs_so_sweeps_can_swap_losses():
    cfg = ImbalanceConfig(weighting="inverse", beta=0.99, loss="cross_entropy", gamma=1.0, drw_start_epoch=3)
    assert cfg.drw_start_epoch == 3
