"""The Task seam: what differs between tasks lives in one class each.

A throw-away third task (next-token prediction over ``input_ids``, no ``label`` column, val loss
and perplexity, no confusion matrix) is written here against the same interface and run
through the worker's real validation pass, the console's epoch line and the report's tables:
if any of those still branched on the task's name, this task would not get through them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from raydeep.config import Config, validate
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.console import epoch_line
from raydeep.trainers.loop import validation_pass
from raydeep.trainers.metrics import classification_metrics
from raydeep.trainers.plots import MetricPanel, plot_learning_curves
from raydeep.trainers.tasks import TASKS, Accumulator, LabelFacts, Task
from tests.helpers import tiny_config

VOCAB, LEN = 7, 6


class NextToken(Task):
    """The toy: predict token t+1 from tokens <= t."""

    name = "toy_next_token"
    label_kind = "any"
    plot_keys = MetricPanel(("val/perplexity",), "validation perplexity", (1, None))

    def check_labels(self, cfg, train, val) -> LabelFacts:
        return LabelFacts()

    def check_split(self, cfg, split) -> None:
        pass

    def targets(self, batch, feature):
        return batch[feature.column]

    def loss(self, cfg, class_weights):
        return lambda logits, ids, epoch: F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1).long())

    def accumulator(self, cfg) -> Accumulator:
        return PerplexityAccumulator()

    def quality(self, m: dict[str, Any]) -> str:
        return f"ppl {m['val/perplexity']:.3f}  "

    def final_table(self, final, summary, title) -> Table:
        table = Table(title=title)
        table.add_column("perplexity")
        table.add_row(f"{final['val/perplexity']:.3f}")
        return table

    def evaluation_tables(self, report, label_names, title) -> list[Table]:
        return [self.final_table({"val/perplexity": report["perplexity"]}, {}, title)]


class PerplexityAccumulator(Accumulator):
    def __init__(self) -> None:
        self.nll, self.tokens = 0.0, 0

    def update(self, outputs, targets) -> None:
        logits, ids = outputs[:, :-1].reshape(-1, VOCAB), targets[:, 1:].reshape(-1).long()
        self.nll += float(F.cross_entropy(logits, ids, reduction="sum"))
        self.tokens += ids.numel()

    def metrics(self, prefix: str = "val/") -> dict[str, Any]:
        return {f"{prefix}perplexity": math.exp(self.nll / self.tokens)}

    def report(self, label_names) -> dict[str, Any]:
        return {"rows": self.tokens, "perplexity": math.exp(self.nll / self.tokens)}


class Blocks:
    """What the batcher reads: pyarrow blocks from ``iter_batches`` (a Ray DataIterator's interface)."""

    def __init__(self, *tables: pa.Table) -> None:
        self.tables = tables

    def iter_batches(self, **_: Any):
        yield from self.tables


class Engine(nn.Module):
    """The parts of a DeepSpeed engine the validation pass touches: call, eval/train, device, module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model
        self.device = torch.device("cpu")

    def forward(self, x):
        return self.module(x)


def token_blocks(rows: np.ndarray, labels: np.ndarray | None = None) -> Blocks:
    cols = {"input_ids": pa.array(list(rows), type=pa.list_(pa.int32()))}
    if labels is not None:
        cols["label"] = pa.array(labels, type=pa.int64())
    return Blocks(pa.table(cols))


def cfg() -> Config:
    return validate(tiny_config(), "tiny.yaml")


def test_a_third_task_goes_through_the_validation_pass_epoch_line_and_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB))
    rows = np.arange(40 * LEN).reshape(40, LEN) % VOCAB  # t+1 = t + 1 mod V: learnable
    task = NextToken()
    feature = FeatureSpec("input_ids", "tokens", seq_len=LEN, vocab_size=VOCAB)
    loss_fn = task.loss(cfg(), None)
    m = validation_pass(Engine(model), token_blocks(rows), task, cfg(), loss_fn, 0, feature, torch.float32)

    # the loss the pass reports is the task's own loss, and perplexity is exp(mean NLL) of the same model
    with torch.no_grad():
        expected = float(loss_fn(model(torch.tensor(rows)), torch.tensor(rows), 0))
    assert m["val/loss"] == pytest.approx(expected, rel=1e-6)
    assert m["val/perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert "val/confusion" not in m and "val/accuracy" not in m

    epoch = {**m, "epoch": 0, "train/loss": 1.0, "samples_per_s": 10.0, "lr": 1e-3, "global_step": 3}
    assert f"val loss {m['val/loss']:.4f}  ppl {m['val/perplexity']:.3f}  10 samples/s" in epoch_line(epoch, 2, task.quality(epoch))
    console = Console(record=True, width=80)
    console.print(task.final_table(epoch, {}, "after epoch 1"))
    assert f"{m['val/perplexity']:.3f}" in console.export_text()


def test_the_learning_curves_draw_the_panel_a_task_names(tmp_path: Path):
    epochs = [{"epoch": e, "train/loss": 2.0 - e, "val/loss": 2.1 - e, "lr": 1e-3, "val/perplexity": 8.0 - e}
              for e in range(2)]
    plot_learning_curves(epochs, NextToken.plot_keys, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classification_validation_pass_matches_a_direct_confusion_matrix():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Flatten(), nn.Linear(8 * LEN, 4))
    rows = np.random.default_rng(0).integers(0, VOCAB, (50, LEN))
    labels = np.random.default_rng(1).integers(0, 4, 50)
    task = TASKS["classification"]
    c = cfg()
    feature = FeatureSpec("input_ids", "tokens", seq_len=LEN, vocab_size=VOCAB)
    m = validation_pass(Engine(model), token_blocks(rows, labels), task, c, task.loss(c, None), 0, feature,
                        torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor(rows))
    cm = np.zeros((4, 4), dtype=np.int64)
    for t, p in zip(labels, logits.argmax(-1).numpy()):
        cm[t, p] += 1
    assert m["val/confusion"] == cm.tolist()
    assert m["val/macro_f1"] == pytest.approx(classification_metrics(cm)["macro_f1"])
    assert m["val/loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor(labels))), rel=1e-6)


def test_every_task_reports_the_metrics_its_config_may_rank_by():
    c = cfg()
    for name, task in TASKS.items():
        assert task.name == name
        acc = task.accumulator(c)
        k = c.model.output_dim
        out, y = {"classification": (torch.randn(6, k), torch.tensor([0, 1, 2, 3, 0, 1])),
                  "regression": (torch.randn(6), torch.randn(6)),
                  "causal_lm": (torch.randn(6, 5, 11), torch.randint(0, 11, (6, 5)))}[name]
        acc.update(out, y)
        reported = {"val/loss", "train/loss", *acc.metrics("val/")}
        assert set(task.metric_names) <= reported, name
