"""After the sweep: the leaderboard (printed and ``leaderboard.csv``), ``best.yaml`` (the winning
trial's config, runnable as is), ``summary.json`` and ``sweep.png``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import ResultGrid
from rich.console import Console
from rich.table import Table

from raydeep.config import Config, to_yaml
from raydeep.errors import RaydeepError
from raydeep.fileio import atomic_write_text
from raydeep.sweeps.plan import Sweep
from raydeep.sweeps.space import canonical
from raydeep.sweeps.trial import trial_config, trial_params
from raydeep.trainers.outputs import mirror_once
from raydeep.trainers.plots import _figure, _save
from raydeep.trainers.schedules import lr_curve


@dataclass
class TrialRow:
    """One trial's line of the leaderboard, and its metric per epoch for sweep.png."""

    trial_id: str
    status: str  # finished | stopped early | error | unfinished
    best: float | None
    best_epoch: int | None
    epochs: int
    params: dict[str, Any]  # canonical: None where a parameter did not apply
    history: list[tuple[int, float]]  # (epochs done, metric)
    error: str | None = None
    rank: int | None = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def collect_rows(s: Sweep, results: ResultGrid) -> list[TrialRow]:
    """Every trial's best value, status and history from Tune's results, ranked (``rank`` None:
    it never reported the metric)."""
    t = s.cfg.tune
    statuses = {}
    analysis = getattr(results, "_experiment_analysis", None)
    for trial in getattr(analysis, "trials", None) or []:
        statuses[trial.trial_id] = trial.status
    rows = []
    for r in results:
        # Tune names a trial's folder after its id, but a trial that --resume starts for the first
        # time gets a suffixed folder (its id's folder exists already): the id is in its results.
        trial_id = str((r.metrics or {}).get("trial_id") or Path(r.path).name)
        df = r.metrics_dataframe
        history: list[tuple[int, float]] = []
        if df is not None and len(df) and "epoch" in df:
            for epoch, value in zip(df["epoch"], df[t.metric] if t.metric in df else [None] * len(df)):
                if _finite(epoch):
                    history.append((int(epoch) + 1, float(value) if _finite(value) else float("nan")))
        epochs = max((e for e, _ in history), default=0)
        scored = [(v, e) for e, v in history if math.isfinite(v)]
        pick = max if t.mode == "max" else min
        best, best_epoch = pick(scored) if scored else (None, None)
        status = statuses.get(trial_id, "TERMINATED")
        if r.error is not None:
            label = "error"
        elif status != "TERMINATED":
            label = "unfinished"
        elif epochs >= s.cfg.run.epochs:
            label = "finished"
        else:
            label = "stopped early"
        err = None
        if r.error is not None:
            text = str(r.error).strip().splitlines()
            err = next((ln for ln in reversed(text) if ln.strip()), type(r.error).__name__)
        params = canonical(s.context.base, trial_params(r.config or {}))
        rows.append(TrialRow(trial_id, label, best, best_epoch, epochs, params, history, err))
    sign = -1 if t.mode == "max" else 1
    rows.sort(key=lambda row: (row.best is None, sign * row.best if row.best is not None else 0, row.trial_id))
    for i, row in enumerate(r for r in rows if r.best is not None):
        row.rank = i + 1
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_leaderboard(s: Sweep, rows: list[TrialRow], path: Path) -> None:
    """``leaderboard.csv``: every trial, best first, with its parameters ('' where one does not apply)
    and, last, the line a failed trial ended with."""
    keys = list(s.cfg.tune.space)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "trial_id", s.cfg.tune.metric, "best_epoch", "epochs_run", "status", *keys, "error"])
    for row in rows:
        w.writerow([row.rank or "", row.trial_id, "" if row.best is None else f"{row.best:.6g}",
                    row.best_epoch or "", row.epochs, row.status,
                    *("" if row.params.get(k) is None else row.params[k] for k in keys), row.error or ""])
    atomic_write_text(path, buf.getvalue())


def leaderboard_table(s: Sweep, rows: list[TrialRow], top: int = 10) -> Table:
    """The ``top`` trials as the table printed at the end of the sweep."""
    t = s.cfg.tune
    table = Table(title=f"leaderboard: {t.mode} {t.metric} ('-': does not apply to that trial)", title_justify="left")
    for col in ("rank", t.metric, "epochs", "status", *t.space, "trial"):
        table.add_column(col, justify="right" if col in ("rank", t.metric, "epochs") else "left")
    for row in rows[:top]:
        table.add_row(str(row.rank or "-"), _fmt(row.best), str(row.epochs), row.status,
                      *(_fmt(row.params.get(k)) for k in t.space), row.trial_id)
    if len(rows) > top:
        table.caption = f"{len(rows) - top} more in leaderboard.csv"
    return table


def write_best(s: Sweep, row: TrialRow, path: Path) -> Config:
    """best.yaml: the winning trial's complete config, without a tune: section, so that
    ``raydeep train best.yaml`` runs it as is."""
    cfg, ignored = trial_config(s.context.base, s.context.space, {k: v for k, v in row.params.items()})
    t = s.cfg.tune
    header = [f"# Best trial of the sweep {s.sweep_dir.name} ({row.trial_id}): {t.metric} = {row.best:.4f} "
              f"at epoch {row.best_epoch} of {row.epochs}.",
              f"# Run it: raydeep train {path}"]
    header += [f"#   searched {k}: {v!r}" for k, v in row.params.items() if v is not None]
    if t.scheduler.name == "pbt":
        header.append("# PBT changed this trial's hyperparameters while it trained (see tune/pbt_policy_*.txt); "
                      "these are its last values.")
    atomic_write_text(path, "\n".join(header) + "\n" + to_yaml(cfg, exclude={"tune"}))
    return cfg


