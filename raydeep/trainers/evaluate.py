"""``raydeep evaluate``: a checkpoint's metrics on a data set, in this process, without Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from raydeep.errors import RaydeepError
from raydeep.fileio import atomic_write_text
from raydeep.trainers.checkpoints import STATE_FILE, find_checkpoint, load_state_dict

def load_model(ckpt: Path):
    from raydeep.config import Config
    from raydeep.datasets.schema import FeatureSpec
    from raydeep.trainers.models import build_model

    state = json.loads((ckpt / STATE_FILE).read_text())
    cfg = Config.model_validate(state["config"])
    feature = FeatureSpec.from_dict(state["feature"])
    model = build_model(cfg.model, feature)
    model.load_state_dict(load_state_dict(ckpt, state["zero_stage"]))
    model.eval()
    return model, cfg, feature, state


def batches(split, column: str, batch_size: int):
    """(features, labels) numpy batches straight from the parquet files (one machine, no Ray)."""
    import pyarrow.parquet as pq

    for f in split.files:
        with split.filesystem.open_input_file(f) as fh:
            for rb in pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=[column, "label"]):
                # Both list<int32> tokens (padded to one length) and fixed-size pixel lists
                # flatten to one buffer of n * width values.
                x = rb.column(column).flatten().to_numpy().reshape(len(rb), -1)
                yield x, rb.column("label").to_numpy()


def evaluate_command(path: str, data: str, *, out: str | None = None, batch_size: int = 256) -> dict[str, Any]:
    import torch
    from rich.console import Console

    from raydeep.datasets.sources import label_histogram, open_split
    from raydeep.trainers.console import confusion_table, metrics_table
    from raydeep.trainers.metrics import classification_metrics, confusion_matrix

    ckpt, run_dir = find_checkpoint(path)
    model, cfg, feature, state = load_model(ckpt)
    split = open_split(data, key="--data")
    if split.feature.column != feature.column:
        raise RaydeepError(f"--data {data}: has column {split.feature.column!r}; the model reads {feature.column!r}")
    k = cfg.model.num_classes
    label_histogram(split, k)  # range check before any compute
    cm = torch.zeros(k, k, dtype=torch.int64)
    with torch.no_grad():
        for x, y in batches(split, feature.column, batch_size):
            xt = torch.from_numpy(np.ascontiguousarray(x).copy())
            xt = xt.float() if xt.is_floating_point() else xt.long()
            cm += confusion_matrix(model(xt).argmax(-1), torch.from_numpy(y).long(), k)
    names = state.get("label_names") or [str(i) for i in range(k)]
    metrics = classification_metrics(cm.numpy(), names)
    console = Console()
    console.print(metrics_table(metrics, names, f"{data} — checkpoint {ckpt.name} (epoch {state['epoch'] + 1})"))
    console.print(confusion_table(cm.tolist(), names))
    result = {"checkpoint": str(ckpt), "data": data, "rows": int(cm.sum()), **metrics, "confusion": cm.tolist()}
    out_path = Path(out) if out else run_dir / "evaluation.json"
    atomic_write_text(out_path, json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out_path}")
    return result
