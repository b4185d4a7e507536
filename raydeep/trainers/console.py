"""What a person sees on the driver's terminal: a progress bar, one line per epoch, a final table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


def epoch_line(m: dict[str, Any], epochs: int, quality: str) -> str:
    """One epoch on the console; ``quality`` is the task's part (``Task.quality``)."""
    # The share of the epoch rank 0 spent getting batches: near 0 when compute-bound; a large
    # one says the data path (storage, Ray Data, data.read_ahead_mb, data.block_mb) is the limit.
    data = f" (data {m['data_wait_s'] / m['epoch_time_s']:.0%})" if m.get("data_wait_s") is not None and m.get(
        "epoch_time_s") else ""
    return (
        f"epoch {m['epoch'] + 1}/{epochs}  train loss {m['train/loss']:.4f}  val loss {m['val/loss']:.4f}  "
        f"{quality}{m['samples_per_s']:,.0f} samples/s{data}  lr {m['lr']:.2e}  step {m['global_step']}"
    )


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def metrics_table(metrics: dict[str, Any], label_names: list[str], title: str) -> Table:
    """Per-class precision/recall/F1 and the overall figures, from ``classification_metrics``."""
    table = Table(title=title, title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, row in zip(label_names, metrics["per_class"]):
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    table.add_section()
    total = sum(r["support"] for r in metrics["per_class"])
    table.add_row("macro avg", f"{metrics['macro_precision']:.4f}", f"{metrics['macro_recall']:.4f}",
                  f"{metrics['macro_f1']:.4f}", str(total))
    table.add_row("accuracy", "", "", f"{metrics['accuracy']:.4f}", str(total))
    table.add_row("balanced accuracy", "", "", f"{metrics['balanced_accuracy']:.4f}", str(total))
    return table


def regression_table(final: dict[str, Any], targets: dict[str, float] | None, linear: dict[str, Any] | None,
                     title: str) -> Table:
    """A regression run's validation errors, the training targets' spread beside them (an rmse near
    the std is no better than predicting the mean), and a linear model's coefficients."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("mse", "rmse", "mae", "r2"):
        table.add_row(key, f"{final[f'val/{key}']:.6g}")
    if targets:
        table.add_section()
        table.add_row("train target mean", f"{targets['mean']:.6g}")
        table.add_row("train target std", f"{targets['std']:.6g}")
    if linear:
        table.add_section()
        table.add_row("θ₀ (intercept)", f"{linear['intercept']:.6g}")
        for i, w in enumerate(linear["weights"], start=1):
            table.add_row(f"θ{chr(0x2080 + i)}" if len(linear["weights"]) < 10 else f"θ[{i}]", f"{w:.6g}")
    return table


def confusion_table(cm: list[list[int]], label_names: list[str]) -> Table:
    table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    table.add_column("")
    for name in label_names:
        table.add_column(name, justify="right")
    for name, row in zip(label_names, cm):
        table.add_row(name, *[str(v) for v in row])
    return table
