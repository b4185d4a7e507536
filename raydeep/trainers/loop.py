"""What each Ray Train worker runs: the training loop, in one function.

``train_loop_per_worker`` is the heart of raydeep; a step is: set the LR from the schedule,
forward, loss, ``engine.backward``, ``engine.step``. Everything else (checkpoint layout,
validation, metric reduction) is a small helper below it.

Validation is NOT split across workers: every worker reads all of it. We chose this over
"rank 0 alone" because under ZeRO-3 parameters are partitioned and every forward pass is a
collective: a forward on rank 0 alone would hang. And we chose it over a split validation
set because ``streaming_split(equal=True)`` trims rows to equalize shards (the metrics would
not be over the whole set) while an unequal split leaves ranks with different numbers of
forward passes, which again hangs ZeRO-3. Every rank therefore builds the same, complete
confusion matrix (for ``model.task: regression``, the same error sums); rank 0's is reported.
The cost is duplicated validation compute, which is small next to an epoch of training on any
realistic split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from raydeep.config import Config
from raydeep.datasets.batches import torch_batches
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.checkpoints import ENGINE_TAG, STATE_FILE
from raydeep.trainers.engine import create_engine, input_dtype, l1_penalty, set_lr
from raydeep.trainers.losses import build_loss
from raydeep.trainers.metrics import (
    RegressionSums,
    classification_metrics,
    confusion_matrix,
    flat_metrics,
    flat_regression_metrics,
)
from raydeep.trainers.models import build_model
from raydeep.trainers.progress import StepTicker
from raydeep.trainers.schedules import Schedule



def train_loop_per_worker(job: dict[str, Any]) -> dict[str, Any]:
    marks = {"loop_entry": time.time()}  # rank 0's start-up timeline, for summary.json's "startup"
    cfg = Config.model_validate(job["config"])
    if not job.get("verbose"):
        # Ray Train logs every report at INFO, with the whole metrics dict, on every rank.
        # (That module's logger is named by its file path, not "ray.train...".)
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    feature = FeatureSpec.from_dict(job["feature"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.run.seed)  # identical initial weights on every rank

    engine = create_engine(cfg, build_model(cfg.model, feature), job["ds_config"], job["device"],
                           job.get("verbose", False))
    marks["engine_ready"] = time.time()
    schedule = Schedule(cfg.schedule, cfg.optim.lr, job["total_steps"], job["optimizer_steps_per_epoch"])
    loss_fn = build_loss(cfg.imbalance, job["class_weights"], cfg.model.output_dim)
    state = {"epoch": 0, "best": None, "best_epoch": None, "bad_epochs": 0}
    resumed_from = restore(engine, schedule, state)
    board = job["board"] if rank == 0 else None  # None in Tune trials: Tune draws its own table
    ticker = StepTicker(board)
    if board is not None and resumed_from is not None:
        board.event.remote(f"resumed at epoch {state['epoch']}, global step {engine.global_steps}")

    train_shard = dataset_shard(job, "train", rank, world, first_epoch=state["epoch"])
    val_data = dataset_shard(job, "val", rank, world)
    limits = value_limits(engine.module, feature)
    dtype = input_dtype(engine)
    es = cfg.run.early_stopping
    metrics: dict[str, Any] = {}
    stop = False
    first_epoch = state["epoch"]
    for epoch in range(first_epoch, cfg.run.epochs):
        # Reseeding from (seed, epoch, rank) makes every epoch reproducible on its own, so a
        # run resumed at an epoch boundary draws the same dropout masks as an uninterrupted one.
        seed_everything(cfg.run.seed * 100_003 + epoch * 1_009 + rank)
        engine.train()
        loss_sum = torch.zeros((), dtype=torch.float64)  # accumulated on device: no host sync per step
        seen, t0 = 0, time.perf_counter()
        step_ends = [t0]  # for step-time percentiles; no device sync, no collective
        waits = []  # per step, getting the batch (Ray's stream and the batcher): is the run input-bound?
        batches = torch_batches(  # whole blocks from Ray, cut and shuffled here (datasets/batches.py)
            train_shard,
            batch_size=cfg.data.batch_size,
            shuffle_buffer=cfg.data.shuffle_buffer,
            seed=cfg.run.seed * 100_003 + epoch * 1_009 + rank,  # new order each epoch
            device=engine.device,
            limits=limits,
            where="data.train",
        )
        for step_in_epoch, batch in enumerate(batches):
            waits.append(time.perf_counter() - step_ends[-1])
            marks.setdefault("first_batch", time.time())
            x, y = inputs(batch, feature, dtype), batch["label"]
            set_lr(engine, schedule(engine.global_steps))
            loss = loss_fn(engine(x).float(), y, epoch)
            if cfg.optim.l1:
                loss = loss + l1_penalty(engine.module, cfg.optim.l1)
            engine.backward(loss)
            engine.step()
            step_ends.append(time.perf_counter())
            marks.setdefault("first_step", time.time())
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            ticker.tick(epoch=epoch, step=step_in_epoch + 1, steps=job["steps_per_epoch"],
                        global_step=engine.global_steps, samples_per_s=seen * world / (time.perf_counter() - t0))
        train_time = time.perf_counter() - t0

        loss_total, seen_total = all_reduce_sum([loss_sum.item(), float(seen)], engine.device)
        val = evaluate(engine, val_data, feature, cfg, loss_fn, epoch, dtype)
        metrics = {
            "epoch": epoch,
            "global_step": engine.global_steps,
            "train/loss": loss_total / max(seen_total, 1),
            "train/samples": int(seen_total),
            "samples_per_s": seen_total / train_time,
            "epoch_time_s": train_time,
            "data_wait_s": sum(waits),  # rank 0's, of epoch_time_s; the first batch's wait included
            "first_batch_s": waits[0] if waits else None,
            **step_time_percentiles(step_ends),  # rank 0's, as is samples_per_s's clock
            "lr": schedule(max(engine.global_steps - 1, 0)),
            **val,
        }
        schedule.observe(epoch, metrics.get(getattr(cfg.schedule, "metric", "val/loss")))  # plateau reads it
        stop = update_early_stopping(state, metrics, es.metric, es.mode, es.patience, epoch)
        metrics["best/" + es.metric] = state["best"]
        state["epoch"] = epoch + 1
        last = stop or epoch + 1 == cfg.run.epochs
        if board is not None:
            board.epoch_end.remote(metrics)
            if epoch == first_epoch:
                board.record_startup.remote(marks)
        if last or (epoch + 1) % cfg.run.checkpoint_every == 0:
            save_and_report(engine, schedule, state, metrics, rank, job)
        else:
            ray.train.report(metrics)
        if stop:
            break
    return {**metrics, "resumed_from_step": resumed_from, "stopped_early": stop}


# ---------------------------------------------------------------------------------------------


def dataset_shard(job: dict[str, Any], name: str, rank: int, world: int, first_epoch: int = 0):
    """This worker's ``name`` split: its rows of a split held in memory (``datasets/memory.py``; the
    training split is dealt anew each epoch, validation is whole) or Ray Data's shard of a streamed one."""
    held = job.get("in_memory", {}).get(name)
    if held is None:
        return ray.train.get_dataset_shard(name)
    return held.shard(rank, world, split=name == "train", first_epoch=first_epoch)


