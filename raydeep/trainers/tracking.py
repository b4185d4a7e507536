"""Tracking: TensorBoard event files for a run (``RUN/tensorboard/``) and for a sweep's trials
(``SWEEP/tensorboard/<trial>``), so ``tensorboard --logdir runs/`` shows them side by side.

Written on the driver from what it already receives (each epoch's metrics; the plots a run
draws at its end) with tensorboardX, which Ray Tune already installs: no worker writes events
and nothing is read back from a cluster. The x axis is the optimizer step (``global_step``), so
runs of different batch sizes or epoch lengths line up by the updates they made.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

TENSORBOARD = "tensorboard"


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics TensorBoard plots: numbers (bools and lists aside); NaN and inf kept, as TensorBoard
    shows them, since a diverging run is what a curve must show."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "global_step"}


class EventLog:
    """One TensorBoard run directory; every method is a no-op after ``close``."""

    def __init__(self, logdir: str | Path) -> None:
        from tensorboardX import SummaryWriter  # a dependency of ray[tune]

        # it warns on every NaN scalar; a diverging run's curve is meant to show them
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        self.logdir = Path(logdir)
        self.writer = SummaryWriter(logdir=str(self.logdir), flush_secs=10)

    def epoch(self, metrics: dict[str, Any]) -> None:
        """One epoch's metrics at its optimizer step."""
        step = int(metrics.get("global_step") or 0)
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def step(self, record: dict[str, float]) -> None:
        """Every run.log_every_steps: rank 0's mean training loss since the last record, and the LR,
        as ``step/train_loss`` and ``step/lr`` (apart from the epochs' ``train/loss``)."""
        step = int(record["global_step"])
        for key, value in record.items():
            if key != "global_step":
                self.writer.add_scalar(f"step/{key}", float(value), global_step=step)

    def text(self, tag: str, body: str, fence: str = "") -> None:
        """``body`` as TensorBoard's TEXT tab shows it (markdown; fenced keeps YAML as written)."""
        self.writer.add_text(tag, f"```{fence}\n{body}\n```" if fence else body, global_step=0)

    def image(self, tag: str, png: Path, step: int = 0) -> None:
        """A PNG the run drew (the confusion matrix, the learning curves) in the IMAGES tab."""
        if not png.is_file():
            return
        import matplotlib.image

        pixels = matplotlib.image.imread(str(png))  # HxWx(3|4) floats in [0, 1]
        self.writer.add_image(tag, pixels[..., :3], global_step=step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def trial_dirname(trial_id: str, params: dict[str, Any]) -> str:
    """A trial's sub-run name: its id and its parameters, short enough for TensorBoard's run list."""
    def short(v: Any) -> str:
        if isinstance(v, float) and math.isfinite(v):
            return f"{v:.3g}"
        return str(v)

    parts = [f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in sorted(params.items())]
    name = ",".join([trial_id, *parts]).replace("/", "_").replace(" ", "")
    return name[:120]


class EpochLogs:
    """Several per-epoch logs (TensorBoard's ``EventLog``, an MLflow run) behind the one ``epoch`` call
    ``follow`` makes; ``None`` entries are skipped."""

    def __init__(self, *logs: Any) -> None:
        self.logs = [log for log in logs if log is not None]

    def epoch(self, metrics: dict[str, Any]) -> None:
        for log in self.logs:
            log.epoch(metrics)

    def step(self, record: dict[str, float]) -> None:
        for log in self.logs:
            if hasattr(log, "step"):
                log.step(record)
