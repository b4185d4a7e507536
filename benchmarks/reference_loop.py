"""The plain-PyTorch loop that raydeep's workers run, without Ray or DeepSpeed: the baseline.

One process, all cores (``torch.set_num_threads(os.cpu_count())``), raydeep's own model
(``build_model``), optimizer (``build_optimizer``: AdamW, decay on matrices only), loss
(``build_loss``) and LR schedule (``Schedule``), over the same parquet shards, read here with
plain pyarrow. Compare it line by line with ``train_loop_per_worker`` in
``raydeep/trainers/loop.py``; the comments marked ``raydeep:`` name what replaces each line
there, which is everything Ray and DeepSpeed add.

With ``--deepspeed N`` the same loop runs in N processes (``torch.multiprocessing``, a gloo
group on 127.0.0.1, ``cpu_count // N`` threads each, as Ray gives raydeep's workers), each
wrapping the model in raydeep's own DeepSpeed engine (``deepspeed_config`` + ``create_engine``)
and training on its 1/N of every epoch's rows: data-parallel DeepSpeed without Ray. Between
the plain loop and ``raydeep train`` it splits what DeepSpeed's data parallelism costs from what
Ray adds (``benchmarks/overhead.py`` runs all three).

    .venv/bin/python benchmarks/reference_loop.py benchmarks/text-small.yaml [--set k=v ...] [--deepspeed 2]

Prints one JSON object: samples/s per epoch and in the steady state (every epoch after the
first; with ``--deepspeed``, all processes' samples over rank 0's time), and per-step time
percentiles, measured as raydeep measures them (see ``step_times``).

A config whose task reads no label column (``model.task: causal_lm``, e.g. ``model.kind: hf``
over ``data prepare --task lm`` blocks) trains the same way: the targets and the loss are the
task's own (``Task.targets``, ``Task.loss``, as the worker takes them), and tokens/s is reported
beside samples/s, counted as raydeep counts ``train/tokens_per_s`` (``Task.tokens``).
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
    p.add_argument("--threads", type=int, help="torch intra-op threads per process "
                                               "(default: all cores, divided among --deepspeed processes)")
    p.add_argument("--epochs", type=int, help="default: the config's run.epochs")
    p.add_argument("--deepspeed", type=int, default=0, metavar="N",
                   help="N gloo processes, each wrapping the model in raydeep's DeepSpeed engine (no Ray)")
    args = p.parse_args(argv)
    world = max(args.deepspeed, 1)
    threads = args.threads or max(os.cpu_count() // world, 1)
    if not args.deepspeed:
        result = train(args.config, args.overrides, args.epochs, threads)
    else:
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=train, args=(args.config, args.overrides, args.epochs, threads),
                             kwargs=dict(rank=r, world=world, port=port, results=results)) for r in range(world)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode for proc in procs):
            raise SystemExit(f"a DeepSpeed process failed: exit codes {[proc.exitcode for proc in procs]}")
        result = results.get()  # rank 0's
    print(json.dumps(result))
    return result


def train(config: str, overrides: list[str], epochs: int | None, threads: int, *,
          rank: int = 0, world: int = 1, port: int = 0, results=None) -> dict:
    """One process's loop: plain PyTorch (``world == 1``) or one rank of DeepSpeed over gloo."""
    from raydeep.config import load_config
    from raydeep.datasets import label_histogram, open_split
    from raydeep.trainers.class_weights import class_weights
    from raydeep.trainers.engine import build_optimizer, create_engine, deepspeed_config, set_lr
    from raydeep.trainers.loop import seed_everything
    from raydeep.trainers.losses import build_loss
    from raydeep.trainers.models import build_model, count_parameters
    from raydeep.trainers.schedules import Schedule
    from raydeep.trainers.tasks import task_of

    cfg = load_config(config, overrides)
    epochs = epochs or cfg.run.epochs
    # raydeep: Ray sets each worker's OMP_NUM_THREADS from its CPU reservation (floor, min 1).
    torch.set_num_threads(threads)
    # raydeep: the driver opens and checks the split once (plan_data), the same function.
    task = task_of(cfg)
    split = open_split(cfg.data.train, key="data.train", label_kind=task.label_kind)
    k = cfg.model.num_classes
    weights = None if cfg.imbalance.weighting == "none" else class_weights(
        label_histogram(split, k), cfg.imbalance.weighting, cfg.imbalance.beta, cfg.imbalance.zero_count)
    if task.label_columns:
        x_all, y_all = read_split(split)
    else:  # causal LM: the targets are the inputs themselves (padding masked), as task.targets makes them
        x_all = read_split(split, label=False)[0]
        y_all = task.targets({split.feature.column: x_all}, split.feature)

    seed_everything(cfg.run.seed)
    model = build_model(cfg.model, split.feature)
    # raydeep: the worker takes task.loss(cfg, class_weights); for classification it is this same call.
    loss_fn = build_loss(cfg.imbalance, weights, k) if task.label_columns else task.loss(cfg, weights)
    b = cfg.data.batch_size
    rows = len(y_all) // world  # per process; streaming_split(equal=True) also drops the remainder
    steps_per_epoch = -(-rows // b)
    schedule = Schedule(cfg.schedule, cfg.optim.lr, steps_per_epoch * epochs, steps_per_epoch)
    if world > 1:
        import torch.distributed as dist

        # raydeep: Ray Train sets up this gloo group on its workers (TorchConfig backend="gloo")
        # and the environment DeepSpeed reads.
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        ds_config = deepspeed_config(cfg, world_size=world, device="cpu")
        engine = create_engine(cfg, model, ds_config, "cpu")  # raydeep's worker calls the same
    else:
        # raydeep: create_engine -> deepspeed.initialize(model, this optimizer, ds_config); under
        # ZeRO the engine flattens the parameters and partitions optimizer state across ranks.
        optimizer = build_optimizer(cfg, model)

    model.train()
    step, per_epoch, steady_steps = 0, [], []
    for epoch in range(epochs):
        seed_everything(cfg.run.seed * 100_003 + epoch * 1_009 + rank)
        loss_sum = torch.zeros((), dtype=torch.float64)
        seen, tokens, t0 = 0, 0, time.perf_counter()
        # raydeep: torch_batches(ray.train.get_dataset_shard("train"), ...): Ray Data streams this
        # worker's 1/world of the rows (streaming_split) in blocks, cut into batches through a
        # shuffle window on the worker (raydeep/datasets/batches.py).
        marks = [t0]
        for x, y in batches(x_all, y_all, b, np.random.default_rng(epoch), rank, world):
            if world > 1:
                set_lr(engine, schedule(step))
                loss = loss_fn(engine(x).float(), y, epoch)
                engine.backward(loss)
                engine.step()
            else:
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
            seen += len(y) * world  # every process steps in lockstep on equal shards
            tokens += task.tokens(y) * world  # 0 for tasks that do not count tokens
            marks.append(time.perf_counter())
        train_time = marks[-1] - t0
        tokens = int(tokens)  # Task.tokens may be a tensor: summed without a host sync per step, as in raydeep
        # raydeep: all_reduce_sum over ranks, then validation, ray.train.report (and checkpoint).
        per_epoch.append({"epoch": epoch, "samples": seen, "epoch_time_s": round(train_time, 3),
                          "samples_per_s": round(seen / train_time, 2),
                          **({"tokens": tokens, "tokens_per_s": round(tokens / train_time, 1)} if tokens else {}),
                          "train/loss": round(loss_sum.item() * world / max(seen, 1), 4),
                          **step_times(np.diff(marks))})
        if epoch > 0 or epochs == 1:
            steady_steps.extend(np.diff(marks).tolist())

    steady = per_epoch[1:] or per_epoch
    result = {
        "what": "reference_loop" if world == 1 else "deepspeed_loop",
        "processes": world,
        "threads": torch.get_num_threads(),
        "zero_stage": cfg.deepspeed.zero_stage if world > 1 else None,
        "parameters": count_parameters(model),
        "batch_size": b,
        "rows": len(y_all),
        "epochs": epochs,
        "samples_per_s": round(sum(e["samples"] for e in steady) / sum(e["epoch_time_s"] for e in steady), 2),
        **({"tokens_per_s": round(sum(e["tokens"] for e in steady) / sum(e["epoch_time_s"] for e in steady), 1)}
           if all(e.get("tokens") for e in steady) else {}),
        **step_times(np.asarray(steady_steps)),
        "per_epoch": per_epoch,
    }
    if world > 1:
        dist.destroy_process_group()
        if rank == 0:
            results.put(result)
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_split(split, label: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The whole split in memory: ``[N, L]`` features and ``[N]`` labels (pyarrow, ~700k rows/s).

    ``label=False``: a split without a label column (causal-LM blocks); the labels are None."""
    col = split.feature.column
    tables = []
    for path in split.files:
        with split.filesystem.open_input_file(path) as f:
            tables.append(pq.read_table(f, columns=[col, "label"] if label else [col]))
    table = pa.concat_tables(tables)
    values = table.column(col).combine_chunks()
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    x = torch.from_numpy(flat.reshape(len(table), -1).copy())
    if not x.is_floating_point():
        x = x.long()
    if not label:
        return x, None
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, rng: np.random.Generator,
            rank: int = 0, world: int = 1):
    """Shuffled batches of one epoch, the last one partial (as raydeep's ``torch_batches`` yields).

    With ``world > 1``: this rank's stride of the epoch's permutation, ``len(y) // world`` rows.
    """
    order = torch.from_numpy(rng.permutation(len(y))[rank::world][:len(y) // world])
    for i in range(0, len(order), batch_size):
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
