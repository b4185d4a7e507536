"""Following a run from the driver: the progress bar and epoch lines, metrics.jsonl, the
start-up timeline, and a failed fit (or one its workers stopped on a non-finite loss) turned
into one line.

Rank 0 sends step progress and each epoch's metrics to a ``ProgressBoard`` actor
(``progress.py``); ``follow`` polls it while ``fit`` runs in a thread.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path
from typing import Any

import psutil  # a Ray dependency
import ray
from rich.console import Console

from raydeep.errors import Interrupted, RaydeepError
from raydeep.fileio import atomic_write_text
from raydeep.trainers.console import epoch_line, new_progress
from raydeep.trainers.engine import NODE_KV_NAMESPACE, node_key
from raydeep.trainers.reporting import finished
from raydeep.trainers.tasks import Task
from raydeep.trainers.tracking import EpochLogs

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


def follow(trainer, board, run_dir: Path, epochs: int, task: Task, console: Console, events: EpochLogs | None = None):
    """Fit on the main thread; meanwhile a thread draws progress from the board and keeps
    metrics.jsonl current.

    ``fit`` must own the main thread: Ray Train installs its Ctrl-C handler only there, and that
    handler aborts the controller, which stops the workers and removes their placement group. A
    Ctrl-C then ends here as ``Interrupted`` (exit 130, no summary), naming how to resume.
    """
    done = threading.Event()
    drawer = threading.Thread(target=draw, args=(board, run_dir, epochs, task, console, done, events),
                              name="raydeep-progress", daemon=True)
    drawer.start()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except (KeyboardInterrupt, SystemExit):  # Ray's handler ends with sys.exit once the run is aborted
        raise Interrupted(f"the workers were stopped; continue with: raydeep train --resume {run_dir}") from None
    except BaseException as exc:
        raise training_error(exc, run_name(trainer)) from exc
    finally:
        signal.signal(signal.SIGINT, sigint)  # Ray's handler would abort a controller that is gone
        done.set()
        drawer.join()  # the last epochs reach metrics.jsonl before anything else happens
    finished(result)  # a run its workers stopped (a non-finite loss, a bad block) raises their line
    return result


def draw(board, run_dir: Path, epochs: int, task: Task, console: Console, done: threading.Event,
         tensorboard: EpochLogs | None = None) -> None:
    """Until ``done`` (and once more after it): the progress bar, epoch lines, metrics.jsonl and
    the TensorBoard scalars."""
    by_epoch: dict[int, dict] = {}
    if (run_dir / METRICS).exists():  # a resumed run keeps the epochs it already has
        for line in (run_dir / METRICS).read_text().splitlines():
            m = json.loads(line)
            by_epoch[m["epoch"]] = m
    seen_epochs = seen_events = seen_steps = 0
    with new_progress(console) as progress:
        bar = None
        while True:
            last = done.is_set()
            try:
                live, new_epochs, events, steps = ray.get(board.poll.remote(seen_epochs, seen_events, seen_steps),
                                                          timeout=10)
            except Exception:
                live, new_epochs, events, steps = {}, [], [], []
            seen_epochs += len(new_epochs)
            seen_events += len(events)
            seen_steps += len(steps)
            if tensorboard is not None:
                for record in steps:
                    tensorboard.step(record)
            for text in events:
                progress.console.print(f"[yellow]{text}")
            for m in new_epochs:
                by_epoch[m["epoch"]] = {k: v for k, v in m.items() if k != "val/confusion"}
                progress.console.print(epoch_line(m, epochs, task.quality(m)), soft_wrap=True)
                if tensorboard is not None:
                    tensorboard.epoch(m)
            if new_epochs:
                lines = [json.dumps(by_epoch[e]) for e in sorted(by_epoch)]
                atomic_write_text(run_dir / METRICS, "\n".join(lines) + "\n")
            if live:
                desc = f"{live['epoch'] + 1}/{epochs}"
                rate = f"{live['samples_per_s']:,.0f} samples/s"
                if bar is None:
                    bar = progress.add_task("train", total=live["steps"], epoch=desc, rate=rate)
                progress.update(bar, completed=live["step"], total=live["steps"], epoch=desc, rate=rate)
            if last:
                break
            done.wait(0.25)


def training_error(exc: BaseException, run_name: str | None = None) -> BaseException:
    """One line for a failed fit: the first worker's own error, not Ray's wrapper.

    A NCCL time-out or a GPU the worker cannot see is named as such, with the node and rank it
    happened on. When several ranks failed, the one whose error is not a collective time-out comes
    first: the others timed out waiting for it. ``run_name`` (Ray Train's run name) finds the node
    of a rank whose error does not say it (the workers record theirs at start).
    """
    worker_errors = getattr(exc, "worker_failures", None) or {}
    failures = [(rank, getattr(err, "cause", None) or err) for rank, err in sorted(worker_errors.items())]
    if failures:
        waiting = [rank for rank, cause in failures if collective_timeout(str(cause))]
        root = [(rank, cause) for rank, cause in failures if rank not in waiting] or failures
        rank, cause = root[0]
        if isinstance(cause, RaydeepError):
            return cause
        text = str(cause)
        node = node_of(rank, text, run_name)
        line = device_error_line(text, rank, node)
        if line is None:
            last = text.strip().splitlines()[-1] if text.strip() else ""
            line = f"training failed on worker rank {rank}{f' (node {node})' if node else ''}: {type(cause).__name__}: {last}"
        others = [r for r in waiting if r != rank]
        if others and rank not in waiting:
            line += f" (then rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} timed out waiting for it)"
        return RaydeepError(line)
    if isinstance(exc, (RaydeepError, KeyboardInterrupt)):
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__name__ == "NCCLHangError":  # Ray Train's NCCL RAS hang detector (no worker failures)
        message = getattr(exc, "_error_message", "") or first
        return RaydeepError(f"NCCL hang: {message.strip().splitlines()[0]} (raydeep train --debug sets NCCL_DEBUG=INFO)")
    return RaydeepError(f"training failed: {type(exc).__name__}: {first}")


# What torch's ProcessGroupNCCL says (torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp, NCCLUtils.cpp):
#   [Rank 2] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=6463, OpType=ALLREDUCE,
#     NumelIn=1, NumelOut=1, Timeout(ms)=1800000) ran for 1800017 milliseconds before timing out.
#   (raised in Python as "NCCL communicator was aborted on rank 2.  Original reason for failure was: ...",
#   or logged as "... Process group watchdog thread terminated with exception: ..." before the abort)
#   [PG ID 0 PG GUID 0(default_pg) Rank 2] Work WorkNCCL(...) timed out in blocking wait.
_WORK = r"WorkNCCL\((?:[^()]|\([^()]*\))*\)"
_NCCL_TIMEOUT = re.compile(rf"Watchdog caught collective operation timeout: (?P<work>{_WORK}) ran for (?P<ms>\d+) "
                           rf"milliseconds|Work (?P<work2>{_WORK}) timed out in blocking wait")
_NCCL_ABORTED = re.compile(r"NCCL communicator was aborted on rank (\d+)")
_GLOO_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms for (\w+) operation to complete")  # gloo (CPU workers)
# torch and the CUDA driver when a process sees no usable GPU
_NO_GPU = re.compile(r"No CUDA GPUs are available|Found no NVIDIA driver on your system|no CUDA-capable device is "
                     r"detected|CUDA driver version is insufficient|CUDA driver initialization failed|"
                     r"invalid device ordinal", re.IGNORECASE)


def collective_timeout(text: str) -> bool:
    return bool(_NCCL_TIMEOUT.search(text) or _NCCL_ABORTED.search(text) or _GLOO_TIMEOUT.search(text))


def _field(work: str, name: str) -> str | None:
    m = re.search(rf"\b{re.escape(name)}=([^,)]+)", work)
    return m.group(1) if m else None


def device_error_line(text: str, rank: int, node: str | None) -> str | None:
    """One line for a NCCL (or gloo) collective time-out or an invisible GPU in ``text``, else None."""
    at = f"node {node} rank {rank}" if node else f"rank {rank} (node unknown)"
    m = _NCCL_TIMEOUT.search(text)
    if m:
        work = m.group("work") or m.group("work2")
        op, seq, limit = _field(work, "OpType"), _field(work, "SeqNum"), _field(work, "Timeout(ms)")
        waited = f" after {int(m.group('ms')) / 1000:.0f} s" if m.group("ms") else ""
        limit_s = f" (limit {int(limit) / 1000:.0f} s)" if limit and limit.isdigit() else ""
        return (f"NCCL time-out on {at}: collective {op or '?'} #{seq or '?'} did not complete{waited}{limit_s}; "
                "another rank stopped joining collectives (crashed, hung, or took another code path) or the "
                "nodes cannot reach each other. Look at the other ranks' first error; raydeep train --debug sets "
                "NCCL_DEBUG=INFO")
    m = _NCCL_ABORTED.search(text)
    if m:
        return (f"NCCL communicator aborted on {at}: {text.strip().splitlines()[0][:300]}; "
                "raydeep train --debug sets NCCL_DEBUG=INFO")
    m = _GLOO_TIMEOUT.search(text)
    if m:
        return (f"collective time-out (gloo) on {at}: a {m.group(2)} waited {int(m.group(1)) / 1000:.0f} s; "
                "another rank stopped joining collectives or the nodes cannot reach each other")
    m = _NO_GPU.search(text)
    if m:
        return (f"GPU worker on {at} cannot see a GPU: {m.group(0)}; check the node's driver (nvidia-smi) and that "
                "Ray gave the worker a GPU")
    return None


def node_of(rank: int, text: str, run_name: str | None) -> str | None:
    """The node a failed rank ran on: from Ray's error text (a dead worker's ``node_ip='...'``, a task
    error's ``ip=...``), else from what the worker recorded at start (``engine.announce_worker``)."""
    m = re.search(r"node_ip='([^']+)'", text) or re.search(r"\bip=([0-9a-fA-F.:]+)", text)
    if m:
        return m.group(1)
    if run_name is None:
        return None
    try:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        if not _internal_kv_initialized():
            return None
        value = _internal_kv_get(node_key(run_name, rank), namespace=NODE_KV_NAMESPACE)
        return value.decode() if value else None
    except Exception:  # noqa: BLE001 - the line names the rank alone
        return None


def run_name(trainer) -> str | None:
    """Ray Train's name for the run ``trainer`` fits (the workers record their nodes under it)."""
    return getattr(getattr(trainer, "run_config", None), "name", None)
