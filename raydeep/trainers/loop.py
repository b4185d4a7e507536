"""What each Ray Train worker runs: the training loop, in one function, and the validation pass.

A step is: set the LR from the schedule, forward, the task's loss, ``engine.backward``,
``engine.step``. Before each batch the ranks agree that every one of them has it (``lockstep``:
one all-reduce of one flag), and between loss and backward that the loss is finite on all of
them (``finite_everywhere``: another, a host sync per step). A failure that would recur on a
retry (a block of data failing its checks as it is read, a non-finite loss under
``run.on_nonfinite_loss: stop``) is thus met by every rank together, and ends the run with a
*return* holding its one line (``StopRun``), which the driver raises: Ray Train retries an
error (``max_failures``), and would wait forever for a rank left in a collective. A non-finite
loss under ``skip_batch`` is skipped by every rank alike (``train/skipped_steps``): no backward
on a NaN loss, no optimizer or schedule step. Measurement (``EpochMeter``), early stopping
(``EarlyStopping``), the epoch seed (``epoch_seed``), the accumulation window a checkpoint cuts
(``AccumulationWindow``), when a checkpoint is due (``CheckpointClock``: epochs, or also every N
steps or M minutes mid-epoch), the rank's place in the epoch's sample order
(``datasets.epoch_order.EpochOrder``; a mid-epoch checkpoint saves it, ``resume_epoch`` puts it
back: the exact next sample) and save/restore (``reporting.py``) sit behind one name each, so the
loop reads top to bottom.

Validation is NOT split across workers: every worker reads all of it. We chose this over
"rank 0 alone" because under ZeRO-3 parameters are partitioned and every forward pass is a
collective: a forward on rank 0 alone would hang. And we chose it over a split validation
set because an equal split trims rows (the metrics would not be over the whole set) while an
unequal split leaves ranks with different numbers of forward passes, which again hangs ZeRO-3.
Every rank therefore builds the same, complete metrics (the task's accumulator); rank 0's are
reported. The cost is duplicated validation compute, which is small next to an epoch of
training on any realistic split.
"""

from __future__ import annotations

import logging
import math
import random
import time
from functools import partial
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train.v2._internal.execution import context as train_context

from raydeep.config import Config, EarlyStoppingConfig
from raydeep.datasets.batches import torch_batches
from raydeep.datasets.epoch_order import SAMPLE_ID, EpochOrder, Piece, PlannedOrder, Position, deal_remainder
from raydeep.datasets.schema import FeatureSpec
from raydeep.errors import RaydeepError
from raydeep.trainers.engine import (create_engine, held_parameter_bytes, input_dtype, l1_penalty,
                                     select_accelerator, set_lr)
