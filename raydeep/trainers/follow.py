"""Following a run from the driver: the progress bar and epoch lines, metrics.jsonl, the
start-up timeline, and a failed fit (or one its workers stopped on a non-finite loss) turned
into one line.

Rank 0 sends step progress and each epoch's metrics to a ``ProgressBoard`` actor
(``progress.py``); ``follow`` polls it while ``fit`` runs in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psutil  # a Ray dependency
import ray
from rich.console import Console

from raydeep.errors import RaydeepError
from raydeep.fileio import atomic_write_text
from raydeep.trainers.console import epoch_line, new_progress
from raydeep.trainers.reporting import NONFINITE_LOSS
from raydeep.trainers.tasks import Task

METRICS = "metrics.jsonl"


def process_start_time() -> float | None:
    """When this process started (``time.time()`` clock), so start-up counts Python's imports."""
    return psutil.Process().create_time()


# (name, from mark, to mark): the start-up phases in order; worker marks come from rank 0
STARTUP_PHASES = [
    ("python_imports", "process_start", "train_entry"),  # interpreter, raydeep, Ray's driver modules
    ("data_check", "train_entry", "data_checked"),  # open_split footers, label histogram (data generation)
    ("ray_start", "data_checked", "ray_ready"),  # ray.init of the embedded local Ray, or connect
    ("datasets_and_trainer", "ray_ready", "fit_start"),  # plan, read/materialize small splits, TorchTrainer
    ("worker_group_start", "fit_start", "loop_entry"),  # controller, worker actors, torch process group
    ("deepspeed_init", "loop_entry", "engine_ready"),  # model build, deepspeed.initialize (comm op build)
    ("first_batch", "engine_ready", "first_batch"),  # restore, dataset execution start, first batch
    ("first_step", "first_batch", "first_step"),  # forward, backward, the first optimizer step
]


def startup_timeline(marks: dict[str, float | None], board) -> dict[str, Any]:
    """Seconds per start-up phase and from process start to the first optimizer step.

    Worker timestamps are ``time.time()`` on rank 0's machine: on one machine the phases are
    exact; across machines they are off by the clocks' skew.
    """
    try:
        marks = {**marks, **ray.get(board.startup.remote(), timeout=10)}
    except Exception:  # the timeline must never fail a finished run
        pass
    phases = {name: round(marks[b] - marks[a], 3) for name, a, b in STARTUP_PHASES
              if marks.get(a) is not None and marks.get(b) is not None}
    first = marks.get("first_step")
    origin = marks.get("process_start") or marks["train_entry"]
    return {"phases_s": phases, "to_first_step_s": round(first - origin, 3) if first else None,
            "marks": marks}


def follow(trainer, board, run_dir: Path, epochs: int, task: Task, console: Console):
    """Fit in a thread; meanwhile draw progress from the board and keep metrics.jsonl current."""
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the main thread
            box["error"] = exc

    thread = threading.Thread(target=fit, name="raydeep-fit", daemon=True)
    thread.start()
    by_epoch: dict[int, dict] = {}
    if (run_dir / METRICS).exists():  # a resumed run keeps the epochs it already has
        for line in (run_dir / METRICS).read_text().splitlines():
            m = json.loads(line)
            by_epoch[m["epoch"]] = m
    seen_epochs = seen_events = 0
    with new_progress(console) as progress:
        bar = None
        while True:
            alive = thread.is_alive()
            try:
                live, new_epochs, events = ray.get(board.poll.remote(seen_epochs, seen_events), timeout=10)
            except Exception:
                live, new_epochs, events = {}, [], []
            seen_epochs += len(new_epochs)
            seen_events += len(events)
            for text in events:
                progress.console.print(f"[yellow]{text}")
            for m in new_epochs:
                by_epoch[m["epoch"]] = {k: v for k, v in m.items() if k != "val/confusion"}
                progress.console.print(epoch_line(m, epochs, task.quality(m)), soft_wrap=True)
            if new_epochs:
                lines = [json.dumps(by_epoch[e]) for e in sorted(by_epoch)]
                atomic_write_text(run_dir / METRICS, "\n".join(lines) + "\n")
            if live:
                desc = f"{live['epoch'] + 1}/{epochs}"
                rate = f"{live['samples_per_s']:,.0f} samples/s"
                if bar is None:
                    bar = progress.add_task("train", total=live["steps"], epoch=desc, rate=rate)
                progress.update(bar, completed=live["step"], total=live["steps"], epoch=desc, rate=rate)
            if not alive:
                break
            time.sleep(0.25)
    thread.join()
    if "error" in box:
        raise training_error(box["error"]) from box["error"]
    stopped = (getattr(box["result"], "return_value", None) or {}).get(NONFINITE_LOSS)
    if stopped:  # the workers returned (no retry) with the line naming the epoch and step
        raise RaydeepError(stopped)
    return box["result"]


def training_error(exc: BaseException) -> BaseException:
    """One line for a failed fit: the first worker's own error, not Ray's wrapper."""
    worker_errors = getattr(exc, "worker_failures", None) or {}
    for rank, err in sorted(worker_errors.items()):
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, RaydeepError):
            return cause
        return RaydeepError(f"training failed on worker rank {rank}: {type(cause).__name__}: "
                            f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}")
    if isinstance(exc, (RaydeepError, KeyboardInterrupt)):
        return exc
    return RaydeepError(f"training failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
