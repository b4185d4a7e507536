"""What differs between tasks, in one place: a ``Task`` per ``model.task``.

A task owns its label contract (what ``label`` holds and how the driver checks it), its loss,
its validation metrics (an accumulator fed batch by batch), its part of the epoch line, its
final table, its summary fields and plots, and the metrics a config may rank by
(``sections.TASK_METRICS``). The loop, the driver, ``raydeep evaluate``, the report and the
sweep ask ``task_of(cfg)``; nothing else branches on the task's name. A new task is one class
here, registered in ``TASKS``, plus its entry in ``sections.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from rich.table import Table

from raydeep.config import Config
from raydeep.datasets.scan import label_histogram, target_summary
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.splits import ParquetSplit
from raydeep.errors import ConfigError
from raydeep.sections import TASK_METRICS
from raydeep.trainers.console import confusion_table, metrics_table, regression_table
from raydeep.trainers.losses import build_loss
from raydeep.trainers.metrics import (
    REGRESSION_KEYS,
    RegressionSums,
    classification_metrics,
    confusion_matrix,
    flat_metrics,
    flat_regression_metrics,
)
from raydeep.trainers.plots import MetricPanel, plot_confusion

LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class LabelFacts:
    """What the driver learned from a split's labels before Ray starts."""

    class_counts: list[int] | None = None  # classification: rows per class
    label_names: list[str] | None = None
    targets: dict[str, float] | None = None  # regression: rows, mean, std, min, max of the targets


class Accumulator(ABC):
    """Validation metrics over many batches, without keeping the batches."""

    @abstractmethod
    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None: ...

    @abstractmethod
    def metrics(self, prefix: str = "val/") -> dict[str, Any]:
        """Flat ``{prefix + name: value}``, ready for metrics.jsonl and Tune."""

    @abstractmethod
    def report(self, label_names: list[str] | None) -> dict[str, Any]:
        """``rows`` and the metrics as ``raydeep evaluate`` writes them to evaluation.json."""


class Task(ABC):
    name: ClassVar[str]
    label_kind: ClassVar[str]  # how datasets.open_split checks the label column: "class" or "value"
    plot_keys: ClassVar[MetricPanel]  # the validation metrics learning_curves.png draws

    @property
    def metric_names(self) -> tuple[str, ...]:
        return TASK_METRICS[self.name]

    # --- the driver, before Ray starts ---------------------------------------------------------

    @abstractmethod
    def check_labels(self, cfg: Config, train: ParquetSplit, val: ParquetSplit) -> LabelFacts:
        """Check both splits' labels against the config (one pyarrow scan of the label column)."""

    @abstractmethod
    def check_split(self, cfg: Config, split: ParquetSplit) -> None:
        """Check one split's labels (``raydeep evaluate --data``) before any compute."""

    def describe(self, facts: LabelFacts, feature_width: int | None) -> str:
        """Extra lines for the run plan printed before training ('' for none)."""
        return ""

    def summary_fields(self, facts: LabelFacts) -> dict[str, Any]:
        """What summary.json holds about the data besides the final metrics."""
        return {}

    # --- the worker ----------------------------------------------------------------------------

    label_columns: ClassVar[tuple[str, ...]] = ("label",)  # what a batch must hold besides the feature

    def targets(self, batch: dict[str, torch.Tensor], feature: FeatureSpec) -> torch.Tensor:
        return batch["label"]

    def tokens(self, targets: torch.Tensor) -> torch.Tensor | int:
        """Tokens a batch trains on, for ``train/tokens_per_s`` (0: the task does not count tokens);
        a device tensor, so counting them costs no host sync per step."""
        return 0

    def loss(self, cfg: Config, class_weights: list[float] | None) -> LossFn:
        return build_loss(cfg.imbalance, class_weights, cfg.model.output_dim)

    @abstractmethod
    def accumulator(self, cfg: Config) -> Accumulator: ...

    # --- what a person reads -------------------------------------------------------------------

    @abstractmethod
    def quality(self, m: dict[str, Any]) -> str:
        """The task's part of the console's epoch line."""

    @abstractmethod
    def final_table(self, final: dict[str, Any], summary: dict[str, Any], title: str) -> Table | None: ...

    @abstractmethod
    def evaluation_tables(self, report: dict[str, Any], label_names: list[str] | None, title: str) -> list[Table]:
        """What ``raydeep evaluate`` prints for ``Accumulator.report``'s result."""

    def plots(self, run_dir: Path, summary: dict[str, Any]) -> None:
        """Task-specific pictures beside learning_curves.png (none by default)."""


