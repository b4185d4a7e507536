"""What leaves a worker at an epoch's end, and what a resumed worker reads back (runs on workers).

``report_epoch`` is the one way an epoch's metrics leave the loop: rank 0's progress board (the
driver's live console and metrics.jsonl) and ``ray.train.report`` (Ray's checkpoint ranking, and
a Tune trial's result), with every rank's checkpoint shard when one is due, and each rank's
micro-batches of a gradient accumulation window the checkpoint cuts (``loop.AccumulationWindow``:
``window``, anything with ``state_dict``/``load_state_dict``). The last epoch always saves a
checkpoint, so a fit's ``Result.metrics`` (the latest checkpoint's) are the final metrics. The
loop's return value holds only how the run ended (``resumed_from_step``, ``stopped_early``), or
the one line of a run its workers stopped (``STOPPED``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil  # a Ray dependency
import ray.train

from raydeep.errors import ConfigError, DataError, RaydeepError, ResourceError
from raydeep.trainers.checkpoints import ENGINE_TAG, MID_EPOCH, POSITION_FILE, STATE_FILE, WINDOW_FILE

# The key of the worker's return value that holds the one line of a run its workers ended together
# on a deterministic error (a non-finite loss under run.on_nonfinite_loss: stop, a block of data
# failing its checks as it is read): the worker returns rather than raises, so Ray Train does not
# retry it, and the driver (follow.py) and a Tune trial raise it with ``finished``.
STOPPED = "stopped"
STOPPED_KIND = "stopped_kind"  # the RaydeepError class behind it: DataError exits 2, as on the driver
_KINDS = {cls.__name__: cls for cls in (RaydeepError, DataError, ConfigError, ResourceError)}


def finished(result) -> dict:
    """A fit's ``Result`` as the final metrics plus how the run ended, or the RaydeepError of a run
    its workers stopped with one line."""
    value = getattr(result, "return_value", None) or {}
    if value.get(STOPPED):
        raise _KINDS.get(value.get(STOPPED_KIND, ""), RaydeepError)(value[STOPPED])
    return {**(getattr(result, "metrics", None) or {}), **value}


if TYPE_CHECKING:
    from raydeep.trainers.plan import WorkerJob
    from raydeep.trainers.schedules import Schedule


def report_epoch(metrics: dict[str, Any], *, board, startup: dict[str, float] | None, engine,
                 schedule: "Schedule", state: dict[str, Any] | None, job: "WorkerJob", window: Any = None) -> None:
    """Publish one epoch: to ``board`` (rank 0's, None elsewhere and in Tune trials, with the
    start-up timeline after the first epoch) and to Ray, saving a checkpoint when ``state`` (the
    loop's own state: epoch, early-stopping bests) is given."""
    if board is not None:
        board.epoch_end.remote(metrics)
        if startup is not None:
            board.record_startup.remote(startup)
    if state is None:
        ray.train.report(metrics)
    else:
        save_and_report(engine, schedule, state, metrics, job, window)


def report_mid_epoch(engine, schedule: "Schedule", state: dict[str, Any], job: "WorkerJob", window: Any,
                     rank_state: dict[str, Any]) -> None:
    """A checkpoint between epochs' ends (``run.checkpoint_every: {steps|minutes}``): ``state`` holds
    the epoch in progress and ``position`` (every rank's place in its sample order, summed), each
    rank's ``rank_state`` its own position, RNG and partial epoch figures. Its report says
    ``mid_epoch`` and scores the ranking metric the worst finite value for its mode (not NaN: Ray's
    checkpoint snapshot writes NaN as null, and a resumed run's ranking then fails on it), so an
    epoch's checkpoint (with validation metrics) is always the better one to keep. The driver's
    board never sees it: metrics.jsonl keeps one line per epoch."""
    es = job.config.run.early_stopping
    worst = -sys.float_info.max if es.mode == "max" else sys.float_info.max
    metrics = {"epoch": state["epoch"], "global_step": int(engine.global_steps), MID_EPOCH: True,
               "position": state["position"], es.metric: worst}
    save_and_report(engine, schedule, state, metrics, job, window, rank_state)


def save_and_report(engine, schedule: "Schedule", state: dict[str, Any], metrics: dict[str, Any],
                    job: "WorkerJob", window: Any = None, rank_state: dict[str, Any] | None = None) -> None:
    """Every rank saves its ZeRO shard and reports the directory; Ray merges them into one.

    ``state`` and the schedule's state ride in DeepSpeed's client state, so one
    ``load_checkpoint`` restores weights, optimizer, counters and them together. ``rank_state``:
    this rank's own file (DeepSpeed's client state is rank 0's alone).
    """
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    tmp = Path(tempfile.mkdtemp(prefix=f"{CKPT_PREFIX}r{rank}-p{os.getpid()}-"))
    try:
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG,
                               client_state={"raydeep": {**state, "schedule": schedule.state_dict()}})
        open_window = window.state_dict() if window is not None else None
        if open_window is not None:  # this rank's own file: DeepSpeed's client state is rank 0's alone
            import torch

            torch.save(open_window, tmp / WINDOW_FILE.format(rank=rank))
        if rank_state is not None:
            import torch

            torch.save(rank_state, tmp / POSITION_FILE.format(rank=rank))
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({
                "config": job.config.model_dump(mode="json"), "feature": job.feature.to_dict(),
                "label_names": job.label_names, "epoch": metrics["epoch"], "global_step": metrics["global_step"],
                "zero_stage": job.zero_stage, "world_size": ctx.get_world_size(), "position": state.get("position"),
                "metrics": {k: v for k, v in metrics.items() if k != "val/confusion"},
            }, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CKPT_PREFIX = "raydeep-ckpt-"  # a rank's checkpoint on its way to storage: <tmp>/raydeep-ckpt-r<rank>-p<pid>-*
_OWNER = re.compile(re.escape(CKPT_PREFIX) + r"r\d+-p(\d+)-")


def remove_stale_checkpoint_dirs(tmp: str | None = None) -> list[str]:
    """Remove the temporary checkpoint folders of workers that died mid-save (a killed worker, a
    Ctrl-C): each names the process that made it; one whose process is gone is removed, one whose
    process lives (another run's worker on this node, saving now) is left alone."""
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{CKPT_PREFIX}*"):
        owner = _OWNER.match(path.name)
        if owner is None or psutil.pid_exists(int(owner.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


def load_engine_checkpoint(engine, directory: str, key: str) -> dict[str, Any]:
    """Load a checkpoint into ``engine``; its client state. Saved by another number of workers with
    the optimizer state partitioned (ZeRO 1-3, or bf16's optimizer: ``*_optim_states.pt``), which
    DeepSpeed refuses to load on a new world size, it is first converted into DeepSpeed's
    *universal* checkpoint (``ds_to_universal``, in-process) and loaded as one: weights, optimizer
    moments and counters, repartitioned. One conversion per node, by its local rank 0, into a
    folder named by ``key`` (the checkpoint's storage path); the node's other ranks wait at a
    barrier (it reads the whole optimizer state: eight ranks converting at once would hold it
    eight times)."""
    tagged = Path(directory) / ENGINE_TAG
    ctx = ray.train.get_context()
    try:
        saved_world = int(json.loads((Path(directory) / STATE_FILE).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        saved_world = ctx.get_world_size()
    if saved_world == ctx.get_world_size() or not any(tagged.glob("*_optim_states.pt")):
        return engine.load_checkpoint(directory, tag=ENGINE_TAG)[1]
    import argparse
    import hashlib

    import torch.distributed as dist
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = Path(tempfile.gettempdir()) / f"raydeep-universal-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
    converter, failed = ctx.get_local_rank() == 0, None
    if converter:
        try:
            shutil.rmtree(out, ignore_errors=True)
            ds_to_universal(argparse.Namespace(  # every field ds_to_universal reads; 1 worker: in-process
                input_folder=str(tagged), output_folder=str(out / ENGINE_TAG), num_extract_workers=1,
                num_merge_workers=1, keep_temp_folder=False, strict=True,
                inject_missing_state=True))  # a plain nn.Module saves no universal_checkpoint_info
        except Exception as exc:  # noqa: BLE001 - raised after the barrier, so no rank waits forever
            failed = exc
    dist.barrier()  # the node's converted folder is complete
    if failed is not None:
        raise failed
    engine._config.load_universal_checkpoint = True  # read only while loading (engine.load_universal_checkpoint)
    try:
        return engine.load_checkpoint(str(out), tag=ENGINE_TAG)[1]
    finally:
        engine._config.load_universal_checkpoint = False
        dist.barrier()  # every rank of the node has read it
        if converter:
            shutil.rmtree(out, ignore_errors=True)


def restore(engine, schedule: "Schedule", window: Any = None) -> dict[str, Any] | None:
    """The saved loop state from Ray's latest checkpoint (weights, optimizer and schedule restored
    into ``engine`` and ``schedule``, this rank's open accumulation window into ``window``), or
    None for a fresh run. At an epoch's end the RNG needs no saving: each epoch reseeds from (seed,
    epoch, rank), and the window's micro-batches carry the state each forward started from; a
    mid-epoch checkpoint holds each rank's RNG state with its position (``saved["ranks"]``, every
    rank's, by rank; ``saved["windows"]``: how many ranks' windows it cut)."""
    remove_stale_checkpoint_dirs()  # what a worker killed mid-save on this node left behind
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    import torch

    rank = ray.train.get_context().get_world_rank()
    with checkpoint.as_directory() as d:
        client = load_engine_checkpoint(engine, d, key=str(checkpoint.path))
        mine = Path(d) / WINDOW_FILE.format(rank=rank)
        if window is not None and mine.is_file():
            window.load_state_dict(torch.load(mine, map_location="cpu", weights_only=True))  # tensors and ints
        windows = len(list(Path(d).glob(WINDOW_FILE.format(rank="*"))))
        ranks = {int(p.stem.rsplit("_r", 1)[1]): torch.load(p, map_location="cpu", weights_only=True)
                 for p in Path(d).glob(POSITION_FILE.format(rank="*"))}  # a few KiB each
    saved = dict(client["raydeep"])
    saved["ranks"] = ranks  # a mid-epoch checkpoint's: every rank's place in the epoch (an elastic resume deals them)
    saved["windows"] = windows
    schedule.load_state_dict(saved.pop("schedule"))
    return saved
