"""raydeep's live view of a sweep, in place of Tune's status tables (a ``ProgressReporter``).

One row per trial: status, epochs done, the metric now and its best, the sampled parameters, and
an errored trial's one line; a footer with trials done / running / stopped early / errored and
the elapsed time. On a terminal the table redraws in place (rich ``Live``); in a log (CI, a Ray
Job) it is printed when something changed, at most every ``min_interval_s``. Tune's own tables
and Ray's log lines go to ``SWEEP/ray.log`` instead (``raydeep.cluster.logs``).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import ProgressReporter
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from raydeep.sweeps.trial import trial_params

STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "finished",
          "ERROR": "error"}


def _num(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def trial_error(trial) -> str:
    """The last line of a failed trial's error (raydeep's one line, or the exception's)."""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - the view must never fail a sweep
        text = ""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "error"


def short_names(keys: list[str]) -> list[str]:
    """Column headers for the searched keys: the last part (``optim.lr`` -> ``lr``) where that is
    unambiguous, so a six-parameter space fits a terminal's width."""
    parts = [k.split(".") for k in keys]
    # schedule.name -> schedule: "name" alone says nothing
    last = [p[-2] if p[-1] == "name" and len(p) > 1 else p[-1] for p in parts]
    return [s if last.count(s) == 1 else k for s, k in zip(last, keys)]


class SweepConsole(ProgressReporter):
    """The sweep's table; ``epochs`` is each trial's full length (a trial that ended before it
    was stopped early, by ASHA or early stopping)."""

    def __init__(self, *, metric: str, mode: str, epochs: int, keys: list[str], console: Console | None = None,
                 min_interval_s: float = 10.0) -> None:
        self.metric, self.mode, self.epochs, self.keys = metric, mode, epochs, keys
        self.console = console or Console()
        self.min_interval_s = min_interval_s
        self.start = time.time()
        self.live: Live | None = None
        self._seen: tuple = ()
        self._last = 0.0
        self._errors: dict[str, str] = {}  # a failed trial's line, read once (from storage, maybe S3)
        self.total = 0  # the sweep's trials, created or not (setup)

    def __getstate__(self) -> dict:  # Tune pickles its run config (tuner.pkl): no console, no live view
        return {**self.__dict__, "console": None, "live": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.console = Console()

    def setup(self, start_time: float | None = None, total_samples: int | None = None, **kwargs) -> None:
        """Tune's call before the first report: a search creates its trials one by one, so the
        footer's total comes from here."""
        self.start = start_time or self.start
        self.total = total_samples or 0

    # -- what a row says ------------------------------------------------------------------------

    def _epochs_done(self, trial) -> int:
        r = trial.last_result or {}
        if "epochs_done" in r:  # PBT segments
            return int(r["epochs_done"])
        return int(r["epoch"]) + 1 if isinstance(r.get("epoch"), (int, float)) else 0

    def status(self, trial) -> str:
        label = STATUS.get(trial.status, trial.status.lower())
        if label == "finished" and self._epochs_done(trial) < self.epochs:
            return "stopped early"
        return label

    def _best(self, trial) -> Any:
        analysis = (getattr(trial, "metric_analysis", None) or {}).get(self.metric) or {}
        return analysis.get(self.mode)

    def table(self, trials: list) -> Group:
        t = Table(box=None, pad_edge=False, header_style="bold")
        # A narrow terminal shortens the parameters' columns, never the trial, its status or the metric.
        ids = max((len(tr.trial_id) for tr in trials), default=5)
        for col, width in (("trial", ids), ("status", 8), ("epoch", 5), (self.metric, len(self.metric)), ("best", 6)):
            t.add_column(col, justify="left" if col in ("trial", "status") else "right", min_width=width,
                         no_wrap=True)
        for col in short_names(self.keys):
            t.add_column(col, justify="right", no_wrap=True)
        counts: dict[str, int] = {}
        errors = []
        for trial in sorted(trials, key=lambda tr: tr.trial_id):
            status = self.status(trial)
            counts[status] = counts.get(status, 0) + 1
            params = trial_params(trial.config or {})
            style = {"error": "red", "running": "cyan", "stopped early": "dim"}.get(status, "")
            shown = "stopped" if status == "stopped early" else status  # the footer says "early"
            t.add_row(trial.trial_id, Text(shown, style=style), f"{self._epochs_done(trial)}/{self.epochs}",
                      _num((trial.last_result or {}).get(self.metric)), _num(self._best(trial)),
                      *(_num(params.get(k), 3) for k in self.keys))
            if status == "error":
                line = self._errors.get(trial.trial_id) or trial_error(trial)
                if line != "error":  # Tune writes the error file after the status turns: read until then
                    self._errors[trial.trial_id] = line
                errors.append(Text(f"  {trial.trial_id}: {line}", style="red"))
            else:  # restarted (tune --resume restarts errored trials): its next error is read anew
                self._errors.pop(trial.trial_id, None)
        return Group(t, *errors, Text(self.footer(counts, max(len(trials), self.total)), style="bold"))

    def footer(self, counts: dict[str, int], total: int) -> str:
        """``3/4 done: 1 finished, 1 stopped early, 1 error; 1 running; 0:12:03 elapsed`` (trials)
        (categories with no trial left out, so it fits a line)."""
        ended = [(counts.get(k, 0), k) for k in ("finished", "stopped early", "error")]
        # trials a search has not created yet are waiting too
        waiting = counts.get("pending", 0) + counts.get("paused", 0) + total - sum(counts.values())
        now = [(counts.get("running", 0), "running"), (waiting, "waiting")]
        elapsed = int(time.time() - self.start)
        parts = [f"{sum(n for n, _ in ended)}/{total} done"
                 + (": " + ", ".join(f"{n} {k}{'s' if k == 'error' and n > 1 else ''}" for n, k in ended if n)
                    if any(n for n, _ in ended) else ""),
                 ", ".join(f"{n} {k}" for n, k in now if n),
                 f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} elapsed"]
        return "; ".join(p for p in parts if p)

    # -- Tune's reporter interface ----------------------------------------------------------------

    def _state(self, trials: list) -> tuple:
        return tuple((tr.trial_id, tr.status, self._epochs_done(tr)) for tr in trials)

    def should_report(self, trials: list, done: bool = False) -> bool:
        if self.console.is_terminal:  # Live redraws in place: once a second (Tune asks every loop)
            return done or time.time() - self._last >= 1.0
        now = self._state(trials)
        return done or (now != self._seen and time.time() - self._last >= self.min_interval_s)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self._seen, self._last = self._state(trials), time.time()
        view = self.table(trials)
        if not self.console.is_terminal:  # a log has no width: nothing shortened (Console's default is 80)
            Console(file=self.console.file, width=max(self.console.width, 200), no_color=True).print(view)
            return
        if self.live is None:
            self.live = Live(view, console=self.console, refresh_per_second=2, transient=False)
            self.live.start()
        else:
            self.live.update(view)
        if done:
            self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
