"""Progress of a command's long steps on its console (``data prepare``, ``evaluate``, ``export``).

``Meter`` counts one step's units (records, rows, shards) with their rate, and the ETA when the
total is known; ``step`` times a step that has no count (a consolidation, a save). On a terminal
both are a live rich line that disappears when the step ends. Anywhere else (CI, a pipe, a Ray
Job's log) a redrawn bar would be one line per refresh, so a meter prints a plain line at most
every ``EVERY_S``, and with a known total only when another tenth is done or ``QUIET_S`` passed
without a line. Both end with one plain line, the same on either console: the totals and the rate,
or the duration.

Progress goes to stderr: stdout holds a command's results (tables, ``wrote ...``), which scripts
read.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

EVERY_S = 10.0  # a non-terminal gets at most one progress line this often
QUIET_S = 60.0  # ... and with a known total, a line after this long even if no tenth was completed

Clock = Callable[[], float]


def progress_console() -> Console:
    """stderr as it is now: a ``redirect_stderr`` around a library call does not swallow the bar."""
    return Console(file=sys.stderr)


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``2:05``, ``1:02:05``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate_text(count: float, seconds: float, unit: str) -> str:
    if seconds <= 0:
        return f"- {unit}/s"
    r = count / seconds
    if r >= 10:
        return f"{r:,.0f} {unit}/s"
    return f"{r:.1f} {unit}/s" if r >= 0.1 or r == 0 else f"{r:.2g} {unit}/s"


def size_text(n: float) -> str:
    """Bytes in decimal units: ``512 B``, ``1.2 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Meter:
    """One counted step: ``advance(n)`` as units complete, ``close()`` for the final line.

    ``extra`` (set with ``note``) is shown after the rate: a second count, bytes, shards.
    Use it as a context manager: the final line is printed when the block ends without an error
    (after an error the error is the news; the live bar is removed either way).
    """

    def __init__(self, description: str, unit: str, total: int | None = None, *, console: Console | None = None,
                 clock: Clock = time.monotonic, every_s: float = EVERY_S, quiet_s: float = QUIET_S) -> None:
        self.description, self.unit, self.total = description, unit, total
        self.console = console or progress_console()
        self.clock, self.every_s, self.quiet_s = clock, every_s, quiet_s
        self.completed = 0
        self.extra = ""
        self.lines: list[str] = []  # every plain line printed, for tests and callers that log them
        self.start = self._last_line = clock()
        self._next_mark = self._mark_after(0)
        self._closed = False
        self._live: Progress | None = None
        if self.console.is_terminal and not self.console.is_dumb_terminal:
            self._live = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30),
                TaskProgressColumn(), TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[extra]}"),
                console=self.console, transient=True, get_time=clock)
            self._task = self._live.add_task(description, total=total, count="", rate="", eta="", extra="")
            self._live.start()
            self._redraw()

    # -- counting

    def advance(self, n: int = 1) -> None:
        self.completed += n
        self._update()

    def set_total(self, total: int | None) -> None:
        self.total = total
        self._next_mark = self._mark_after(self.completed)
        self._update()

    def note(self, extra: str) -> None:
        """Text after the rate on the next line or redraw (not a reason to print one)."""
        self.extra = extra
        self._update()

    def tick(self) -> None:
        """Nothing new counted: a redraw, or a line if one is due (a poll loop calls this)."""
        self._update()

    # -- what is shown

    def count_text(self) -> str:
        return f"{self.unit} {self.completed:,}" + (f"/{self.total:,}" if self.total is not None else "")

    def line(self, now: float) -> str:
        """A progress line: count (percent), rate, elapsed, ETA when the total is known, extra."""
        elapsed = now - self.start
        parts = [self.count_text() + (f" ({self.completed / self.total:.0%})" if self.total else ""),
                 rate_text(self.completed, elapsed, self.unit), f"{duration(elapsed)} elapsed"]
        eta = self._eta(elapsed)
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        if self.extra:
            parts.append(self.extra)
        return f"{self.description}: {', '.join(parts)}"

    def final_line(self, now: float) -> str:
        elapsed = now - self.start
        extra = f"; {self.extra}" if self.extra else ""
        return (f"{self.description}: {self.count_text()} in {duration(elapsed)}, "
                f"{rate_text(self.completed, elapsed, self.unit)}{extra}")

    def close(self) -> str:
        """Remove the live bar and print the final line (once); returns it."""
        now = self.clock()
        self._stop()
        if self._closed:
            return self.lines[-1] if self.lines else ""
        self._closed = True
        text = self.final_line(now)
        self._print(text)
        return text

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stop()
            self._closed = True

    # -- internals

    def _eta(self, elapsed: float) -> float | None:
        if not self.total or self.completed <= 0 or self.completed >= self.total or elapsed <= 0:
            return None
        return (self.total - self.completed) * elapsed / self.completed

    def _mark_after(self, completed: int) -> float:
        """The next tenth of the total above ``completed`` (inf without a total)."""
        if not self.total:
            return math.inf
        return (math.floor(completed * 10 / self.total) + 1) * self.total / 10

    def due(self, now: float) -> bool:
        """A non-terminal line now? At most one per ``every_s``; with a total, only when another
        tenth is done or ``quiet_s`` passed since the last line."""
        since = now - self._last_line
        if since < self.every_s:
            return False
        return not self.total or self.completed >= self._next_mark or since >= self.quiet_s

    def _update(self) -> None:
        if self._closed:
            return
        if self._live is not None:
            self._redraw()
            return
        now = self.clock()
        if self.due(now):
            self._last_line = now
            self._next_mark = self._mark_after(self.completed)
            self._print(self.line(now))

    def _redraw(self) -> None:
        assert self._live is not None
        elapsed = self.clock() - self.start
        eta = self._eta(elapsed)
        self._live.update(self._task, completed=self.completed, total=self.total, count=self.count_text(),
                          rate=rate_text(self.completed, elapsed, self.unit),
                          eta=f"ETA {duration(eta)}" if eta is not None else "", extra=self.extra)

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _print(self, text: str) -> None:
        self.lines.append(text)
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


class Step:
    """What ``step`` yields: set ``result`` to say what the step produced (``148 tensors``)."""

    def __init__(self) -> None:
        self.result = ""
        self.seconds = 0.0
        self.line = ""


@contextlib.contextmanager
def step(description: str, *, console: Console | None = None, clock: Clock = time.monotonic) -> Iterator[Step]:
    """Time one uncounted step. On a terminal a spinner while it runs; elsewhere a start line
    (``description ...``), since the step may take minutes. Then ``description: RESULT in 3.1 s``."""
    console = console or progress_console()
    s = Step()
    start = clock()
    live = console.is_terminal and not console.is_dumb_terminal
    status = console.status(description) if live else contextlib.nullcontext()
    if not live:
        console.print(f"{description} ...", markup=False, highlight=False, soft_wrap=True)
    with status:
        yield s
    s.seconds = clock() - start
    s.line = f"{description}: {s.result + ' ' if s.result else 'done '}in {duration(s.seconds)}"
    console.print(s.line, markup=False, highlight=False, soft_wrap=True)
