"""The plain-PyTorch loop that raydeep's workers run, without Ray or DeepSpeed: the baseline.

One process, all cores (``torch.set_num_threads(os.cpu_count())``), raydeep's own model
(``build_model``), optimizer (``build_optimizer``: AdamW, decay on matrices only), loss
(``build_loss``) and LR schedule (``Schedule``), over the same parquet shards, read here with
plain pyarrow. Compare it line by line with ``train_loop_per_worker`` in
``raydeep/trainers/loop.py``; the comments marked ``raydeep:`` name what replaces each line
there, which is everything Ray and DeepSpeed add.

    .venv/bin/python benchmarks/reference_loop.py benchmarks/text-small.yaml [--set k=v ...]

Prints one JSON object: samples/s per epoch and in the steady state (every epoch after the
first), and per-step time percentiles, measured as raydeep measures them (see ``step_times``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    p.add_argument("--epochs", type=int, help="default: the config's run.epochs")
    args = p.parse_args(argv)

    from raydeep.config import load_config
    from raydeep.datasets.sources import label_histogram, open_split
    from raydeep.trainers.class_weights import class_weights
    from raydeep.trainers.engine import build_optimizer
    from raydeep.trainers.loop import seed_everything
    from raydeep.trainers.losses import build_loss
    from raydeep.trainers.models import build_model, count_parameters
    from raydeep.trainers.schedules import Schedule

    cfg = load_config(args.config, args.overrides)
    epochs = args.epochs or cfg.run.epochs
    # raydeep: Ray sets each worker's OMP_NUM_THREADS from its CPU reservation (floor, min 1).
    torch.set_num_threads(args.threads)
    # raydeep: the driver opens and checks the split once (plan_data), the same function.
    split = open_split(cfg.data.train, key="data.train")
    k = cfg.model.num_classes
    weights = None if cfg.imbalance.weighting == "none" else class_weights(
        label_histogram(split, k), cfg.imbalance.weighting, cfg.imbalance.beta, cfg.imbalance.zero_count)
    x_all, y_all = read_split(split)

    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, split.feature)
    # raydeep: create_engine -> deepspeed.initialize(model, this optimizer, ds_config); under
    # ZeRO the engine flattens the parameters and partitions optimizer state across ranks.
    optimizer = build_optimizer(cfg, model)
    loss_fn = build_loss(cfg.imbalance, weights, k)
    b = cfg.data.batch_size
    steps_per_epoch = -(-len(y_all) // b)
    schedule = Schedule(cfg.schedule, cfg.optim.lr, steps_per_epoch * epochs, steps_per_epoch)

    model.train()
    step, per_epoch, steady_steps = 0, [], []
    for epoch in range(epochs):
        seed_everything(cfg.run.seed * 100_003 + epoch * 1_009)
        loss_sum = torch.zeros((), dtype=torch.float64)
        seen, t0 = 0, time.perf_counter()
        # raydeep: torch_batches(ray.train.get_dataset_shard("train"), ...): Ray Data streams this
        # worker's 1/world of the rows (streaming_split) in blocks, cut into batches through a
        # shuffle window on the worker (raydeep/datasets/batches.py).
        marks = [t0]
        for x, y in batches(x_all, y_all, b, np.random.default_rng(epoch)):
            # raydeep: set_lr(engine, ...) writes the same value into DeepSpeed's optimizer.
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            loss = loss_fn(model(x).float(), y, epoch)  # raydeep: engine(x) calls this module
            # raydeep: engine.backward(loss): backward, then DeepSpeed all-reduces (ZeRO-0) or
            # reduce-scatters (ZeRO-1/2/3) the gradients across workers, in buckets.
            loss.backward()
            if cfg.optim.grad_clip:
                # raydeep: DeepSpeed clips inside engine.step() ("gradient_clipping"), over
                # the global norm of all ranks' partitions (one more all-reduce).
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            # raydeep: engine.step(): the optimizer steps each rank's partition, then ranks
            # all-gather the updated parameters (ZeRO-1/2).
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # raydeep: engine.step() zeroes the grads too
            step += 1
            loss_sum += loss.detach().double() * len(y)  # no host sync per step, as in raydeep
            seen += len(y)
            marks.append(time.perf_counter())
        train_time = marks[-1] - t0
        # raydeep: all_reduce_sum over ranks, then validation, ray.train.report (and checkpoint).
        per_epoch.append({"epoch": epoch, "samples": seen, "epoch_time_s": round(train_time, 3),
                          "samples_per_s": round(seen / train_time, 2),
                          "train/loss": round(loss_sum.item() / max(seen, 1), 4),
                          **step_times(np.diff(marks))})
        if epoch > 0 or epochs == 1:
            steady_steps.extend(np.diff(marks).tolist())

    steady = per_epoch[1:] or per_epoch
    result = {
        "what": "reference_loop",
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "batch_size": b,
        "rows": len(y_all),
        "epochs": epochs,
        "samples_per_s": round(sum(e["samples"] for e in steady) / sum(e["epoch_time_s"] for e in steady), 2),
        **step_times(np.asarray(steady_steps)),
        "per_epoch": per_epoch,
    }
    print(json.dumps(result))
    return result


def read_split(split) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split in memory: ``[N, L]`` features and ``[N]`` labels (pyarrow, ~700k rows/s)."""
    col = split.feature.column
    tables = []
    for path in split.files:
        with split.filesystem.open_input_file(path) as f:
            tables.append(pq.read_table(f, columns=[col, "label"]))
    table = pa.concat_tables(tables)
    values = table.column(col).combine_chunks()
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    x = torch.from_numpy(flat.reshape(len(table), -1).copy())
    if not x.is_floating_point():
        x = x.long()
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, rng: np.random.Generator):
    """Shuffled batches of one epoch, the last one partial (as raydeep's ``torch_batches`` yields)."""
    order = torch.from_numpy(rng.permutation(len(y)))
    for i in range(0, len(y), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def step_times(deltas: np.ndarray) -> dict:
    """Percentiles of the time between consecutive step ends (data wait included), in ms.

    raydeep's rank 0 measures the same interval (``step_time_p50_ms``/``p99`` in metrics.jsonl).
    """
    if len(deltas) == 0:
        return {}
    ms = np.asarray(deltas) * 1e3
    return {"step_time_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "step_time_p99_ms": round(float(np.percentile(ms, 99)), 2)}


if __name__ == "__main__":
    main(sys.argv[1:])
