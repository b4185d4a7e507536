"""Checkpoint layout, shared by the worker that writes it (``reporting.py``) and ``raydeep evaluate``
that reads it. No Ray here: reading a checkpoint needs none.

A checkpoint directory holds every rank's DeepSpeed files under ``engine/`` plus
``raydeep.json`` (config, feature spec, label names, epoch). Weights are consolidated from the
ZeRO shards with DeepSpeed's own ``zero_to_fp32``, so a checkpoint from any stage and any
world size loads on one CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

from raydeep.errors import RaydeepError

ENGINE_TAG = "engine"  # DeepSpeed tag: one fixed name; Ray versions the checkpoint directories
STATE_FILE = "raydeep.json"
# Each rank's micro-batches of the gradient accumulation window the checkpoint cut (loop.AccumulationWindow):
# what a resumed worker replays; absent when no window was open. Training state only: evaluate never reads it.
WINDOW_FILE = "accum_window_r{rank}.pt"
# A mid-epoch checkpoint's (run.checkpoint_every: {steps|minutes}): each rank's place in the epoch's sample
# order (datasets.epoch_order.Position), RNG state and partial epoch figures. Training state only.
POSITION_FILE = "position_r{rank}.pt"
MID_EPOCH = "mid_epoch"  # the key that marks a mid-epoch checkpoint's report (and raydeep.json's metrics)




def resume_world_line(saved: int, now: int, why: str = "resampled") -> str:
    """Why a mid-epoch checkpoint cannot resume on another number of workers (driver and worker say it):
    ``resampled``: a streamed split resampled per chunk (imbalance.sampling), whose draws' sizes are
    unknown until read; ``window``: it cut a gradient-accumulation window (one old rank's micro-batches)."""
    reason = ("its split is streamed and resampled per chunk (imbalance.sampling), so the samples left "
              "cannot be counted without reading them" if why == "resampled" else
              "it cut a gradient-accumulation window, whose micro-batches belong to one old worker")
    return (f"the latest checkpoint is mid-epoch and was saved by {saved} workers, and {reason}: it resumes only "
            f"on {saved} (now {now}); set scaling.num_workers={saved}, or resume from an epoch's checkpoint")


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's registry of a run's checkpoints
# What DeepSpeed's ZeRO files pickle besides tensors and plain containers: the only classes a
# checkpoint may name (see ``check_safe``).
DEEPSPEED_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.utils.tensor_fragment.fragment_address")


def registered(snapshot_text: str) -> tuple[list[str], str | None]:
    """(every checkpoint folder Ray Train registered, the latest of them) from its snapshot.

    Ray registers a checkpoint only once every rank has uploaded its part; a ``checkpoint_*``
    folder it does not list is what a crash mid-upload left behind (some ranks' shards missing).
    """
    snap = json.loads(snapshot_text)
    names = [r["checkpoint_dir_name"] for r in snap.get("checkpoint_results") or []]
    latest = (snap.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    return names + ([latest] if latest and latest not in names else []), latest


def find_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """(checkpoint dir, run dir) for a run directory (its best checkpoint; for a run without a
    summary, Ray's latest *registered* one) or a checkpoint dir."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p, p.parent
    summary = p / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        for ckpt in (s.get("best", {}).get("checkpoint"), s.get("latest_checkpoint")):
            if ckpt and (Path(ckpt) / STATE_FILE).is_file():
                return Path(ckpt), p
    if (p / SNAPSHOT).is_file():
        _, latest = registered((p / SNAPSHOT).read_text())
        if latest and (p / latest / STATE_FILE).is_file():
            return p / latest, p
    if list(p.glob("checkpoint_*/" + STATE_FILE)):
        raise RaydeepError(f"{p}: its checkpoint_* folders were never registered by Ray Train (a crash during their "
                           f"upload: some ranks' shards may be missing); pass one folder explicitly to try it")
    raise RaydeepError(f"{p}: not a raydeep run directory or checkpoint (no {STATE_FILE} or summary.json)")


def check_complete(ckpt: Path, state: dict[str, Any]) -> None:
    """Every rank's ZeRO files are there: a folder a crash left mid-upload fails in one line."""
    engine = ckpt / ENGINE_TAG
    world, stage = int(state.get("world_size") or 1), int(state["zero_stage"])
    if stage == 0:
        needed = {"model states": ["mp_rank_00_model_states.pt"]}
    else:
        needed = {"optimizer shard": [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]}
        if stage == 3:
            needed["parameter shard"] = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
    for what, names in needed.items():
        for rank, name in enumerate(names):
            if not any(engine.glob(f"*{name}")):  # bf16 optimizer files carry a "bf16_" prefix
                raise RaydeepError(f"{ckpt}: incomplete checkpoint: rank {rank}'s {what} ({name}) is missing "
                                   f"(an upload cut short by a crash?); use the run's registered checkpoint")


def check_safe(ckpt: Path) -> None:
    """Load every pickle of the checkpoint with torch's weights-only unpickler first (tensors,
    containers and DeepSpeed's three bookkeeping classes), so a file that would run code when
    DeepSpeed's ``zero_to_fp32`` unpickles it (it passes ``weights_only=False``) is refused.
    A checkpoint from a bucket others can write to is untrusted input."""
    import pickle

    import torch

    allowed = [_resolve(name) for name in DEEPSPEED_GLOBALS]
    with torch.serialization.safe_globals(allowed):
        for f in sorted((ckpt / ENGINE_TAG).glob("*.pt")):
            try:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError) as exc:
                why = next((x.strip() for x in str(exc).splitlines() if "Unsupported" in x), str(exc).splitlines()[0])
                raise RaydeepError(f"{f}: refused: not plain tensors and DeepSpeed state ({why[:200]}); "
                                   f"load only checkpoints you trust") from None


def _resolve(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_state_dict(ckpt: Path, zero_stage: int) -> dict[str, Any]:
    """The model's fp32 weights from any ZeRO stage and world size, after checking the checkpoint
    is whole and holds nothing but tensors and DeepSpeed state."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if (ckpt / STATE_FILE).is_file():
        check_complete(ckpt, json.loads((ckpt / STATE_FILE).read_text()))
    check_safe(ckpt)
    if zero_stage == 0:
        with torch.serialization.safe_globals([_resolve(name) for name in DEEPSPEED_GLOBALS]):
            return torch.load(ckpt / ENGINE_TAG / "mp_rank_00_model_states.pt", map_location="cpu",
                              weights_only=True)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # its "Processing zero checkpoint ..." lines and progress bars are not the command's output
    # (a failure raises)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=ENGINE_TAG)
