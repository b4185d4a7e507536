"""Checkpoint layout, shared by the worker that writes it (``reporting.py``) and ``raydeep evaluate``
that reads it. No Ray here: reading a checkpoint needs none.

A checkpoint directory holds every rank's DeepSpeed files under ``engine/`` plus
``raydeep.json`` (config, feature spec, label names, epoch). Weights are consolidated from the
ZeRO shards with DeepSpeed's own ``zero_to_fp32``, so a checkpoint from any stage and any
world size loads on one CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from raydeep.errors import RaydeepError

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