def value_limits(model: torch.nn.Module, feature: FeatureSpec) -> dict[str, tuple[int, int, str]]:
    """Token ids must index the model's embedding: ``[0, vocab_size)``, checked per block by the batcher."""
    vocab = getattr(model, "vocab_size", None)
    if feature.kind != "tokens" or vocab is None:
        return {}
    return {feature.column: (0, int(vocab), f"the model's vocabulary has {int(vocab)} ids: model.vocab_size, "
                                            "default the manifest's vocab_size")}


def inputs(batch: dict[str, torch.Tensor], feature: FeatureSpec, dtype: torch.dtype) -> torch.Tensor:
    x = batch[feature.column]
    return x.to(dtype) if x.is_floating_point() else x


@torch.no_grad()
def evaluate(engine, data, feature: FeatureSpec, cfg: Config, loss_fn, epoch: int, dtype) -> dict[str, Any]:
    """Loss and metrics over the whole validation set (see the module docstring): classification
    metrics from one confusion matrix, or regression's mse, rmse, mae and r2."""
    engine.eval()
    regression = cfg.model.task == "regression"
    k = cfg.model.output_dim
    cm = torch.zeros(k, k, dtype=torch.int64)
    sums = RegressionSums()
    loss_sum, n = 0.0, 0
    for batch in torch_batches(data, batch_size=max(cfg.data.batch_size, 256), device=engine.device,
                               limits=value_limits(engine.module, feature), where="data.val"):
        y = batch["label"]
        out = engine(inputs(batch, feature, dtype)).float()
        loss_sum += float(loss_fn(out, y, epoch)) * len(y)
        n += len(y)
        if regression:
            sums.update(out.cpu(), y.cpu())
        else:
            cm += confusion_matrix(out.argmax(-1).cpu(), y.cpu(), k)
    engine.train()
    if regression:
        return {"val/loss": loss_sum / max(n, 1), **flat_regression_metrics(sums.metrics(), "val/")}
    m = classification_metrics(cm.numpy(), None)
    return {"val/loss": loss_sum / max(n, 1), **flat_metrics(m, "val/"), "val/confusion": cm.tolist()}