from raydeep.trainers.models import build_model
from raydeep.trainers.plan import WorkerJob
from raydeep.trainers.progress import StepTicker
from raydeep.trainers.checkpoints import resume_world_line
from raydeep.trainers.reporting import STOPPED, STOPPED_KIND, report_epoch, report_mid_epoch, restore
from raydeep.trainers.schedules import Schedule
from raydeep.trainers.tasks import Task, task_of


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's worker function: how the run ended (resumed from, stopped early), or the one line of a
    stopped run. The metrics leave by ``report_epoch`` only."""
    try:
        return train_worker(config["job"])
    except StopRun as stop:  # a return, not an error: Ray Train would retry an error
        return {STOPPED: str(stop), STOPPED_KIND: stop.kind}


def train_worker(job: WorkerJob) -> dict[str, Any]:
    marks = {"loop_entry": time.time()}  # rank 0's start-up timeline, for summary.json's "startup"
    cfg, task, feature = job.config, task_of(job.config), job.feature
    if not job.verbose:  # Ray Train logs every report at INFO, with the whole metrics dict, on every rank
        train_context.logger.setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(cfg.run.seed)  # identical initial weights on every rank
    select_accelerator(job.device)  # before anything imports deepspeed (a hf model under ZeRO-3 does)
    model = build_model(cfg.model, feature, job.ds_config)  # hf under ZeRO-3: partitioned as it loads
    engine = create_engine(cfg, model, job.ds_config, job.device, job.verbose)
    marks["engine_ready"] = time.time()
    schedule = Schedule(cfg.schedule, cfg.optim.lr, job.steps.total, job.steps.optimizer_per_epoch)
    loss_fn = task.loss(cfg, job.class_weights)
    forward = partial(forward_loss, engine, schedule, loss_fn, cfg)
    stopper, window = EarlyStopping(cfg.run.early_stopping), AccumulationWindow(engine)
    saved = restore(engine, schedule, window)
    for x, y, epoch in window.replay():  # the micro-batches of a window the checkpoint cut: gradients again
        engine.backward(forward(x, y, epoch))
        engine.step()
    first_epoch = stopper.load_state_dict(saved) if saved else 0
    board = job.board if rank == 0 else None  # None in Tune trials: Tune draws its own table
    ticker, clock = StepTicker(board, log_every=cfg.run.log_every_steps), CheckpointClock(cfg, engine.global_steps, rank)
    resumed = resume_note(saved, board, job, world, int(engine.global_steps))
    train_data = dataset_shard(job, "train", rank, world, first_epoch=first_epoch)
    val_data = dataset_shard(job, "val", rank, world)
    limits, dtype = value_limits(engine.module, feature), input_dtype(engine)
    held = held_parameter_bytes(engine.module)  # rank 0's: ~1/world of the model under ZeRO-3
    samples_log, stop = SampleLog.open(job.sample_log, rank), False
    for epoch in range(first_epoch, cfg.run.epochs):
        seed_everything(epoch_seed(cfg.run.seed, epoch, rank))  # each epoch reproducible on its own
        engine.train()
        meter = EpochMeter(engine.device)  # a mid-epoch checkpoint's place, RNG and figures put back:
        order = resume_epoch(saved, epoch, epoch_order(cfg, epoch, rank, train_data), meter, engine.device, world)
        blocks = epoch_source(train_data, order, epoch, ids=samples_log is not None)
        batches = torch_batches(blocks, batch_size=cfg.data.batch_size, device=engine.device, limits=limits,
                                where="data.train", widths={feature.column: feature.width}, order=order)
        for batch in meter.timed(lockstep(batches, engine.device)):
            x, y = inputs(batch, feature, dtype), task.targets(batch, feature)
            window.before_forward()
            loss = forward(x, y, epoch)
            if not finite_everywhere(loss):  # all ranks agree: none calls backward or step
                meter.skip()
                if cfg.run.on_nonfinite_loss == "skip_batch":
                    continue
                raise StopRun(nonfinite_line(loss, epoch, cfg, meter.steps, job.steps.per_epoch, engine.global_steps))
            engine.backward(loss)
            engine.step()
            window.took(x, y, epoch)
            meter.step(loss, len(y), task.tokens(y))
            samples_log and samples_log.write(epoch, int(engine.global_steps), loss, batch)
            marks.setdefault("first_step", time.time())
            ticker.tick(epoch=epoch, step=meter.steps, steps=job.steps.per_epoch, global_step=engine.global_steps,
                        samples_per_s=meter.rate(world), loss=loss, rows=len(y), lr=schedule)
            if clock.mid_epoch_due(int(engine.global_steps), engine.device):
                checkpoint_mid_epoch(engine, schedule, stopper, order, meter, job, window)
        marks.setdefault("first_batch", meter.first_batch_at)
        metrics = {"epoch": epoch, "global_step": engine.global_steps, **meter.summary(world), "param_bytes": held,
                   "lr": schedule(max(engine.global_steps - 1, 0)), **(resumed if epoch == first_epoch else {}),
                   **validation_pass(engine, val_data, task, cfg, loss_fn, epoch, feature, dtype)}
        schedule.observe(epoch, metrics.get(getattr(cfg.schedule, "metric", "val/loss")))  # plateau reads it
        stop = stopper.update(metrics, epoch)
        report_epoch(metrics, board=board, startup=marks if epoch == first_epoch else None, engine=engine,
                     schedule=schedule, state=stopper.state_dict(epoch + 1) if clock.epoch_due(epoch, stop) else None,
                     job=job, window=window)
        clock.saved(int(engine.global_steps))
        if stop:
            break
    return {"resumed_from_step": resumed.get("resumed", {}).get("global_step"),
            "stopped_early": stop}  # the metrics left by report_epoch


# ---------------------------------------------------------------------------------------------


class CheckpointClock:
    """When a checkpoint is due (``run.checkpoint_every``). ``{epochs: N}`` (or N): every N-th epoch's
    end, the last epoch's and an early stop's. ``{steps: N}``: also after every N-th optimizer step
    of the run; ``{minutes: M}``: also after the first step M minutes past the last checkpoint, by
    rank 0's clock (one all-reduce per step, so every rank saves together). With either, every
    epoch's end saves too: those checkpoints carry the validation metrics the ranking reads."""

    def __init__(self, cfg: Config, global_step: int, rank: int) -> None:
        self.every, self.epochs, self.rank = cfg.run.checkpoints, cfg.run.epochs, rank
        self.last_time, self.last_step = time.monotonic(), global_step  # a resumed run's checkpoint is not due again

    def epoch_due(self, epoch: int, stop: bool) -> bool:
        return stop or epoch + 1 == self.epochs or self.every.mid_epoch or (epoch + 1) % self.every.epochs == 0

    def mid_epoch_due(self, global_step: int, device: torch.device) -> bool:
        if self.every.steps is not None:
            due = global_step != self.last_step and global_step % self.every.steps == 0
        elif self.every.minutes is not None:
            late = self.rank == 0 and time.monotonic() - self.last_time >= self.every.minutes * 60
            due = global_step != self.last_step and all_reduce_min(int(not late), device) == 0
        else:
            return False
        if due:
            self.saved(global_step)
        return due

    def saved(self, global_step: int) -> None:
        self.last_time, self.last_step = time.monotonic(), global_step


