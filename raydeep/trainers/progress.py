"""Live progress from the workers to the driver's console.

``ray.train.report`` is a barrier across all workers, so it is called once per epoch, never
per step. Step progress instead goes from rank 0 to a tiny actor (``ProgressBoard``) with
fire-and-forget calls at most a few times a second; the driver polls it to draw a progress
bar and the per-epoch lines, and to write ``metrics.jsonl``. The actor lives as long as the
driver, so it also survives a worker-group restart.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.live: dict[str, Any] = {}
        self.epochs: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.startup_marks: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []  # every run.log_every_steps: rank 0's loss and LR
        self.last_step: int | None = None  # the highest global step heard of, this run or (seen_step) before

    def update(self, live: dict[str, Any]) -> None:
        self.live = live
        self.seen_step(live.get("global_step"))

    def seen_step(self, step: int | None) -> None:
        if step is not None:
            self.last_step = max(int(step), self.last_step or 0)

    def last_global_step(self) -> int | None:
        """What a resumed worker group compares its checkpoint's step with: the steps redone."""
        return self.last_step

    def step_log(self, record: dict[str, float]) -> None:
        self.steps.append(record)

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics)

    def event(self, text: str) -> None:
        self.events.append(text)

    def record_startup(self, marks: dict[str, float]) -> None:
        """Rank 0's start-up timestamps (``time.time()``); a restarted group's do not replace them."""
        self.startup_marks = self.startup_marks or marks

    def startup(self) -> dict[str, float]:
        return self.startup_marks

    def poll(self, epochs_seen: int, events_seen: int, steps_seen: int = 0) -> tuple[dict, list, list, list]:
        return self.live, self.epochs[epochs_seen:], self.events[events_seen:], self.steps[steps_seen:]


class StepTicker:
    """Rank 0's side: rate-limited, non-blocking progress updates, and every ``log_every`` optimizer
    steps a record of the mean training loss since the last one and the LR (TensorBoard's
    ``step/train_loss`` and ``step/lr``). The loss is summed on its device between records: one
    device-to-host copy per record, none per step."""

    def __init__(self, board, every_s: float = 0.5, log_every: int = 0) -> None:
        self.board = board
        self.every_s = every_s
        self.log_every = log_every
        self._last = 0.0
        self._loss: Any = 0.0
        self._rows = 0
        self._logged_step = -1

    def tick(self, *, loss: Any = None, rows: int = 0, lr: Callable[[int], float] | None = None, **live: Any) -> None:
        if self.board is None:
            return
        if loss is not None and self.log_every:
            self._loss = self._loss + loss.detach().double() * rows
            self._rows += rows
            step = int(live.get("global_step", 0))
            # step 0: the first micro-batches of a gradient accumulation window, no optimizer step yet
            if step > 0 and step % self.log_every == 0 and step != self._logged_step and self._rows:
                self._logged_step = step
                record = {"global_step": step, "train_loss": float(self._loss) / self._rows}
                if lr is not None:
                    record["lr"] = float(lr(step - 1))  # the LR the step just taken used
                self.board.step_log.remote(record)
                self._loss, self._rows = 0.0, 0
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.board.update.remote(live)  # no ray.get: never wait on the driver