def step_time_percentiles(step_ends: list[float]) -> dict[str, float]:
    """p50/p99 of the intervals between consecutive step ends, in ms (waiting for data included).

    No device sync: on a GPU a step end is when the host queued it, which the device's pace
    governs once its queue is full; p99 then shows host stalls (data, reports), not kernels.
    """
    if len(step_ends) < 2:
        return {}
    ms = np.diff(np.asarray(step_ends)) * 1e3
    return {"step_time_p50_ms": float(np.percentile(ms, 50)), "step_time_p99_ms": float(np.percentile(ms, 99))}


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)  # NCCL reduces only CUDA tensors
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def update_early_stopping(state: dict, metrics: dict, key: str, mode: str, patience: int | None,
                          epoch: int) -> bool:
    value = metrics.get(key)
    if value is None:
        return False
    better = state["best"] is None or (value > state["best"] if mode == "max" else value < state["best"])
    if better:
        state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch, 0
    else:
        state["bad_epochs"] += 1
    return patience is not None and state["bad_epochs"] >= patience


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_and_report(engine, schedule, state: dict, metrics: dict, rank: int, job: dict) -> None:
    """Every rank saves its ZeRO shard and reports the directory; Ray merges them into one."""
    tmp = Path(tempfile.mkdtemp(prefix=f"raydeep-ckpt-r{rank}-"))
    try:
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG,
                               client_state={"raydeep": {**state, "schedule": schedule.state_dict()}})
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({
                "config": job["config"], "feature": job["feature"], "label_names": job["label_names"],
                "epoch": metrics["epoch"], "global_step": metrics["global_step"],
                "zero_stage": job["ds_config"].get("zero_optimization", {}).get("stage", 0),
                "world_size": ray.train.get_context().get_world_size(),
                "metrics": {k: v for k, v in metrics.items() if k != "val/confusion"},
            }, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore(engine, schedule, state: dict) -> int | None:
    """Resume from Ray's latest checkpoint, if any; returns the global step resumed from.

    The RNG needs no saving: each epoch reseeds from (seed, epoch, rank).
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        _, client = engine.load_checkpoint(d, tag=ENGINE_TAG)
        saved = client["raydeep"]
        schedule.load_state_dict(saved.pop("schedule"))
        state.update(saved)
    return int(engine.global_steps)


def steps_per_epoch(num_rows: int, world_size: int, batch_size: int) -> int:
    """Micro-batches each worker runs per epoch: ``streaming_split(equal=True)`` gives every
    worker ``num_rows // world_size`` rows (the remainder is dropped and reported)."""
    return math.ceil((num_rows // world_size) / batch_size)