def epoch_order(cfg: Config, epoch: int, rank: int, shard: Any) -> EpochOrder:
    """This rank's order of ``epoch`` (``datasets/epoch_order.py``): chunks of the shuffle buffer's
    rows (at least a batch) permuted from (seed, epoch, rank); a streamed shard resamples per chunk."""
    return EpochOrder(batch_size=cfg.data.batch_size, chunk_rows=max(cfg.data.shuffle_buffer, cfg.data.batch_size),
                      key=(cfg.run.seed, epoch, rank), shuffle=cfg.data.shuffle_buffer > 0,
                      rates=getattr(shard, "chunk_rates", None), source_rows=shard.epoch_rows(epoch))


def resume_epoch(saved: dict[str, Any] | None, epoch: int, order: EpochOrder, meter: "EpochMeter",
                 device: torch.device, world: int) -> EpochOrder | PlannedOrder:
    """This rank's order of ``epoch``, with a mid-epoch checkpoint's state put back (once, in its
    epoch). On the world that saved it: the place in the sample order, the RNG (dropout continues
    as if never stopped) and the epoch's figures so far. On another number of workers (an elastic
    resume): the old ranks' remaining samples dealt over the new ones (``deal_remainder``), the
    figures merged; the RNG starts from the epoch's seed."""
    at, ranks = (saved or {}).get("position"), (saved or {}).get("ranks") or {}
    if not at or int(at["epoch"]) != epoch or not ranks:
        return order
    saved["ranks"], rank, old = None, ray.train.get_context().get_world_rank(), int(at["world_size"])
    if old == world and "left" not in ranks.get(rank, {}):  # no elastic deal before: exactly where this rank was
        order.position = Position(**{k: int(v) for k, v in ranks[rank]["position"].items()})
        set_rng_state(ranks[rank]["rng"], device)
        meter.load_state_dict(ranks[rank]["meter"])
        return order
    pieces, _ = elastic_deal(saved, at, ranks, world)
    meter.load_state_dict(merged_meter([ranks[r]["meter"] for r in range(old)], rank))
    taken = sum(int(ranks[r]["position"]["samples"]) for r in range(old)) if rank == 0 else 0
    return PlannedOrder(pieces=pieces[rank], batch_size=order.batch_size, chunk_rows=int(at["chunk_rows"]),
                        seed=order.key[0], epoch=epoch, shuffle=order.shuffle, world=int(at.get("dealt_by", old)),
                        start=Position(epoch, 0, 0, taken, int(ranks[0]["position"]["batches"])))


