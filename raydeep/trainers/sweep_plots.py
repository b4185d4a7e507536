"""sweep.png: every trial's metric against epochs, and the LR schedules of the top trials."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from raydeep.trainers.plots import _figure, _save

if TYPE_CHECKING:  # pragma: no cover
    from raydeep.trainers.sweeps import Sweep, TrialRow


def plot_sweep(s: "Sweep", rows: list["TrialRow"], path: str | os.PathLike, top: int = 3) -> None:
    """Left: the metric of each trial per epoch; a trial stopped early ends in an ``x`` where it
    stopped, so ASHA's cuts are visible. Right: the LR schedules of the ``top`` trials over the
    real step count (PBT: each trial's last hyperparameters)."""
    from raydeep.trainers.schedules import lr_curve
    from raydeep.trainers.sweeps import trial_config

    plt = _figure()
    from matplotlib.ticker import MaxNLocator

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
