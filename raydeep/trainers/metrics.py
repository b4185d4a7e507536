"""Classification metrics from a confusion matrix, and regression metrics (mse, rmse, mae, r2):
exact, and equal to scikit-learn's.

Workers accumulate one ``[K, K]`` confusion matrix over the validation set (it sums across
batches and across workers, unlike per-batch F1), and every metric is derived from it.
Conventions follow scikit-learn with ``zero_division=0``:

- rows are true classes, columns predicted classes;
- a ratio with a zero denominator is 0.0;
- macro averages (F1, precision, recall) run over the classes that occur in the labels or
  in the predictions, as ``f1_score(y_true, y_pred, average="macro")`` does when not given
  ``labels=``: a class the validation set neither contains nor predicts says nothing
  about the model and would otherwise cap macro F1 at (K-1)/K;
- balanced accuracy is the mean recall over classes with at least one true sample.

``per_class`` lists all K classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``[K, K]`` counts, ``cm[true, predicted]``, on the inputs' device."""
    preds, labels = preds.reshape(-1).long(), labels.reshape(-1).long()
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels differ in size: {preds.numel()} vs {labels.numel()}")
    k = num_classes
    if preds.numel():
        # An out-of-range id would land silently in a neighbouring cell of the flat index.
        lo = torch.minimum(preds.min(), labels.min()).item()
        hi = torch.maximum(preds.max(), labels.max()).item()
        if lo < 0 or hi >= k:
            raise ValueError(f"class ids must lie in [0, {k}), got values in [{lo}, {hi}]")
    return torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den != 0)


def classification_metrics(cm: np.ndarray | torch.Tensor, label_names: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, macro F1/precision/recall, balanced accuracy and per-class figures of ``cm``."""
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(i) for i in range(k)] if label_names is None else [str(n) for n in label_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} label names for a {k}-class confusion matrix")

    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted.astype(np.float64))
    recall = _ratio(tp, support.astype(np.float64))
    # 2tp / (support + predicted) rather than 2pr / (p + r): the same value, in sklearn's
    # arithmetic, so the two agree to the last bit rather than to rounding.
    f1 = _ratio(2 * tp, (support + predicted).astype(np.float64))

    present = (support + predicted) > 0
    supported = support > 0
    total = cm.sum()

    def mean(values: np.ndarray, where: np.ndarray) -> float:
        return float(np.mean(values[where])) if where.any() else 0.0

    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": mean(f1, present),
        "balanced_accuracy": mean(recall, supported),
        "macro_precision": mean(precision, present),
        "macro_recall": mean(recall, present),
        "per_class": [
            {
                "label": names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        ],
    }


def flat_metrics(metrics: dict[str, Any], prefix: str = "val/") -> dict[str, float]:
    """One flat ``{name: float}`` row for metrics.jsonl, Ray Train reports and Tune's ``metric``."""
    out = {
        f"{prefix}{key}": float(metrics[key])
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "macro_precision", "macro_recall")
    }
    for row in metrics.get("per_class", []):
        out[f"{prefix}recall/{row['label']}"] = float(row["recall"])
        out[f"{prefix}f1/{row['label']}"] = float(row["f1"])
    return out


# ---------------------------------------------------------------------------------------------
# Regression (model.task: regression): one predicted value per row against a float target.
#
# r2 follows scikit-learn's ``r2_score`` (``force_finite=True``): ``1 - SSE / SST``, and when the
# targets are all equal (SST = 0) 1.0 for a perfect prediction and 0.0 otherwise.

REGRESSION_KEYS = ("mse", "rmse", "mae", "r2")


def _pairs(preds: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``[N]`` arrays from ``[N]`` or ``[N, 1]`` predictions and ``[N]`` targets (tensors or arrays)."""
    p, t = (np.asarray(v.detach().cpu().double() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
            for v in (preds, targets))
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1 or t.ndim != 1 or p.shape != t.shape:
        # [N, 1] against [N] would broadcast to an N x N table of differences.
        raise ValueError(f"regression metrics want predictions [N] or [N, 1] and targets [N]; got "
                         f"{list(p.shape)} and {list(t.shape)}")
    if p.size == 0:
        raise ValueError("regression metrics of zero rows are undefined")
    return p, t


def mse(preds: Any, targets: Any) -> float:
    """Mean squared error ``Σ (p - y)² / N``."""
    p, t = _pairs(preds, targets)
    return float(np.mean((p - t) ** 2))


def rmse(preds: Any, targets: Any) -> float:
    """Root mean squared error, in the targets' units: ``sqrt(mse)``."""
    return float(np.sqrt(mse(preds, targets)))


def mae(preds: Any, targets: Any) -> float:
    """Mean absolute error ``Σ |p - y| / N``."""
    p, t = _pairs(preds, targets)
    return float(np.mean(np.abs(p - t)))


def _r2_from(sse: float, sst: float) -> float:
    if sst == 0.0:
        return 1.0 if sse == 0.0 else 0.0
    return 1.0 - sse / sst


def r2(preds: Any, targets: Any) -> float:
    """Coefficient of determination ``1 - Σ (p - y)² / Σ (y - ȳ)²`` (see the section note for SST = 0)."""
    p, t = _pairs(preds, targets)
    return _r2_from(float(np.sum((p - t) ** 2)), float(np.sum((t - t.mean()) ** 2)))


class RegressionSums:
    """mse, rmse, mae and r2 over many batches without keeping them: sums in float64.

    The target variance is summed about the first target seen (``Σ (y - K)``, ``Σ (y - K)²``),
    which avoids the cancellation of ``Σ y² - (Σ y)² / N`` when the targets' mean dwarfs their spread.
    """

    def __init__(self) -> None:
        self.n = 0
        self.sse = 0.0
        self.sae = 0.0
        self.shift: float | None = None
        self.sum_d = 0.0
        self.sum_d2 = 0.0

    def update(self, preds: Any, targets: Any) -> None:
        p, t = _pairs(preds, targets)
        e = p - t
        if self.shift is None:
            self.shift = float(t[0])
        d = t - self.shift
        self.n += t.size
        self.sse += float(np.sum(e * e))
        self.sae += float(np.sum(np.abs(e)))
        self.sum_d += float(np.sum(d))
        self.sum_d2 += float(np.sum(d * d))

    def metrics(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("regression metrics of zero rows are undefined")
        sst = max(self.sum_d2 - self.sum_d * self.sum_d / self.n, 0.0)
        m = self.sse / self.n
        return {"mse": m, "rmse": float(np.sqrt(m)), "mae": self.sae / self.n, "r2": _r2_from(self.sse, sst)}


def regression_metrics(preds: Any, targets: Any) -> dict[str, float]:
    """``{"mse", "rmse", "mae", "r2"}`` of one set of predictions."""
    sums = RegressionSums()
    sums.update(preds, targets)
    return sums.metrics()


def flat_regression_metrics(metrics: dict[str, float], prefix: str = "val/") -> dict[str, float]:
    """``{"val/mse": ..., "val/rmse": ..., "val/mae": ..., "val/r2": ...}`` for reports and metrics.jsonl."""
    return {f"{prefix}{key}": float(metrics[key]) for key in REGRESSION_KEYS}