def elastic_deal(saved: dict[str, Any], at: dict[str, Any], ranks: dict[int, Any], world: int
                 ) -> tuple[list[list[Piece]], int]:
    """The old ranks' remaining samples dealt over ``world`` new ranks, and how many were trimmed;
    a one-line StopRun where they cannot be: per-chunk resampled draws (their sizes are unknown
    until read) or a gradient-accumulation window the checkpoint cut (its micro-batches are one
    old rank's)."""
    old = int(at["world_size"])
    left = [ranks[r]["left"] if "left" in ranks[r] else ranks[r].get("own") for r in range(old)]
    if any(pieces is None for pieces in left) or saved.get("windows"):
        raise StopRun(resume_world_line(old, world, why="window" if saved.get("windows") else "resampled"))
    return deal_remainder([[Piece(*q) for q in pieces] for pieces in left], world)


def merged_meter(states: list[dict[str, Any]], rank: int) -> dict[str, Any]:
    """The old ranks' epoch figures for new rank ``rank`` of an elastic resume: the sums all on rank
    0 (the epoch's summary sums over ranks), the step counts (equal on every old rank) everywhere."""
    first = states[0]
    if rank != 0:
        return {"loss_sum": first["loss_sum"] * 0, "tokens": first["tokens"] * 0, "seen": 0,
                "steps": first["steps"], "skipped": first["skipped"]}
    return {"loss_sum": sum(s["loss_sum"] for s in states), "tokens": sum(s["tokens"] for s in states),
            "seen": sum(int(s["seen"]) for s in states), "steps": first["steps"], "skipped": first["skipped"]}


def epoch_source(shard: Any, order: EpochOrder | PlannedOrder, epoch: int, ids: bool):
    """What ``torch_batches`` reads for ``order``: this rank's rows of the epoch from its position's
    chunk on, or for an elastic resume the old ranks' rows (``(old_rank, skip) -> blocks``)."""
    if isinstance(order, PlannedOrder):
        old = order.world
        return lambda r, skip: shard.as_rank(r, old).epoch_blocks(epoch, skip, ids=ids)
    return shard.epoch_blocks(epoch, order.position.chunk * order.chunk_rows, ids=ids)


def checkpoint_mid_epoch(engine, schedule: Schedule, stopper: "EarlyStopping", order: EpochOrder,
                         meter: "EpochMeter", job: WorkerJob, window: "AccumulationWindow") -> None:
    """Save between epochs' ends: every rank's place (summed into the global position: a collective,
    as the save is), its RNG and its figures of the epoch so far. Its time counts in the epoch's
    ``checkpoint_s``."""
    t0, p = time.perf_counter(), order.position
    samples, of = all_reduce_sum([float(p.samples), float(order.source_rows)], engine.device)
    world = ray.train.get_context().get_world_size()
    position = {"epoch": p.epoch, "samples": int(samples), "of": int(of), "batches": p.batches, "world_size": world,
                "chunk_rows": order.chunk_rows, "global_step": int(engine.global_steps),
                "elastic": order.left() is not None, "dealt_by": getattr(order, "world", world)}
    left = order.left()  # what an elastic resume deals: None where the draws are resampled
    rank_state = {"position": p.to_dict(), "rng": rng_state(engine.device), "meter": meter.state_dict(),
                  ("left" if isinstance(order, PlannedOrder) else "own"): None if left is None else
                  [[q.rank, q.start, q.stop] for q in left]}
    report_mid_epoch(engine, schedule, {**stopper.state_dict(p.epoch), "position": position}, job, window, rank_state)
    meter.checkpoint_s += time.perf_counter() - t0


