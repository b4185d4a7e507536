"""``raydeep schedules plot``: a config's LR schedule over the run's real step count, and others beside it."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from raydeep.config import Config
from raydeep.errors import ConfigError
from raydeep.trainers.plan import Steps, plan_data, resolve_workers
from raydeep.trainers.schedules import ScheduleConfig, plot_schedules


def plot_schedule_command(cfg: Config, out: str, compare: list[str]) -> Path:
    """The step count comes from the training split's row count, the workers, the batch size and
    the epochs, exactly as the run computes it (no Ray needed)."""
    data = plan_data(cfg)
    # without a cluster to ask, num_workers: auto is the CPU count of workers (the run plan says the real one)
    workers = resolve_workers(cfg.scaling.num_workers, use_gpu=False, gpus=0, gpus_per_worker=1)
    steps = Steps.of(cfg, data.train.num_rows, workers)
    items = [(f"{cfg.schedule.name} (this run)", cfg.schedule)]
    adapter = TypeAdapter(ScheduleConfig)
    for text in compare:
        raw = yaml.safe_load(text)
        raw = {"name": raw} if isinstance(raw, str) else raw
        try:
            other = adapter.validate_python(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"][1:]) or "name"
            raise ConfigError(f"--compare {text!r}: {where}: {err['msg']}") from None
        items.append((text, other))
    plot_schedules(items, cfg.optim.lr, steps.total, steps.optimizer_per_epoch, out)
    return Path(out)
