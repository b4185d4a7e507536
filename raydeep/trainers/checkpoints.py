"""Checkpoint layout, shared by the worker that writes it and ``raydeep evaluate`` that reads it.

A checkpoint directory holds every rank's DeepSpeed files under ``engine/`` plus
``raydeep.json`` (config, feature spec, label names, epoch). Weights are consolidated from the
ZeRO shards with DeepSpeed's own ``zero_to_fp32``, so a checkpoint from any stage and any
world size loads on one CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray.train

from raydeep.errors import RaydeepError

if TYPE_CHECKING:
    from raydeep.trainers.plan import WorkerJob
    from raydeep.trainers.schedules import Schedule

ENGINE_TAG = "engine"  # DeepSpeed tag: one fixed name; Ray versions the checkpoint directories
STATE_FILE = "raydeep.json"


def find_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(checkpoint dir, run dir) for a run directory (its best checkpoint) or a checkpoint dir."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p, p.parent
    summary = p / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        for ckpt in (s.get("best", {}).get("checkpoint"), s.get("latest_checkpoint")):
            if ckpt and (Path(ckpt) / STATE_FILE).is_file():
                return Path(ckpt), p
    candidates = sorted(p.glob("checkpoint_*/" + STATE_FILE))
    if candidates:
        return candidates[-1].parent, p
    raise RaydeepError(f"{p}: not a raydeep run directory or checkpoint (no {STATE_FILE} or summary.json)")


def load_state_dict(ckpt: Path, zero_stage: int) -> dict[str, Any]:
    import torch

    if zero_stage == 0:
        return torch.load(ckpt / ENGINE_TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                          weights_only=False)["module"]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=ENGINE_TAG)




# ---------------------------------------------------------------------------------------------
# The worker's side: save and restore


def save_and_report(engine, schedule: "Schedule", state: dict[str, Any], metrics: dict[str, Any],
                    job: "WorkerJob") -> None:
    """Every rank saves its ZeRO shard and reports the directory; Ray merges them into one.

    ``state`` (epoch, early-stopping bests) and the schedule's state ride in DeepSpeed's client
    state, so one ``load_checkpoint`` restores weights, optimizer, counters and them together.
    """
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    tmp = Path(tempfile.mkdtemp(prefix=f"raydeep-ckpt-r{rank}-"))
    try:
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG,
                               client_state={"raydeep": {**state, "schedule": schedule.state_dict()}})
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({
                "config": job.config.model_dump(mode="json"), "feature": job.feature.to_dict(),
                "label_names": job.label_names, "epoch": metrics["epoch"], "global_step": metrics["global_step"],
                "zero_stage": job.zero_stage, "world_size": ctx.get_world_size(),
                "metrics": {k: v for k, v in metrics.items() if k != "val/confusion"},
            }, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore(engine, schedule: "Schedule") -> dict[str, Any] | None:
    """The saved loop state from Ray's latest checkpoint (weights, optimizer and schedule restored
    into ``engine`` and ``schedule``), or None for a fresh run. The RNG needs no saving: each
    epoch reseeds from (seed, epoch, rank)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        _, client = engine.load_checkpoint(d, tag=ENGINE_TAG)
    saved = dict(client["raydeep"])
    schedule.load_state_dict(saved.pop("schedule"))
    return saved
