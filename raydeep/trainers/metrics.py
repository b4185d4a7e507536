"""Classification metrics from a confusion matrix: exact, and equal to scikit-learn's.

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