def resume_note(saved: dict[str, Any] | None, board, job: WorkerJob, world: int, global_step: int) -> dict[str, Any]:
    """A resumed run's ``{"resumed": ...}`` for its first epoch's metrics (metrics.jsonl), and on rank
    0 the console line: where it continues (epoch, step and sample of that epoch, global step) and
    how many optimizer steps past that checkpoint the stopped or failed group had been seen to take
    by the progress board (its updates come every 0.5 s: at least that many were redone)."""
    if not saved:
        return {}
    at = saved.get("position") or {"epoch": int(saved["epoch"]), "samples": 0, "batches": 0, "of": None}
    seen = ray.get(board.last_global_step.remote(), timeout=30) if board is not None else None
    note = {"epoch": int(at["epoch"]), "step": int(at["batches"]), "sample": int(at["samples"]), "of": at.get("of"),
            "global_step": global_step, "redone_steps": None if seen is None else max(0, seen - global_step)}
    ranks = saved.get("ranks") or {}
    if ranks and saved.get("position") and int(at["world_size"]) != world:  # elastic: the remainder dealt anew
        pieces, trimmed = elastic_deal(saved, at, ranks, world)
        note.update(saved_by=int(at["world_size"]), left=sum(p.samples for r in pieces for p in r) + trimmed,
                    trimmed=trimmed)
    if board is not None:
        of = f" of {note['of']}" if note["of"] else ""
        redone = "" if seen is None else f"; at least {note['redone_steps']} step(s) past it redone"
        dealt = ("" if "left" not in note else f"; saved by {note['saved_by']} workers, its {note['left']} samples "
                 f"left dealt over {world} ({note['trimmed']} trimmed for equal shares)")
        board.event.remote(f"resumed at epoch {note['epoch']}, step {note['step']}, sample {note['sample']}{of} "
                           f"(global step {global_step}){redone}{dealt}")
    return {"resumed": note}


class SampleLog:
    """Which samples each rank trained on, for tests (``RAYDEEP_SAMPLE_LOG=DIR`` on the driver): one
    line per step, ``epoch global_step loss id id ...`` (the loss exact, as ``repr``), appended and
    flushed to ``DIR/ids_r<rank>.txt``. Off (None) unless asked: the loop then reads no id column,
    syncs no loss and writes nothing."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", buffering=1)

    @classmethod
    def open(cls, directory: str | None, rank: int) -> "SampleLog | None":
        return None if directory is None else cls(f"{directory}/ids_r{rank}.txt")

    def write(self, epoch: int, global_step: int, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        line = [epoch, global_step, repr(loss.detach().item()), *batch[SAMPLE_ID].tolist()]
        self.file.write(" ".join(map(str, line)) + "\n")


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one rank's epoch: its dropout masks and its batch order."""
    return seed * 100_003 + epoch * 1_009 + rank


def finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every rank: one all-reduce (MIN) of a one-element flag."""
    flag = torch.isfinite(loss.detach()).all().reshape(1).to(torch.int32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def nonfinite_line(loss: torch.Tensor, epoch: int, cfg: Config, step: int, steps: int, global_step: int) -> str:
    """The one line a run stopped by a non-finite loss ends with (epochs and steps counted from 1)."""
    value = float(loss.detach())
    what = f"is {value}" if not math.isfinite(value) else "is NaN or inf on another worker"
    return (f"the training loss {what} at epoch {epoch + 1}/{cfg.run.epochs}, step {step}/{steps} (after {global_step} "
            "optimizer steps); the run stopped (run.on_nonfinite_loss: stop). Lower optim.lr or check the data; "
            "run.on_nonfinite_loss: skip_batch skips such steps")


def forward_loss(engine, schedule: Schedule, loss_fn: Callable, cfg: Config, x: torch.Tensor, y: torch.Tensor,
                 epoch: int) -> torch.Tensor:
    """One micro-batch's loss, with the LR of the optimizer step it counts towards set first."""
    set_lr(engine, schedule(engine.global_steps))
    loss = loss_fn(engine(x).float(), y, epoch)
    return loss + l1_penalty(engine.module, cfg.optim.l1) if cfg.optim.l1 else loss


