"""What a finished run leaves: summary.json's contents, the final table and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from raydeep.trainers.checkpoints import MID_EPOCH, load_state_dict
from raydeep.trainers.follow import METRICS
from raydeep.trainers.plan import RunPlan
from raydeep.trainers.plots import plot_learning_curves
from raydeep.trainers.reporting import finished
from raydeep.trainers.schedules import plot_schedules

SUMMARY = "summary.json"


def best_checkpoint(result, metric: str, mode: str) -> str | None:
    scored = [(c, m) for c, m in (result.best_checkpoints or [])
              if m.get(metric) is not None and not m.get(MID_EPOCH)]  # mid-epoch: no validation behind it
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda cm: cm[1][metric])[0].path


def linear_coefficients(result, plan: RunPlan, console: Console) -> dict[str, Any] | None:
    """A ``linear`` model's θ₀ (intercept) and θ (weights) from the run's latest checkpoint."""
    if result.checkpoint is None:
        return None
    try:
        stage = plan.ds_config.get("zero_optimization", {}).get("stage", 0)
        with result.checkpoint.as_directory() as d:
            state = load_state_dict(Path(d), stage)
        weight, bias = state["linear.weight"].double(), state["linear.bias"].double()
    except Exception as exc:  # reading the coefficients must never fail a finished run
        console.print(f"[yellow]could not read the linear model's coefficients: {exc}")
        return None
    if plan.cfg.model.output_dim == 1:  # one output: θ₀ a number, θ a vector
        return {"intercept": float(bias[0]), "weights": weight[0].tolist()}
    return {"intercept": bias.tolist(), "weights": weight.tolist()}


def build_summary(plan: RunPlan, result, run_dir: Path, wall_time_s: float, startup: dict[str, Any],
                  console: Console) -> dict[str, Any]:
    """summary.json: final and best metrics, checkpoints, what the task says about its data."""
    cfg = plan.cfg
    final = finished(result)
    es = cfg.run.early_stopping
    summary = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "final": {k: v for k, v in final.items() if k != "val/confusion"},
        "best": {"metric": es.metric, "value": final.get("best/" + es.metric),
                 "checkpoint": best_checkpoint(result, es.metric, es.mode)},  # the best kept one
        "latest_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "confusion": final.get("val/confusion"),
        **plan.task.summary_fields(plan.data.labels),
        "task": cfg.model.task,
        "wall_time_s": wall_time_s,
        "startup": startup,
    }
    if cfg.model.kind == "linear":
        summary["linear"] = linear_coefficients(result, plan, console)
    return summary


def print_final(console: Console, summary: dict, plan: RunPlan) -> None:
    """The final table (the task's: per-class metrics, or a regression run's errors), the best
    checkpoint and the wall time."""
    final = summary["final"]
    if not final:
        return
    title = f"validation after epoch {final['epoch'] + 1} (step {final['global_step']})"
    table = plan.task.final_table(final, summary, title)
    if table is None:
        return
    console.print(table)
    best = summary["best"]
    if best["value"] is not None:
        console.print(f"best {best['metric']}: {best['value']:.4f}   checkpoint: {best['checkpoint']}")
    console.print(f"wall time {summary['wall_time_s']:.1f} s   run dir: {summary['run_dir']}")


def write_plots(run_dir: Path, summary: dict, plan: RunPlan, console: Console) -> None:
    """lr_schedule.png, learning_curves.png and the task's own (confusion.png)."""
    try:
        sched = plan.cfg.schedule
        plot_schedules([(sched.name, sched)], plan.cfg.optim.lr, plan.steps.total,
                       plan.steps.optimizer_per_epoch, str(run_dir / "lr_schedule.png"))
        lines = (run_dir / METRICS).read_text().splitlines()
        plot_learning_curves([json.loads(x) for x in lines], plan.task.plot_keys, run_dir / "learning_curves.png")
        plan.task.plots(run_dir, summary)
    except Exception as exc:  # a plot must never fail a finished training run
        console.print(f"[yellow]could not draw plots: {exc}")
