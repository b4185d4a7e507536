"""``raydeep train`` on the driver: check -> plan -> fit -> report.

Order matters: everything that can be checked without Ray (config, data paths, schemas, labels)
is checked before Ray starts, so a bad run fails in a second on a laptop instead of minutes
into a cluster job.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import ray.data
from rich.console import Console

from raydeep.cluster.connect import connect
from raydeep.cluster.logs import RAY_LOG, ray_output_to
from raydeep.config import Config, to_yaml
from raydeep.datasets.storage import resolve_storage
from raydeep.errors import ConfigError
from raydeep.fileio import atomic_write_text
from raydeep.trainers.checkpoints import SNAPSHOT, STATE_FILE, registered, resume_world_line
from raydeep.trainers.follow import METRICS, follow, process_start_time, startup_timeline
from raydeep.trainers.launch import build_trainer, cluster_address_pinned
from raydeep.trainers.mlflow_log import ended_status, open_run, run_artifacts, run_tags
from raydeep.trainers.mlflow_log import check as check_mlflow
from raydeep.trainers.outputs import run_outputs
from raydeep.trainers.plan import plan_data, plan_run
from raydeep.trainers.progress import ProgressBoard
from raydeep.trainers.report import SUMMARY, build_summary, print_final, write_plots
from raydeep.trainers.tracking import TENSORBOARD, EpochLogs, EventLog


RUN_FILE = "run.json"  # the run's identity: the name of its folder in Ray Train's storage


def new_run_dir(cfg: Config, root: str = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.name}-{stamp}"


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a run dir that holds another run, unless resuming it is what was asked.

    Ray Train resumes whatever run its storage folder holds, so without this a new config
    trained into an old run dir silently continued the old run's checkpoints.
    """
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        return
    if (run_dir / SUMMARY).exists():
        raise ConfigError(f"--run-dir {run_dir}: holds a finished run; pick a new directory or use --resume")
    held = {p.name for p in (run_dir.glob("checkpoint_*") if run_dir.is_dir() else []) if p.is_dir()}
    held |= {name for name in (SNAPSHOT, METRICS) if (run_dir / name).exists()}
    if (run_dir / RUN_FILE).exists() and json.loads((run_dir / RUN_FILE).read_text()).get("storage"):
        held.add(RUN_FILE)  # its checkpoints are in run.storage (a local run's would be here)
    if held:
        raise ConfigError(f"--run-dir {run_dir}: holds an interrupted run ({', '.join(sorted(held)[:3])}); "
                          f"use --resume {run_dir}, or pick a new directory")


