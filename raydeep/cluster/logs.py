"""Ray's own output to a file in the run (or sweep) dir, not the console.

While a run is followed, Ray forwards every worker's and actor's stdout/stderr to the driver
(``log_to_driver``) and prints it with a ``(RayTrainWorker pid=...)`` prefix: DeepSpeed's
``deepspeed_shm_comm_op built successfully`` once per worker, Ray's ``core_worker.cc`` lines about
``PreemptionWatcher``, ``PlacementGroupCleaner`` notices, a failing worker's whole traceback. None
of it is for the user (RAY_NOTES, "Console noise"): raydeep says what went wrong in one line.
``ray_output_to(path)`` writes all of it to ``path`` and lets through only what a user acts on:
raydeep's own lines printed on workers (``raydeep: ...``) and the autoscaler's events (a cluster
waiting for nodes). The driver's ``ray`` loggers (Tune's and Train's INFO, warnings and errors)
go to the same file while it is in force. ``--debug`` keeps today's console (everything).

Lines keep arriving for a moment after a run ends (Tune stopping its trial actors prints their
exit): they go to the last run's file, not the console.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

RAY_LOG = "ray.log"
HANDLER = "ray_print_logs"  # the name Ray gives its console handler (ray/_private/worker.py)


def for_the_user(line: str) -> bool:
    """A worker's line that stays on the console: raydeep's own."""
    return line.lstrip().startswith("raydeep")


def _prefix(data: dict) -> str:
    name = data.get("actor_name") or data.get("task_name") or ""
    return f"({name + ' ' if name else ''}pid={data.get('pid')}, ip={data.get('ip')}) "


class _Route:
    """The one handler raydeep puts in Ray's place: every batch to ``path`` (when set), the
    lines ``keep`` accepts (all, when no path is set) to Ray's own console printer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.path: Path | None = None
        self.keep: Callable[[str], bool] = for_the_user
        self.printers: list[Callable] = []

    def __call__(self, data: dict) -> None:
        lines = data.get("lines") or []
        path, keep = self.path, self.keep
        if path is not None:
            try:
                with self.lock, open(path, "a", encoding="utf-8", errors="replace") as out:
                    out.writelines(_prefix(data) + line + "\n" for line in lines)
            except OSError:
                path = None  # the run dir went away: show it rather than lose it
        shown = lines if path is None or data.get("pid") == "autoscaler" else [x for x in lines if keep(x)]
        if shown:
            for print_lines in self.printers:
                print_lines({**data, "lines": shown})


_ROUTE = _Route()


def _install() -> None:
    """Put ``_ROUTE`` in place of Ray's console handler (again after a reconnect, which adds
    Ray's anew). A driver connected without log_to_driver has none: nothing to route."""
    from ray._private import worker as ray_worker  # Ray's log dispatcher: no public hook exists

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    handlers = [h for name, h in dispatcher.handlers if name == HANDLER]
    if handlers and not any(h is _ROUTE for h in handlers):
        _ROUTE.printers = handlers
        dispatcher.remove_handler(HANDLER)
        dispatcher.add_handler(HANDLER, _ROUTE)


@contextmanager
def ray_output_to(path: Path, *, keep: Callable[[str], bool] = for_the_user, quiet: bool = True) -> Iterator[Path]:
    """Inside: the lines Ray forwards from workers and actors (and, after it, their late ones) are
    appended to ``path``, and so are the driver's ``ray`` log records; of the forwarded lines
    only ``keep``'s and the autoscaler's events reach the console. ``quiet=False`` (``--debug``):
    everything on the console."""
    _install()
    if not quiet:
        _ROUTE.path = None
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _ROUTE.path, _ROUTE.keep = path, keep
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    console = [(h, h.level) for h in ray_logger.handlers  # Ray's PlainRayHandler and the like, not files
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    ray_logger.addHandler(file_handler)
    for h, _ in console:  # Tune's trial tracebacks, Train's INFO: the file only
        h.setLevel(logging.CRITICAL)
    try:
        yield path
    finally:
        ray_logger.removeHandler(file_handler)
        file_handler.close()
        for h, level in console:
            h.setLevel(level)
