"""Pictures of a run: learning curves and the confusion matrix (PNG, written atomically)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

from raydeep.fileio import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers, CI or clusters
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class MetricPanel:
    """The middle panel of learning_curves.png: a task's validation metrics."""

    keys: tuple[str, ...]
    title: str
    ylim: tuple[float, float | None]  # (bottom, top); top None: free


def plot_learning_curves(epochs: list[dict[str, Any]], panel: MetricPanel, path: str | os.PathLike) -> None:
    """Loss, the task's validation metrics and LR against epochs, one panel each."""
    plt = _figure()
    x = [m["epoch"] + 1 for m in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(x, [m["train/loss"] for m in epochs], "o-", label="train")
    axes[0].plot(x, [m["val/loss"] for m in epochs], "o-", label="validation")
    axes[0].set_title("loss")
    for key in panel.keys:
        axes[1].plot(x, [m.get(key) for m in epochs], "o-", label=key.split("/", 1)[1])
    axes[1].set_title(panel.title)
    axes[1].set_ylim(*panel.ylim)
    axes[2].plot(x, [m["lr"] for m in epochs], "o-")
    axes[2].set_title("learning rate (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], label_names: list[str], path: str | os.PathLike) -> None:
    """Row-normalized confusion matrix (recall on the diagonal), with counts in the cells."""
    import numpy as np

    plt = _figure()
    m = np.asarray(cm, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(label_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), label_names)
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_title("validation confusion matrix")
    _save(fig, path)
    plt.close(fig)