def drop_unregistered(fs, folder: str, console: Console) -> None:
    """Remove the ``checkpoint_*`` folders of a run that Ray Train never registered before it resumes.

    Ray registers a checkpoint once every rank has uploaded its part, so an unregistered folder is
    what a crash mid-upload left (some ranks' shards missing); ``evaluate`` and ``export`` skip
    them, and here they go, so nothing can mistake one for the run's latest checkpoint.
    """
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    folders = {i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")}
    keep: set[str] = set()
    if any(i.base_name == SNAPSHOT for i in infos):
        with fs.open_input_stream(f"{folder}/{SNAPSHOT}") as f:
            keep = set(registered(f.read().decode())[0])
    garbage = sorted(folders - keep)
    for name in garbage:
        fs.delete_dir(f"{folder}/{name}")
    if garbage:
        console.print(f"[yellow]removed {len(garbage)} checkpoint folder(s) Ray Train never registered (an upload "
                      f"cut short): {', '.join(garbage)}")


def check_resume(fs, folder: str, world: int, run_dir: Path) -> int | None:
    """Before resuming: refuse, in one line, a mid-epoch latest checkpoint (``run.checkpoint_every:
    {steps|minutes}``) saved by another number of workers whose remaining samples cannot be dealt
    anew (a streamed split resampled per chunk: ``position["elastic"]`` false); return the
    last global step the stopped run was seen at (``record_last_step``), if known."""
    import pyarrow.fs as pafs

    fs = fs or pafs.LocalFileSystem()
    try:
        with fs.open_input_stream(f"{folder}/{SNAPSHOT}") as f:
            latest = registered(f.read().decode())[1]
        with fs.open_input_stream(f"{folder}/{latest}/{STATE_FILE}") as f:
            position = json.loads(f.read().decode()).get("position")
    except (OSError, ValueError, TypeError):  # no checkpoint yet: the run starts over
        position = None
    if position and int(position["world_size"]) != world and not position.get("elastic"):
        raise ConfigError(f"--resume {run_dir}: {resume_world_line(int(position['world_size']), world)}")
    try:
        return json.loads((run_dir / RUN_FILE).read_text()).get("last_global_step")
    except (OSError, ValueError):
        return None


def record_last_step(run_dir: Path, board) -> None:
    """Keep in run.json the last global step the board heard of, for a later --resume's count of
    redone steps. Never fails the run's own ending."""
    try:
        step = ray.get(board.last_global_step.remote(), timeout=5)
        info = json.loads((run_dir / RUN_FILE).read_text())
        atomic_write_text(run_dir / RUN_FILE, json.dumps({**info, "last_global_step": step}) + "\n")
    except Exception:
        pass


def storage_name(run_dir: Path, remote: bool) -> str:
    """The run's folder name in Ray Train's storage, recorded in ``run.json`` so --resume finds it.

    Local runs (no ``run.storage``) are their own folder: the run dir's name under its parent.
    Under a shared ``run.storage`` the name gets a unique suffix: two run dirs with one basename
    (``runs/a/exp`` and ``runs/b/exp``) never share Ray's state there.
    """
    recorded = run_dir / RUN_FILE
    if recorded.exists():
        return json.loads(recorded.read_text())["storage_name"]
    base = run_dir.resolve().name
    return f"{base}-{uuid.uuid4().hex[:8]}" if remote else base


def train(cfg: Config, *, run_dir: str | os.PathLike | None = None, address: str | None = None,
          resume: bool = False, verbose: bool = False, console: Console | None = None,
          source: str | None = None) -> dict[str, Any]:
    """Run one training job end to end; returns the summary written to ``summary.json``.
    ``source``: the config file's path (an MLflow tag)."""
    console = console or Console()
    t_start = time.time()
    marks = {"process_start": process_start_time(), "train_entry": t_start}  # start-up timeline
    data = plan_data(cfg)
    marks["data_checked"] = time.time()
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    check_run_dir(run_dir, resume)

    if cfg.run.storage:  # checked before Ray starts: a missing bucket fails in a second
        storage_path, storage_fs = resolve_storage(cfg.run.storage, cfg.storage, key="run.storage")
    else:  # Ray Train's run folder is <storage>/<name>: by default the run directory itself
        storage_path, storage_fs = str(run_dir.resolve().parent), None
    name = storage_name(run_dir, remote=bool(cfg.run.storage))  # run.json's on --resume, else a new one
    mlflow_target = None
    if cfg.run.mlflow is not None:  # the package and the server, before Ray starts
        mlflow_target = check_mlflow(cfg.run.mlflow, run_dir, cfg.name,
                                     run_tags("train", task=cfg.model.task, source=source, run_dir=run_dir))
    if resume:
        drop_unregistered(storage_fs, f"{storage_path}/{name}", console)
    info = connect(address, verbose=verbose)
    marks["ray_ready"] = time.time()
    plan = plan_run(cfg, info, data)
    last_step = check_resume(storage_fs, f"{storage_path}/{name}", plan.world, run_dir) if resume else None
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_FILE, json.dumps({"storage_name": name, "storage": cfg.run.storage}) + "\n")
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    atomic_write_text(run_dir / "deepspeed.json", json.dumps(plan.ds_config, indent=2) + "\n")
    console.print(plan.describe())
    remote = f"{cfg.run.storage.rstrip('/')}/{name}" if cfg.run.storage else None  # Train's folder there
    console.print(f"run dir: {run_dir}" + (f"   outputs: {remote}" if remote else "")
                  + (f"   dashboard: {info.dashboard_url}" if info.dashboard_url else ""))

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    board = ProgressBoard.remote()
    board.seen_step.remote(last_step)  # what the stopped run had reached: a resumed group counts the steps it redoes
    trainer = build_trainer(plan, name=name, storage_path=storage_path,
                            storage_filesystem=storage_fs, board=board, verbose=verbose)
    mlrun = None
    if mlflow_target is not None:
        console.print(mlflow_target.shown(), soft_wrap=True)
        mlrun = open_run(mlflow_target, cfg.model_dump(mode="json"), run_dir, resume=resume, tags={},
                         warn=lambda line: console.print(f"[yellow]{line}"))
    events = EventLog(run_dir / TENSORBOARD)  # tensorboard --logdir runs/
    events.text("config", to_yaml(cfg), fence="yaml")
    events.text("deepspeed", json.dumps(plan.ds_config, indent=2), fence="json")
    outputs = run_outputs(run_dir, cfg.run.storage, storage_path, storage_fs, name, cfg.storage, console=console)
    try:
        marks["fit_start"] = time.time()
        with cluster_address_pinned(), ray_output_to(run_dir / RAY_LOG, quiet=not verbose):
            result = follow(trainer, board, run_dir, cfg.run.epochs, plan.task, console, EpochLogs(events, mlrun))
        marks["fit_done"] = time.time()

        summary = build_summary(plan, result, run_dir, time.time() - t_start, startup_timeline(marks, board), console)
        summary["run_storage"] = remote
        print_final(console, summary, plan)
        write_plots(run_dir, summary, plan, console)
        events.image("confusion_matrix", run_dir / "confusion.png", step=summary["final"].get("global_step") or 0)
    except BaseException as exc:
        record_last_step(run_dir, board)
        if mlrun is not None:  # what the dashboard shows: FAILED, or KILLED for Ctrl-C
            mlrun.artifacts(run_artifacts(run_dir))
            mlrun.end(ended_status(exc))
        raise
    finally:
        events.close()
        outputs.close()  # to run.storage, however the run ended
    atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")  # last: marks the run complete
    outputs.close()  # summary.json
    if mlrun is not None:
        best = summary["best"]
        if isinstance(best.get("value"), (int, float)):
            mlrun.metrics({f"best/{best['metric']}": best["value"]}, step=summary["final"].get("epoch") or 0)
        mlrun.artifacts(run_artifacts(run_dir))
        mlrun.end("FINISHED")
    return summary
