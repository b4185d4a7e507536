"""``raydeep train`` on the driver: check -> plan -> fit -> report.

Order matters: everything that can be checked without Ray (config, data paths, schemas, labels)
is checked before Ray starts, so a bad run fails in a second on a laptop instead of minutes
into a cluster job.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import ray.data
from rich.console import Console

from raydeep.cluster.connect import connect
from raydeep.config import Config, to_yaml
from raydeep.datasets.storage import resolve_storage
from raydeep.errors import ConfigError
from raydeep.fileio import atomic_write_text
from raydeep.trainers.follow import follow, process_start_time, startup_timeline
from raydeep.trainers.launch import build_trainer
from raydeep.trainers.plan import plan_data, plan_run
from raydeep.trainers.progress import ProgressBoard
from raydeep.trainers.report import SUMMARY, build_summary, print_final, write_plots


def new_run_dir(cfg: Config, root: str = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.name}-{stamp}"


def train(cfg: Config, *, run_dir: str | os.PathLike | None = None, address: str | None = None,
          resume: bool = False, verbose: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run one training job end to end; returns the summary written to ``summary.json``."""
    console = console or Console()
    t_start = time.time()
    marks = {"process_start": process_start_time(), "train_entry": t_start}  # start-up timeline
    data = plan_data(cfg)
    marks["data_checked"] = time.time()
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    if (run_dir / SUMMARY).exists() and not resume:
        raise ConfigError(f"--run-dir {run_dir}: holds a finished run; pick a new directory or use --resume")

    if cfg.run.storage:  # checked before Ray starts: a missing bucket fails in a second
        storage_path, storage_fs = resolve_storage(cfg.run.storage, cfg.storage, key="run.storage")
    else:  # Ray Train's run folder is <storage>/<name>: by default the run directory itself
        storage_path, storage_fs = str(run_dir.resolve().parent), None
    info = connect(address, verbose=verbose)
    marks["ray_ready"] = time.time()
    plan = plan_run(cfg, info, data)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    atomic_write_text(run_dir / "deepspeed.json", json.dumps(plan.ds_config, indent=2) + "\n")
    console.print(plan.describe())
    console.print(f"run dir: {run_dir}" + (f"   dashboard: {info.dashboard_url}" if info.dashboard_url else ""))

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    board = ProgressBoard.remote()
    trainer = build_trainer(plan, name=run_dir.resolve().name, storage_path=storage_path,
                            storage_filesystem=storage_fs, board=board, verbose=verbose)
    marks["fit_start"] = time.time()
    result = follow(trainer, board, run_dir, cfg.run.epochs, plan.task, console)
    marks["fit_done"] = time.time()

    summary = build_summary(plan, result, run_dir, time.time() - t_start, startup_timeline(marks, board), console)
    print_final(console, summary, plan)
    write_plots(run_dir, summary, plan, console)
    atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")  # last: marks the run complete
    return summary
