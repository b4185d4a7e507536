"""Class-imbalance handling: the ``imbalance`` config section, per-class loss weights, and the
expected class counts after resampling.

Pure Python (no torch): the driver computes the weights once from the **training** split's
label histogram and passes the list to every worker, which turns it into a tensor in
``losses.build_loss``.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import Field, model_validator

from raydeep.errors import DataError
from raydeep.sections import Section

WEIGHTINGS = ("none", "inverse", "sqrt_inverse", "effective_number")
SAMPLINGS = ("none", "oversample", "undersample", "sqrt")


class ImbalanceConfig(Section):
    """How the loss and the sampler compensate for a long-tailed label distribution.

    ``beta`` is read only by ``weighting: effective_number``, ``gamma`` only by ``loss: focal``;
    they may be set anyway, so one base config can be swept across weightings and losses.
    """

    weighting: Literal["none", "inverse", "sqrt_inverse", "effective_number"] = "none"
    beta: float = Field(0.999, ge=0.0, lt=1.0, description="effective_number only (Cui et al. 2019)")
    loss: Literal["cross_entropy", "focal", "hinge", "mse"] = "cross_entropy"
    gamma: float = Field(2.0, ge=0.0, description="focal only: the focusing exponent (Lin et al. 2017)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross_entropy only")
    drw_start_epoch: int | None = Field(
        None, ge=0, description="deferred re-weighting (Cao et al. 2019): unweighted loss before this 0-based epoch"
    )
    zero_count: Literal["error", "max_weight"] = Field(
        "error", description="a class with no training samples: refuse, or give it the largest weight"
    )
    sampling: Literal["none", "oversample", "undersample", "sqrt"] = Field(
        "none", description="training-split resampling in Ray Data; validation is never resampled"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ImbalanceConfig":
        # Only combinations that would silently change the experiment are refused.
        if self.label_smoothing > 0 and self.loss != "cross_entropy":
            raise ValueError(f"label_smoothing is for loss: cross_entropy only, not loss: {self.loss}")
        if self.loss == "mse" and self.weighting != "none":
            raise ValueError("loss: mse is the regression loss; class weighting needs a classification loss")
        if self.loss == "mse" and self.sampling != "none":
            raise ValueError("loss: mse is the regression loss; class resampling needs class labels")
        return self


def _check_counts(counts: Sequence[int]) -> list[int]:
    out = []
    for c, n in enumerate(counts):
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise ValueError(f"class {c}: count must be a non-negative integer, got {n!r}")
        out.append(int(n))
    if not out:
        raise ValueError("counts is empty: need one count per class")
    return out


def _zero_classes_error(zero: list[int], what: str) -> DataError:
    return DataError(
        f"class{'es' if len(zero) > 1 else ''} {', '.join(map(str, zero))} "
        f"{'have' if len(zero) > 1 else 'has'} no training samples, so {what} is undefined; "
        f"set imbalance.zero_count: max_weight to give {'them' if len(zero) > 1 else 'it'} the largest weight, "
        f"or fix the training split"
    )


def class_weights(
    counts: Sequence[int], weighting: str, beta: float = 0.999, zero_count: str = "error"
) -> list[float]:
    """Per-class loss weights from the training split's class counts, ``K = len(counts)``.

    Raw weights: ``inverse`` ``1/n_c``; ``sqrt_inverse`` ``1/sqrt(n_c)``; ``effective_number``
    ``(1 - beta) / (1 - beta**n_c)`` (Cui et al. 2019); ``none`` all 1. They are then normalized
    so that **they sum to K** (the number of classes), so a balanced data set gets all 1s and
    the loss keeps the scale of the unweighted one.

    A class with ``n_c = 0``: ``zero_count="error"`` raises ``DataError`` naming the class;
    ``"max_weight"`` gives it the largest raw weight among the classes that have samples
    (before normalization). ``weighting="none"`` needs no counts and never raises for zeros.
    """
    n = _check_counts(counts)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if zero_count not in ("error", "max_weight"):
        raise ValueError(f"zero_count must be 'error' or 'max_weight'; got {zero_count!r}")
    k = len(n)
    if weighting == "none":
        return [1.0] * k

    zero = [c for c, nc in enumerate(n) if nc == 0]
    if zero and (zero_count == "error" or len(zero) == k):
        raise _zero_classes_error(zero, f"{weighting} weighting")

    def raw(nc: int) -> float:
        if weighting == "inverse":
            return 1.0 / nc
        if weighting == "sqrt_inverse":
            return 1.0 / math.sqrt(nc)
        if beta == 0.0:
            return 1.0  # one effective sample per class
        # 1 - beta**n without cancellation when beta is close to 1 and n is small
        return (1.0 - beta) / -math.expm1(nc * math.log(beta))

    w = [raw(nc) if nc > 0 else 0.0 for nc in n]
    top = max(w)
    w = [top if nc == 0 else wc for nc, wc in zip(n, w)]
    total = sum(w)
    return [wc * k / total for wc in w]


def _sampling_targets(counts: Sequence[int], sampling: str) -> list[float]:
    n = _check_counts(counts)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")
    present = [nc for nc in n if nc > 0]
    if not present:
        raise DataError("every class count is 0: the training split is empty")
    n_max, n_min = max(present), min(present)
    target = {
        "none": lambda nc: float(nc),
        "oversample": lambda nc: float(n_max),
        "undersample": lambda nc: float(n_min),
        "sqrt": lambda nc: math.sqrt(nc * n_max),
    }[sampling]
    # An empty class has nothing to replicate and stays empty.
    return [target(nc) if nc > 0 else 0.0 for nc in n]


def expected_sampled_counts(counts: Sequence[int], sampling: str) -> list[float]:
    """Exact expected per-class counts of the resampled training split.

    Over the classes that have samples, with ``n_max``/``n_min`` the largest/smallest count:
    ``none`` ``n_c``; ``oversample`` ``n_max`` (every class replicated up to the largest);
    ``undersample`` ``n_min`` (every class thinned down to the smallest); ``sqrt``
    ``sqrt(n_c · n_max)`` (the geometric mean of the class and the largest, so the imbalance
    ratio becomes its square root). A class with no samples stays at 0.
    """
    return _sampling_targets(counts, sampling)


def sampling_rates(counts: Sequence[int], sampling: str) -> list[float]:
    """Expected copies drawn per training row of each class, ``expected_c / n_c`` (0 for an empty class).

    A rate ``r >= 1`` is realized as ``floor(r)`` copies plus one more with probability
    ``r - floor(r)``; a rate ``< 1`` as keeping the row with probability ``r``. Either way the
    expected class count is ``expected_sampled_counts(...)[c]``.
    """
    n = _check_counts(counts)
    return [t / nc if nc > 0 else 0.0 for t, nc in zip(_sampling_targets(n, sampling), n)]