class Classification(Task):
    name = "classification"
    label_kind = "class"
    plot_keys = MetricPanel(("val/accuracy", "val/macro_f1", "val/balanced_accuracy"), "validation", (0, 1.02))

    def check_labels(self, cfg: Config, train: ParquetSplit, val: ParquetSplit) -> LabelFacts:
        k = cfg.model.num_classes
        for split in (train, val):
            if split.num_classes is not None and split.num_classes != k:
                raise ConfigError(
                    f"model.num_classes = {k}, but {split.key} ({split.uri}) has {split.num_classes} classes "
                    f"in its manifest; set model.num_classes: {split.num_classes}"
                )
        counts = label_histogram(train, k)
        self.check_split(cfg, val)  # a bad validation label must fail here, not on a worker
        return LabelFacts(class_counts=counts, label_names=train.label_names or [str(i) for i in range(k)])

    def check_split(self, cfg: Config, split: ParquetSplit) -> None:
        label_histogram(split, cfg.model.num_classes)  # labels in [0, num_classes)

    def summary_fields(self, facts: LabelFacts) -> dict[str, Any]:
        return {"label_names": facts.label_names, "class_counts": facts.class_counts}

    def accumulator(self, cfg: Config) -> Accumulator:
        return ConfusionAccumulator(cfg.model.output_dim)

    def quality(self, m: dict[str, Any]) -> str:
        return (f"acc {m['val/accuracy']:.4f}  macro-F1 {m['val/macro_f1']:.4f}  "
                f"bal-acc {m['val/balanced_accuracy']:.4f}  ")

    def final_table(self, final: dict[str, Any], summary: dict[str, Any], title: str) -> Table | None:
        if not summary.get("confusion"):
            return None
        m = classification_metrics(np.asarray(summary["confusion"]), summary["label_names"])
        return metrics_table(m, summary["label_names"], title)

    def evaluation_tables(self, report: dict[str, Any], label_names: list[str] | None, title: str) -> list[Table]:
        return [metrics_table(report, label_names, title), confusion_table(report["confusion"], label_names)]

    def plots(self, run_dir: Path, summary: dict[str, Any]) -> None:
        if summary.get("confusion"):
            plot_confusion(summary["confusion"], summary["label_names"], run_dir / "confusion.png")


class ConfusionAccumulator(Accumulator):
    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # on the host: one small matrix

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.cm += confusion_matrix(outputs.argmax(-1).cpu(), targets.cpu().long(), self.k)

    def metrics(self, prefix: str = "val/") -> dict[str, Any]:
        m = classification_metrics(self.cm.numpy(), None)
        return {**flat_metrics(m, prefix), f"{prefix}confusion": self.cm.tolist()}

    def report(self, label_names: list[str] | None) -> dict[str, Any]:
        return {"rows": int(self.cm.sum()), **classification_metrics(self.cm.numpy(), label_names),
                "confusion": self.cm.tolist()}


class Regression(Task):
    name = "regression"
    label_kind = "value"
    plot_keys = MetricPanel(("val/rmse", "val/mae"), "validation error (target units)", (0, None))

    def check_labels(self, cfg: Config, train: ParquetSplit, val: ParquetSplit) -> LabelFacts:
        targets = target_summary(train)
        self.check_split(cfg, val)  # a null or NaN validation target must fail here, not on a worker
        return LabelFacts(targets=targets)

    def check_split(self, cfg: Config, split: ParquetSplit) -> None:
        target_summary(split)  # every target present and finite

    def describe(self, facts: LabelFacts, feature_width: int | None) -> str:
        t = facts.targets
        return (f"regression on {feature_width} feature(s); training targets: mean {t['mean']:.4g}, "
                f"std {t['std']:.4g} (about the rmse of always predicting the mean), range "
                f"[{t['min']:.4g}, {t['max']:.4g}]")

    def summary_fields(self, facts: LabelFacts) -> dict[str, Any]:
        return {"label_names": None, "class_counts": None, "targets": facts.targets}

    def accumulator(self, cfg: Config) -> Accumulator:
        return RegressionAccumulator()

    def quality(self, m: dict[str, Any]) -> str:
        return f"rmse {m['val/rmse']:.4g}  mae {m['val/mae']:.4g}  r2 {m['val/r2']:.4f}  "

    def final_table(self, final: dict[str, Any], summary: dict[str, Any], title: str) -> Table | None:
        return regression_table(final, summary.get("targets"), summary.get("linear"), title)

    def evaluation_tables(self, report: dict[str, Any], label_names: list[str] | None, title: str) -> list[Table]:
        return [regression_table({f"val/{k}": report[k] for k in REGRESSION_KEYS}, None, None, title)]