class StopRun(Exception):
    """A deterministic end every rank reached together (a non-finite loss, a bad block of data): the
    worker returns its one line under ``reporting.STOPPED``, which the driver raises, instead of
    raising it for Ray Train's ``max_failures`` to retry the same failure. ``kind``: the class of
    the RaydeepError behind it (DataError: exit 2), which the driver raises again."""

    def __init__(self, line: str, kind: str = "RaydeepError") -> None:
        super().__init__(line)
        self.kind = kind


T = TypeVar("T")
READ_FAILED, ENDED, READY = 0, 1, 2


def lockstep(batches: Iterable[T], device: torch.device) -> Iterator[T]:
    """``batches``, taken by every rank together: before each batch one all-reduce (MIN) of whether
    this rank has it (``READY``), has reached its end (``ENDED``) or could not read it
    (``READ_FAILED``: a RaydeepError, e.g. a bad block of a streamed split that the driver did not
    scan, checked as it is read). All ranks end together at the first end; on a failure every rank
    raises ``StopRun`` with the failing rank's line, so no rank returns while another waits in a
    collective (Ray Train waits for every worker: that would hang), and nothing is retried.
    Other errors propagate: Ray Train stops the whole group on a worker's error."""
    it = iter(batches)
    while True:
        batch, status, error = None, READY, None
        try:
            batch = next(it)
        except StopIteration:
            status = ENDED
        except Exception as exc:
            error = raydeep_error(exc)
            if error is None:
                raise
            status = READ_FAILED
        agreed = all_reduce_min(status, device)
        if agreed == READ_FAILED:
            line, kind = first_line((str(error), type(error).__name__) if error is not None else None)
            raise StopRun(line, kind)
        if agreed == ENDED:
            return
        yield batch


