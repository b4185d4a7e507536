"""Ray's own output to a file in the run (or sweep) dir, not the console.

While a run is followed, Ray forwards every worker's and actor's stdout/stderr to the driver
(``log_to_driver``) and prints it with a ``(RayTrainWorker pid=...)`` prefix: DeepSpeed's
``deepspeed_shm_comm_op built successfully`` once per worker, Ray's ``core_worker.cc`` lines about
``PreemptionWatcher``, ``PlacementGroupCleaner`` notices, a failing worker's whole traceback. None
of it is for the user (RAY_NOTES, "Console noise"): raydeep says what went wrong in one line.
``ray_output_to(path)`` writes all of it to ``path`` and lets through only what a user acts on:
raydeep's own lines printed on workers (``raydeep: ...``) and the autoscaler's (a cluster
waiting for nodes). The driver's ``ray`` loggers (Tune's and Train's INFO and warnings) go to the
same file. ``--debug`` keeps today's console (everything).
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


@contextmanager
def ray_output_to(path: Path, *, keep: Callable[[str], bool] = for_the_user, quiet: bool = True) -> Iterator[Path]:
    """Inside: the lines Ray forwards from workers and actors, and the driver's ``ray`` log
    records, are appended to ``path``; of the forwarded lines only ``keep``'s (and the
    autoscaler's) reach the console. ``quiet=False`` (``--debug``) changes nothing."""
    if not quiet:
        yield path
        return
    from ray._private import worker as ray_worker  # Ray's log dispatcher: no public hook exists

    path.parent.mkdir(parents=True, exist_ok=True)
    out = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    lock = threading.Lock()
    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    original = [h for name, h in dispatcher.handlers if name == HANDLER]

    def handle(data: dict) -> None:
        lines = data.get("lines") or []
        with lock:
            if not out.closed:  # a late batch after the run: Ray's thread still delivers
                out.writelines(_prefix(data) + line + "\n" for line in lines)
        shown = lines if data.get("pid") == "autoscaler" else [x for x in lines if keep(x)]
        if shown and original:
            for print_lines in original:
                print_lines({**data, "lines": shown})

    file_handler = logging.StreamHandler(out)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    console_handlers = [h for h in ray_logger.handlers if isinstance(h, logging.StreamHandler)]
    saved = [(h, h.level) for h in console_handlers]
    if original:  # a driver connected with log_to_driver (raydeep's connect always is)
        dispatcher.remove_handler(HANDLER)
        dispatcher.add_handler(HANDLER, handle)
    ray_logger.addHandler(file_handler)
    for h in console_handlers:
        h.setLevel(max(h.level, logging.ERROR))  # Ray's INFO and warnings: the file only
    try:
        yield path
    finally:
        if any(h is handle for _, h in dispatcher.handlers):  # not if Ray disconnected meanwhile
            dispatcher.remove_handler(HANDLER)
            for h in original:
                dispatcher.add_handler(HANDLER, h)
        ray_logger.removeHandler(file_handler)
        for h, level in saved:
            h.setLevel(level)
        with lock:
            out.close()