class RegressionAccumulator(Accumulator):
    def __init__(self) -> None:
        self.sums = RegressionSums()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.sums.update(outputs.cpu(), targets.cpu())

    def metrics(self, prefix: str = "val/") -> dict[str, Any]:
        return flat_regression_metrics(self.sums.metrics(), prefix)

    def report(self, label_names: list[str] | None) -> dict[str, Any]:
        return {"rows": self.sums.n, **self.sums.metrics()}


class CausalLM(Task):
    """Next-token prediction over ``input_ids`` (no label column): the loss is the mean
    cross-entropy per real token (padding, when the data has any, is ignored), reported with its
    perplexity; ``train/tokens_per_s`` counts the tokens trained on."""

    name = "causal_lm"
    label_kind = "none"
    label_columns = ()
    plot_keys = MetricPanel(("val/perplexity",), "validation perplexity", (1, None))

    def check_labels(self, cfg: Config, train: ParquetSplit, val: ParquetSplit) -> LabelFacts:
        return LabelFacts()  # open_split(label_kind="none") refused a label column

    def check_split(self, cfg: Config, split: ParquetSplit) -> None:
        pass

    def summary_fields(self, facts: LabelFacts) -> dict[str, Any]:
        return {"label_names": None, "class_counts": None}

    def targets(self, batch: dict[str, torch.Tensor], feature: FeatureSpec) -> torch.Tensor:
        ids = batch[feature.column].long()
        return ids if feature.pad_id < 0 else ids.masked_fill(ids == feature.pad_id, IGNORE)

    def tokens(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets[:, 1:] != IGNORE).sum()  # the first token of a row is never a target

    def loss(self, cfg: Config, class_weights: list[float] | None) -> LossFn:
        return lambda logits, ids, epoch: next_token_nll(logits, ids, reduction="mean")

    def accumulator(self, cfg: Config) -> Accumulator:
        return TokenNLLAccumulator()

    def quality(self, m: dict[str, Any]) -> str:
        rate = m.get("train/tokens_per_s")
        return f"ppl {m['val/perplexity']:.3f}  " + (f"{rate:,.0f} tokens/s  " if rate else "")

    def final_table(self, final: dict[str, Any], summary: dict[str, Any], title: str) -> Table | None:
        return lm_table({"loss": final["val/loss"], "perplexity": final["val/perplexity"],
                         "tokens/s (train)": final.get("train/tokens_per_s")}, title)

    def evaluation_tables(self, report: dict[str, Any], label_names: list[str] | None, title: str) -> list[Table]:
        return [lm_table({"loss": report["loss"], "perplexity": report["perplexity"], "tokens": report["tokens"]},
                         title)]


IGNORE = -100  # a target position that is padding: cross_entropy's ignore_index


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy of ``logits[:, t]`` predicting ``ids[:, t + 1]``, over the real tokens."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction=reduction)


def lm_table(rows: dict[str, float | int | None], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows.items():
        if value is not None:
            table.add_row(name, f"{value:,.0f}" if name.startswith("tokens") else f"{value:.4f}")
    return table


class TokenNLLAccumulator(Accumulator):
    """The summed next-token NLL and the tokens it is over (so the loss is per token, not per row)."""

    def __init__(self) -> None:
        self.nll, self.n = 0.0, 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.nll += float(next_token_nll(outputs.float(), targets, reduction="sum"))
        self.n += int((targets[:, 1:] != IGNORE).sum())

    def _loss(self) -> float:
        return self.nll / max(self.n, 1)

    def metrics(self, prefix: str = "val/") -> dict[str, Any]:
        return {f"{prefix}loss": self._loss(), f"{prefix}perplexity": math.exp(min(self._loss(), 700.0))}

    def report(self, label_names: list[str] | None) -> dict[str, Any]:
        return {"rows": None, "tokens": self.n, "loss": self._loss(), "perplexity": math.exp(min(self._loss(), 700.0))}


TASKS: dict[str, Task] = {t.name: t for t in (Classification(), Regression(), CausalLM())}


def task_of(cfg: Config) -> Task:
    return TASKS[cfg.model.task]