def plot_sweep(s: Sweep, rows: list[TrialRow], path: str | os.PathLike, top: int = 3) -> None:
    """Left: the metric of each trial per epoch; a trial stopped early ends in an ``x`` where it
    stopped, so ASHA's cuts are visible. Right: the LR schedules of the ``top`` trials over the
    real step count (PBT: each trial's last hyperparameters)."""
    plt = _figure()
    from matplotlib.ticker import MaxNLocator  # deferred: matplotlib is heavy and only sweep.png needs it

    t = s.cfg.tune
    fig, (ax, ax_lr) = plt.subplots(1, 2, figsize=(14, 4.8))
    ranked = [r for r in rows if r.rank is not None]
    leaders = {r.trial_id for r in ranked[:top]}
    for row in rows:
        if not row.history:
            continue
        x = [e for e, _ in row.history]
        y = [v for _, v in row.history]
        lead = row.trial_id in leaders
        label = f"#{row.rank} {row.trial_id}" if lead else None
        line, = ax.plot(x, y, "-", marker="o", markersize=3, linewidth=2.2 if lead else 1.0,
                        alpha=1.0 if lead else 0.55, label=label, zorder=3 if lead else 2)
        if row.status == "stopped early" and math.isfinite(y[-1]):
            ax.plot([x[-1]], [y[-1]], "x", color=line.get_color(), markersize=9, markeredgewidth=2, zorder=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel(t.metric)
    stopped = sum(r.status == "stopped early" for r in rows)
    ax.set_title(f"{t.metric} per trial ({len(rows)} trials, {stopped} stopped early: x)")
    ax.set_xlim(0.5, s.cfg.run.epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if leaders:
        ax.legend(loc="best", fontsize=8)

    plan = s.plan
    for row in ranked[:top]:
        cfg, _ = trial_config(s.context.base, s.context.space, row.params)
        lrs = lr_curve(cfg.schedule, cfg.optim.lr, plan.total_steps, plan.steps_per_epoch)
        ax_lr.plot(range(len(lrs)), lrs, linewidth=1.6,
                   label=f"#{row.rank} {cfg.schedule.name}, lr {cfg.optim.lr:.3g}")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_ylim(bottom=0)
    ax_lr.set_title(f"LR schedules of the top {min(top, len(ranked))}"
                    + (" (PBT: last values)" if t.scheduler.name == "pbt" else ""))
    ax_lr.grid(alpha=0.3)
    if ranked:
        ax_lr.legend(loc="best", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def finish(s: Sweep, results: ResultGrid, console: Console, *, wall_time_s: float) -> dict[str, Any]:
    """Print the leaderboard and write leaderboard.csv, best.yaml, sweep.png and summary.json;
    the summary, or an error if no trial reported the metric (an interrupted sweep is not one)."""
    t = s.cfg.tune
    rows = collect_rows(s, results)
    interrupted = any(r.status == "unfinished" for r in rows)
    table = leaderboard_table(s, rows)
    width = console.width
    if not console.is_terminal:
        # Logs and pipes get rich's default 80 columns, which would fold every cell.
        console.width = max(width, 240)
    try:
        console.print(table)
    finally:
        console.width = width
    write_leaderboard(s, rows, s.sweep_dir / "leaderboard.csv")
    scored = [r for r in rows if r.best is not None]
    summary: dict[str, Any] = {
        "name": s.cfg.name, "sweep_dir": str(s.sweep_dir), "metric": t.metric, "mode": t.mode,
        "trials": len(rows), "errors": sum(r.status == "error" for r in rows),
        "stopped_early": sum(r.status == "stopped early" for r in rows),
        "epochs_run": sum(r.epochs for r in rows), "interrupted": interrupted, "wall_time_s": wall_time_s,
        "storage": s.storage.remote, "best": None,
    }
    for row in rows:
        if row.status == "error":
            console.print(f"[red]trial {row.trial_id} failed: {row.error}")
    if scored:
        best = scored[0]
        write_best(s, best, s.sweep_dir / "best.yaml")
        summary["best"] = {"trial_id": best.trial_id, "value": best.best, "epoch": best.best_epoch,
                           "params": best.params, "config": str(s.sweep_dir / "best.yaml")}
        try:
            plot_sweep(s, rows, s.sweep_dir / "sweep.png")
        except Exception as exc:  # a plot must never fail a finished sweep
            console.print(f"[yellow]could not draw sweep.png: {exc}")
        console.print(f"best {t.metric}: {best.best:.4f} (trial {best.trial_id}, epoch {best.best_epoch})   "
                      f"config: {s.sweep_dir / 'best.yaml'}", soft_wrap=True)
    atomic_write_text(s.sweep_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    mirror_once(s.sweep_dir, s.storage.remote, s.storage.path, s.storage.fs, s.cfg.storage, console=console)
    console.print(f"{len(rows)} trials, {summary['epochs_run']} epochs in {wall_time_s:.0f} s   "
                  f"leaderboard: {s.sweep_dir / 'leaderboard.csv'}", soft_wrap=True)
    if interrupted:
        console.print(f"[yellow]the sweep was interrupted; continue it with: raydeep tune --resume {s.sweep_dir}",
                      soft_wrap=True)
    elif not scored:
        raise RaydeepError(f"no trial reported {t.metric}; see the errors above and {s.tune_dir}")
    return summary