def raydeep_error(exc: BaseException) -> RaydeepError | None:
    """The RaydeepError behind ``exc``: itself, or what it wraps (a Ray Data read task's error
    reaches the worker wrapped in Ray's task and user-code errors), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)  # RayTaskError: an instance of the cause's class, with a traceback text
        if isinstance(exc, RaydeepError) and not isinstance(cause, BaseException):
            return exc
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def raydeep_line(exc: BaseException) -> str | None:
    """The line of the RaydeepError behind ``exc`` (``raydeep_error``), else None."""
    error = raydeep_error(exc)
    return None if error is None else str(error)


def all_reduce_min(value: int, device: torch.device) -> int:
    flag = torch.tensor([value], dtype=torch.int32, device=device)  # NCCL reduces only CUDA tensors
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return int(flag.item())


def first_line(line: tuple[str, str] | None) -> tuple[str, str]:
    """(line, error class) of the lowest rank that has one (every rank calls this: a collective)."""
    if not (dist.is_available() and dist.is_initialized()):
        return line or ("", "RaydeepError")
    lines: list[tuple[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(lines, line)
    return next(x for x in lines if x)


class AccumulationWindow:
    """What a DeepSpeed checkpoint lacks of gradient accumulation (``optim.grad_accum`` > 1).

    An epoch's micro-batches need not be a multiple of ``grad_accum`` (``plan.Steps``: a window can
    span epochs), so an epoch's checkpoint can cut a window: DeepSpeed saves neither the gradients
    summed so far nor its ``micro_steps``, and a resumed worker opened a new window, stepping at
    other micro-batches with other gradients. This keeps the open window's micro-batches (at most
    ``grad_accum - 1``, on the host in the checkpoint, one file per rank) and the RNG state before
    each forward (dropout); a resumed worker replays them (``replay``): the same gradients and
    the same boundaries as a run never stopped.
    """

    def __init__(self, engine) -> None:
        self.engine = engine
        self.accum = int(engine.gradient_accumulation_steps())
        self.rng: dict[str, torch.Tensor] | None = None
        self.open: list[dict[str, Any]] = []
        self.saved: dict[str, Any] | None = None

    def before_forward(self) -> None:
        if self.accum > 1:
            self.rng = rng_state(self.engine.device)

    def took(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        """After ``engine.step()``: keep the micro-batch while its window is open."""
        if self.accum == 1:
            return
        if self.engine.micro_steps % self.accum == 0:  # that step closed the window: the optimizer stepped
            self.open = []
        else:
            self.open.append({"x": x, "y": y, "epoch": epoch, "rng": self.rng})

    def state_dict(self) -> dict[str, Any] | None:
        if not self.open:
            return None
        return {"micro_steps": int(self.engine.micro_steps),
                "batches": [{**b, "x": b["x"].cpu(), "y": b["y"].cpu()} for b in self.open]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state

    def replay(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The saved window's micro-batches, each after restoring its RNG state, with DeepSpeed's
        counter set back so that stepping them (backward and step) brings it to where it was."""
        saved, self.saved = self.saved, None
        if not saved:
            return
        device = self.engine.device
        self.engine.micro_steps = saved["micro_steps"] - len(saved["batches"])
        for b in saved["batches"]:
            set_rng_state(b["rng"], device)
            self.rng = b["rng"]
            x, y = b["x"].to(device), b["y"].to(device)
            yield x, y, b["epoch"]
            self.took(x, y, b["epoch"])


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochMeter:
    """One epoch's training loss and throughput, and rank 0's step times and waits for data.

    The loss is summed on the device (no host sync per step); step ends are host clocks (no
    device sync, no collective), so on a GPU p99 shows host stalls (data, reports), not kernels.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.seen = 0
        self.tokens = torch.zeros((), dtype=torch.int64, device=device)  # causal_lm: train/tokens_per_s
        self.steps = 0  # batches taken, skipped ones included
        self.skipped = 0  # steps skipped for a non-finite loss (run.on_nonfinite_loss: skip_batch)
        self.t0 = time.perf_counter()
        self.step_ends = [self.t0]
        self.waits: list[float] = []  # per step, getting the batch: is the run input-bound?
        self.first_batch_at: float | None = None
        self.before = 0  # rows of the epoch taken before a mid-epoch resume: not in this run's rate
        self.checkpoint_s = 0.0  # in mid-epoch checkpoints (run.checkpoint_every: {steps|minutes})

    def state_dict(self) -> dict[str, Any]:
        """The epoch's sums so far (a mid-epoch checkpoint's), not its times."""
        return {"loss_sum": self.loss_sum.detach().cpu(), "seen": self.seen, "tokens": self.tokens.detach().cpu(),
                "steps": self.steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum = state["loss_sum"].to(self.device)
        self.tokens = state["tokens"].to(self.device)
        self.seen = self.before = int(state["seen"])
        self.steps, self.skipped = int(state["steps"]), int(state["skipped"])

    def timed(self, batches: Iterable[dict[str, torch.Tensor]]):
        for batch in batches:
            self.waits.append(time.perf_counter() - self.step_ends[-1])
            if self.first_batch_at is None:
                self.first_batch_at = time.time()
            yield batch

    def step(self, loss: torch.Tensor, rows: int, tokens: torch.Tensor | int = 0) -> None:
        self.step_ends.append(time.perf_counter())
        self.loss_sum += loss.detach().double() * rows
        self.seen += rows
        if isinstance(tokens, torch.Tensor):  # tasks that count no tokens add no kernel to the step
            self.tokens += tokens
        self.steps += 1

    def skip(self) -> None:
        """A step no rank took (a non-finite loss): its loss and rows count nowhere."""
        self.step_ends.append(time.perf_counter())
        self.steps += 1
        self.skipped += 1

    def rate(self, world: int) -> float:
        return (self.seen - self.before) * world / (time.perf_counter() - self.t0)

    def summary(self, world: int) -> dict[str, Any]:
        """The epoch's figures, the loss and rows all-reduced over the ranks; times are rank 0's."""
        train_time = time.perf_counter() - self.t0
        loss_total, seen_total, tokens_total, before = all_reduce_sum(
            [self.loss_sum.item(), float(self.seen), float(self.tokens.item()), float(self.before)], self.device)
        return {
            "train/loss": loss_total / seen_total if seen_total else float("nan"),  # every step skipped: no loss
            "train/samples": int(seen_total),
            "train/skipped_steps": self.skipped,  # the same on every rank: all skip together
            "samples_per_s": (seen_total - before) / train_time,  # this run's: a resumed epoch's part
            **({"train/tokens_per_s": tokens_total * (1 - before / seen_total) / train_time} if tokens_total else {}),
            "epoch_time_s": train_time,
            "data_wait_s": sum(self.waits),  # the first batch's wait included
            "checkpoint_s": self.checkpoint_s,
            "first_batch_s": self.waits[0] if self.waits else None,
            **step_time_percentiles(self.step_ends),
        }


def step_time_percentiles(step_ends: list[float]) -> dict[str, float]:
    """p50/p99 of the intervals between consecutive step ends, in ms (waiting for data included)."""
    if len(step_ends) < 2:
        return {}
    ms = np.diff(np.asarray(step_ends)) * 1e3
    return {"step_time_p50_ms": float(np.percentile(ms, 50)), "step_time_p99_ms": float(np.percentile(ms, 99))}


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)  # NCCL reduces only CUDA tensors
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


class EarlyStopping:
    """The best value of ``run.early_stopping.metric`` so far, and whether patience ran out."""

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.metric, self.mode, self.patience = cfg.metric, cfg.mode, cfg.patience
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, metrics: dict[str, Any], epoch: int) -> bool:
        """Record ``metrics`` (adding ``best/<metric>``); True when training should stop."""
        value = metrics.get(self.metric)
        if value is not None:
            # NaN or inf is never better: a first NaN kept as best would stall every later epoch
            better = math.isfinite(value) and (
                self.best is None or (value > self.best if self.mode == "max" else value < self.best))
            if better:
                self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            else:
                self.bad_epochs += 1
        metrics["best/" + self.metric] = self.best
        return value is not None and self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self, next_epoch: int) -> dict[str, Any]:
        return {"epoch": next_epoch, "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore from ``state_dict``; returns the epoch to continue at."""
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        return int(state["epoch"])


def dataset_shard(job: WorkerJob, name: str, rank: int, world: int, first_epoch: int = 0):
    """This worker's ``name`` split: its rows of a split held in memory (``datasets/memory.py``; the
    training split is dealt anew each epoch, validation is whole), its own ranges of a streamed
    training split (``streaming.StreamedSplit``), or Ray Data's whole stream of a streamed validation split."""
    held = job.splits.get(name)
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
def validation_pass(engine, data, task: Task, cfg: Config, loss_fn: Callable, epoch: int, feature: FeatureSpec,
                    dtype: torch.dtype) -> dict[str, Any]:
    """Loss and the task's metrics over the whole validation set (see the module docstring)."""
    engine.eval()
    acc = task.accumulator(cfg)
    loss_sum, n = 0.0, 0
    batches = torch_batches(data, batch_size=max(cfg.data.batch_size, 256), device=engine.device,
                            limits=value_limits(engine.module, feature), where="data.val")
    for batch in lockstep(batches, engine.device):  # ZeRO-3: each forward is a collective
        y = task.targets(batch, feature)
        out = engine(inputs(batch, feature, dtype)).float()
        loss_sum += float(loss_fn(out, y, epoch)) * len(y)
        n += len(y)
        acc.update(out, y)
    engine.train()
    return {"val/loss": loss_sum / max(n, 1), **acc.metrics("val/")}
