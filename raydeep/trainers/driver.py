"""Driver side of ``raydeep train``: check the data, plan resources, build the TorchTrainer, follow it.

Order matters: everything that can be checked without Ray (config, data paths, schemas, labels)
is checked before Ray starts, so a bad run fails in a second on a laptop instead of minutes
into a cluster job.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from raydeep.config import Config, to_yaml
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.sources import (
    ParquetSplit,
    in_memory_split,
    label_histogram,
    open_split,
    target_summary,
    to_ray_dataset,
)
from raydeep.datasets.storage import resolve_storage
from raydeep.errors import ConfigError, DataError, RaydeepError
from raydeep.fileio import atomic_write_text
from raydeep.trainers.class_weights import class_weights, expected_sampled_counts, sampling_rates
from raydeep.trainers.engine import precision_of

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


@dataclass
class DataPlan:
    train: ParquetSplit
    val: ParquetSplit
    feature: FeatureSpec
    class_counts: list[int] | None  # None for model.task: regression
    label_names: list[str] | None
    targets: dict[str, float] | None = None  # regression: the training targets' rows, mean, std, min, max


def plan_data(cfg: Config) -> DataPlan:
    """Open and check both splits and count the training labels, on the driver, once."""
    if cfg.model.task == "regression":
        return plan_regression_data(cfg)
    train = open_split(cfg.data.train, key="data.train", storage=cfg.storage)
    val = open_split(cfg.data.val, key="data.val", storage=cfg.storage)
    k = cfg.model.num_classes
    for split in (train, val):
        if split.num_classes is not None and split.num_classes != k:
            raise ConfigError(
                f"model.num_classes = {k}, but {split.key} ({split.uri}) has {split.num_classes} classes "
                f"in its manifest; set model.num_classes: {split.num_classes}"
            )
    if (train.feature.column, train.feature.kind) != (val.feature.column, val.feature.kind):
        raise DataError(f"data.val: feature column {val.feature.column!r} differs from data.train's "
                        f"{train.feature.column!r}")
    check_model(cfg, train.feature)
    counts = label_histogram(train, k)
    label_histogram(val, k)  # range check: a bad validation label must fail here, not on a worker
    names = train.label_names or [str(i) for i in range(k)]
    return DataPlan(train, val, train.feature, counts, names)


def plan_regression_data(cfg: Config) -> DataPlan:
    """``model.task: regression``: numeric targets in ``label``, checked for nulls and NaN/inf."""
    train = open_split(cfg.data.train, key="data.train", storage=cfg.storage, label_kind="value")
    val = open_split(cfg.data.val, key="data.val", storage=cfg.storage, label_kind="value")
    if (train.feature.column, train.feature.kind, train.feature.width) != (
            val.feature.column, val.feature.kind, val.feature.width):
        raise DataError(f"data.val: feature column {val.feature.column!r} ({val.feature.width} values per row) "
                        f"differs from data.train's {train.feature.column!r} ({train.feature.width})")
    check_model(cfg, train.feature)
    targets = target_summary(train)
    target_summary(val)  # a null or NaN validation target must fail here, not on a worker
    return DataPlan(train, val, train.feature, None, None, targets)


def check_model(cfg: Config, feature: FeatureSpec) -> None:
    """Build the model on the meta device (shapes only, no memory), so a model that cannot read
    this data fails on the driver in a second, not on every worker after Ray has started."""
    import torch

    from raydeep.trainers.models import build_model

    try:
        with torch.device("meta"):
            build_model(cfg.model, feature)
    except ValueError as exc:
        raise ConfigError(f"model.kind = {cfg.model.kind!r} on data.train ({feature.kind} in "
                          f"{feature.column!r}): {exc}") from None


def new_run_dir(cfg: Config, root: str = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.name}-{stamp}"


@dataclass
class RunPlan:
    """Everything resolved for one run before any worker starts (also one Tune trial)."""

    cfg: Config
    data: DataPlan
    class_weights: list[float] | None
    world: int
    use_gpu: bool
    cpus_per_worker: float
    device: str
    ds_config: dict[str, Any]
    steps_per_epoch: int
    total_steps: int
    sampling_rates: list[float] | None = None  # imbalance.sampling: copies per row of each class
    expected_counts: list[float] | None = None  # the exact expected class counts after sampling

    def describe(self) -> str:
        cfg, d = self.cfg, self.data
        stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        gpu = f" + {cfg.scaling.gpus_per_worker:g} GPU" if self.use_gpu else ""
        return (
            f"[bold]{cfg.name}[/]: {d.train.num_rows:,} train rows ({d.train.num_rows % self.world} dropped to "
            f"equalize {self.world} shards), {d.val.num_rows:,} val rows; {self.world} workers x "
            f"{self.cpus_per_worker:g} CPU{gpu}, ZeRO-{stage}, {precision_of(self.ds_config)}; "
            f"{self.steps_per_epoch} steps/epoch x {cfg.run.epochs} epochs; "
            f"{cfg.data.batch_size * self.world * cfg.optim.grad_accum} samples per optimizer step"
            + (f"\n{cfg.imbalance.sampling} sampling: class counts {d.class_counts} -> expected "
               f"{[round(c, 1) for c in self.expected_counts]} per epoch" if self.expected_counts else "")
            + (f"\nregression on {d.feature.width} feature(s); training targets: mean {d.targets['mean']:.4g}, "
               f"std {d.targets['std']:.4g} (about the rmse of always predicting the mean), range "
               f"[{d.targets['min']:.4g}, {d.targets['max']:.4g}]" if d.targets else "")
        )


def plan_run(cfg: Config, info, data: DataPlan | None = None) -> RunPlan:
    """Resolve resources, DeepSpeed JSON and step counts for ``cfg`` on the cluster ``info``.

    ``data`` lets a sweep open and count the data once for all its trials.
    """
    from raydeep.cluster.resources import cpus_per_worker
    from raydeep.trainers.engine import deepspeed_config
    from raydeep.trainers.loop import steps_per_epoch

    data = data or plan_data(cfg)
    weights = None if cfg.imbalance.weighting == "none" else class_weights(
        data.class_counts, cfg.imbalance.weighting, cfg.imbalance.beta, cfg.imbalance.zero_count)
    use_gpu = info.gpus > 0 if cfg.scaling.use_gpu == "auto" else bool(cfg.scaling.use_gpu)
    if use_gpu and info.gpus < cfg.scaling.num_workers * cfg.scaling.gpus_per_worker:
        raise RaydeepError(f"scaling: {cfg.scaling.num_workers} GPU workers need "
                           f"{cfg.scaling.num_workers * cfg.scaling.gpus_per_worker:g} GPUs; the cluster has {info.gpus:g}")
    cpw = cpus_per_worker(cfg.scaling.cpus_per_worker, num_workers=cfg.scaling.num_workers,
                          cluster_cpus=info.cpus, max_node_cpus=info.max_node_cpus, use_gpu=use_gpu)
    world = cfg.scaling.num_workers
    device = "cuda" if use_gpu else "cpu"
    rates = expected = None
    train_rows = data.train.num_rows
    if cfg.imbalance.sampling != "none":
        rates = sampling_rates(data.class_counts, cfg.imbalance.sampling)
        expected = expected_sampled_counts(data.class_counts, cfg.imbalance.sampling)
        train_rows = int(round(sum(expected)))
    spe = steps_per_epoch(train_rows, world, cfg.data.batch_size)
    if spe == 0:
        raise DataError(f"data.train: {data.train.num_rows} rows cannot feed {world} workers")
    return RunPlan(
        cfg=cfg, data=data, class_weights=weights, world=world, use_gpu=use_gpu, cpus_per_worker=cpw,
        device=device, ds_config=bounded_buckets(deepspeed_config(cfg, world_size=world, device=device), cfg, data.feature),
        steps_per_epoch=spe, total_steps=max(1, (spe * cfg.run.epochs) // cfg.optim.grad_accum),
        sampling_rates=rates, expected_counts=expected,
    )


# DeepSpeed's gradient-reduction bucket holds 5e8 elements whatever the model. ZeRO-3 allocates
# it on every rank when the engine is built (1.9 GB in fp32), ZeRO-1/2 at every backward:
# measured for a 23M-parameter model under ZeRO-3, 2.1 GB of model states per worker instead of
# 0.23 GB (benchmarks/memory.py). An eighth of the model keeps a few reductions per step.
MIN_BUCKET = 2**22  # elements: 16 MiB in fp32; small models keep one bucket, as before


def bounded_buckets(ds_config: dict[str, Any], cfg: Config, feature: FeatureSpec) -> dict[str, Any]:
    """Size ``reduce_bucket_size`` to the model unless the user's DeepSpeed file sets it."""
    zero = ds_config.get("zero_optimization", {})
    if cfg.deepspeed.config_file or zero.get("stage", 0) == 0 or "reduce_bucket_size" in zero:
        return ds_config
    import torch

    from raydeep.trainers.models import build_model, count_parameters

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            n = count_parameters(build_model(cfg.model, feature))
    except ValueError:
        return ds_config  # the workers raise the model's own error
    zero["reduce_bucket_size"] = int(min(5e8, max(n // 8, MIN_BUCKET)))
    return ds_config


def build_trainer(plan: RunPlan, *, name: str, storage_path: str, storage_filesystem=None, board=None,
                  callbacks: list | None = None, verbose: bool = False):
    """The TorchTrainer for one run: what ``raydeep train`` fits, and the body of every Tune trial."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydeep.trainers.loop import train_loop_per_worker

    cfg, data = plan.cfg, plan.data
    job = {
        "config": cfg.model_dump(mode="json"),
        "feature": data.feature.to_dict(),
        "label_names": data.label_names,
        "class_weights": plan.class_weights,
        "device": plan.device,
        "ds_config": plan.ds_config,
        "steps_per_epoch": plan.steps_per_epoch,  # micro-batches per worker per epoch
        "optimizer_steps_per_epoch": max(1, plan.steps_per_epoch // cfg.optim.grad_accum),
        "total_steps": plan.total_steps,  # optimizer steps in the run
        "board": board,
        "verbose": verbose,
    }
    # Splits that fit in memory go to the workers as object-store tables (datasets/memory.py), with
    # no Ray Data in the run; the rest stream through Ray Data. Resampling is a Ray Data plan.
    cache_bytes = int(cfg.data.materialize_max_mb * 2**20)
    held = {"train": None if plan.sampling_rates else in_memory_split(data.train, max_bytes=cache_bytes,
                                                                      seed=cfg.run.seed),
            "val": in_memory_split(data.val, max_bytes=cache_bytes)}
    job["in_memory"] = {name: split for name, split in held.items() if split is not None}
    datasets = {}
    if held["train"] is None:
        datasets["train"] = train_dataset(plan, cache_bytes)
    if held["val"] is None:
        datasets["val"] = to_ray_dataset(data.val, materialize_max_bytes=cache_bytes, block_bytes=block_bytes(cfg))
    es = cfg.run.early_stopping
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(
            num_workers=plan.world, use_gpu=plan.use_gpu,
            resources_per_worker={"CPU": plan.cpus_per_worker,
                                  **({"GPU": cfg.scaling.gpus_per_worker} if plan.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.num_to_keep, checkpoint_score_attribute="best/" + es.metric,
                checkpoint_score_order=es.mode),
            callbacks=callbacks,
        ),
        datasets=datasets or None,
        # Only the training set is split; see trainers/loop.py for why validation is not.
        dataset_config=DataConfig(datasets_to_split=[n for n in ("train",) if n in datasets],
                                  execution_options=ingest_options(cfg.data.read_ahead_mb)),
    )


def ingest_options(read_ahead_mb: float | None):
    """Ray Data's options for a run's ingest: Train's defaults plus ``data.read_ahead_mb``.

    Left alone, Ray Data reads ahead into the object store up to its budget (half the store):
    1.7-1.8 GB on this 7 GB store for a 10M-row split, and a worker maps every block it reads,
    so its RSS grew with the data until that budget (1M -> 10M rows: 1.3 -> 2.5 GB). With 512
    MiB (and list columns to the workers; see to_ray_dataset) the store peaked at 0.6 GB and the
    worker at 1.3 GB, and the epoch was not slower (benchmarks/BENCHMARKS.md, "Worker memory as
    the data grows"). ``None``: Train's default.
    """
    if read_ahead_mb is None:
        return None  # DataConfig's own default_ingest_options()
    from ray.data import DataContext, ExecutionOptions

    # What DataConfig.default_ingest_options() carries over from the driver's context, less the
    # deprecated exclude_resources (zero unless set; reading it prints a deprecation warning).
    current = DataContext.get_current().execution_options
    return ExecutionOptions(
        resource_limits=current.resource_limits.copy(object_store_memory=int(read_ahead_mb * 2**20)),
        preserve_order=current.preserve_order,
        verbose_progress=current.verbose_progress,
    )


def block_bytes(cfg: Config) -> int | None:
    """``data.block_mb`` in bytes (None: Ray Data's default block size)."""
    return int(cfg.data.block_mb * 2**20) if cfg.data.block_mb else None


def train_dataset(plan: RunPlan, cache_bytes: int):
    from raydeep.datasets.resample import resample

    ds = to_ray_dataset(plan.data.train, shuffle_seed=plan.cfg.run.seed, materialize_max_bytes=cache_bytes,
                        block_bytes=block_bytes(plan.cfg))
    return resample(ds, plan.sampling_rates, plan.cfg.run.seed) if plan.sampling_rates else ds


def best_checkpoint(result, metric: str, mode: str) -> str | None:
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda cm: cm[1][metric])[0].path


def train(cfg: Config, *, run_dir: str | os.PathLike | None = None, address: str | None = None,
          resume: bool = False, verbose: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run one training job end to end; returns the summary written to ``summary.json``."""
    import ray.data

    from raydeep.cluster.connect import connect
    from raydeep.trainers.progress import ProgressBoard

    console = console or Console()
    t_start = time.time()
    marks = {"process_start": process_start_time(), "train_entry": t_start}  # start-up timeline
    data = plan_data(cfg)
    marks["data_checked"] = time.time()
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    if (run_dir / SUMMARY).exists() and not resume:
        raise ConfigError(f"--run-dir {run_dir}: holds a finished run; pick a new directory or use --resume")

    if cfg.run.storage:  # checked before Ray starts: a missing bucket fails in a second
        storage_path, storage_fs = resolve_storage(cfg.run.storage, cfg.storage, key="run.storage")
    else:  # Ray Train's run folder is <storage>/<name>: by default the run directory itself
        storage_path, storage_fs = str(run_dir.resolve().parent), None
    info = connect(address, verbose=verbose)
    marks["ray_ready"] = time.time()
    plan = plan_run(cfg, info, data)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    atomic_write_text(run_dir / "deepspeed.json", json.dumps(plan.ds_config, indent=2) + "\n")
    console.print(plan.describe())
    console.print(f"run dir: {run_dir}" + (f"   dashboard: {info.dashboard_url}" if info.dashboard_url else ""))

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    board = ProgressBoard.remote()
    trainer = build_trainer(plan, name=run_dir.resolve().name, storage_path=storage_path,
                            storage_filesystem=storage_fs, board=board, verbose=verbose)
    marks["fit_start"] = time.time()
    result = follow(trainer, board, run_dir, cfg.run.epochs, console)
    marks["fit_done"] = time.time()

    final = result.return_value or {}
    es = cfg.run.early_stopping
    summary = {
        "name": cfg.name,
        "run_dir": str(run_dir),
        "final": {k: v for k, v in final.items() if k != "val/confusion"},
        "best": {"metric": es.metric, "value": final.get("best/" + es.metric),
                 "checkpoint": best_checkpoint(result, "best/" + es.metric, es.mode)},
        "latest_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "confusion": final.get("val/confusion"),
        "label_names": data.label_names,
        "class_counts": data.class_counts,
        "task": cfg.model.task,
        "wall_time_s": time.time() - t_start,
        "startup": startup_timeline(marks, board),
    }
    if cfg.model.task == "regression":
        summary["targets"] = data.targets
    if cfg.model.kind == "linear":
        summary["linear"] = linear_coefficients(result, plan, console)
    print_final(console, summary)
    write_plots(run_dir, summary, plan, console)
    atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")  # last: marks the run complete
    return summary


def process_start_time() -> float | None:
    """When this process started (``time.time()`` clock), so start-up counts Python's imports."""
    try:
        import psutil  # a Ray dependency
    except ImportError:
        return None
    return psutil.Process().create_time()


# (name, from mark, to mark): the start-up phases in order; worker marks come from rank 0
STARTUP_PHASES = [
    ("python_imports", "process_start", "train_entry"),  # interpreter, raydeep, Ray's driver modules
    ("data_check", "train_entry", "data_checked"),  # open_split footers, label histogram (data generation)
    ("ray_start", "data_checked", "ray_ready"),  # ray.init of the embedded local Ray, or connect
    ("datasets_and_trainer", "ray_ready", "fit_start"),  # plan, read/materialize small splits, TorchTrainer
    ("worker_group_start", "fit_start", "loop_entry"),  # controller, worker actors, torch process group
    ("deepspeed_init", "loop_entry", "engine_ready"),  # model build, deepspeed.initialize (comm op build)
    ("first_batch", "engine_ready", "first_batch"),  # restore, dataset execution start, first batch
    ("first_step", "first_batch", "first_step"),  # forward, backward, the first optimizer step
]


def startup_timeline(marks: dict[str, float | None], board) -> dict[str, Any]:
    """Seconds per start-up phase and from process start to the first optimizer step.

    Worker timestamps are ``time.time()`` on rank 0's machine: on one machine the phases are
    exact; across machines they are off by the clocks' skew.
    """
    import ray

    try:
        marks = {**marks, **ray.get(board.startup.remote(), timeout=10)}
    except Exception:  # the timeline must never fail a finished run
        pass
    phases = {name: round(marks[b] - marks[a], 3) for name, a, b in STARTUP_PHASES
              if marks.get(a) is not None and marks.get(b) is not None}
    first = marks.get("first_step")
    origin = marks.get("process_start") or marks["train_entry"]
    return {"phases_s": phases, "to_first_step_s": round(first - origin, 3) if first else None,
            "marks": marks}


def follow(trainer, board, run_dir: Path, epochs: int, console: Console):
    """Fit in a thread; meanwhile draw progress from the board and keep metrics.jsonl current."""
    import ray

    from raydeep.trainers.console import epoch_line, new_progress

    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the main thread
            box["error"] = exc

    thread = threading.Thread(target=fit, name="raydeep-fit", daemon=True)
    thread.start()
    by_epoch: dict[int, dict] = {}
    if (run_dir / METRICS).exists():  # a resumed run keeps the epochs it already has
        for line in (run_dir / METRICS).read_text().splitlines():
            m = json.loads(line)
            by_epoch[m["epoch"]] = m
    seen_epochs = seen_events = 0
    with new_progress(console) as progress:
        task = None
        while True:
            alive = thread.is_alive()
            try:
                live, new_epochs, events = ray.get(board.poll.remote(seen_epochs, seen_events), timeout=10)
            except Exception:
                live, new_epochs, events = {}, [], []
            seen_epochs += len(new_epochs)
            seen_events += len(events)
            for text in events:
                progress.console.print(f"[yellow]{text}")
            for m in new_epochs:
                by_epoch[m["epoch"]] = {k: v for k, v in m.items() if k != "val/confusion"}
                progress.console.print(epoch_line(m, epochs), soft_wrap=True)
            if new_epochs:
                lines = [json.dumps(by_epoch[e]) for e in sorted(by_epoch)]
                atomic_write_text(run_dir / METRICS, "\n".join(lines) + "\n")
            if live:
                desc = f"{live['epoch'] + 1}/{epochs}"
                rate = f"{live['samples_per_s']:,.0f} samples/s"
                if task is None:
                    task = progress.add_task("train", total=live["steps"], epoch=desc, rate=rate)
                progress.update(task, completed=live["step"], total=live["steps"], epoch=desc, rate=rate)
            if not alive:
                break
            time.sleep(0.25)
    thread.join()
    if "error" in box:
        raise training_error(box["error"]) from box["error"]
    return box["result"]


def training_error(exc: BaseException) -> BaseException:
    """One line for a failed fit: the first worker's own error, not Ray's wrapper."""
    worker_errors = getattr(exc, "worker_failures", None) or {}
    for rank, err in sorted(worker_errors.items()):
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, RaydeepError):
            return cause
        return RaydeepError(f"training failed on worker rank {rank}: {type(cause).__name__}: "
                            f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}")
    if isinstance(exc, (RaydeepError, KeyboardInterrupt)):
        return exc
    return RaydeepError(f"training failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")


def linear_coefficients(result, plan: RunPlan, console: Console) -> dict[str, Any] | None:
    """A ``linear`` model's θ₀ (intercept) and θ (weights) from the run's latest checkpoint."""
    if result.checkpoint is None:
        return None
    try:
        from raydeep.trainers.checkpoints import load_state_dict

        stage = plan.ds_config.get("zero_optimization", {}).get("stage", 0)
        with result.checkpoint.as_directory() as d:
            state = load_state_dict(Path(d), stage)
        weight, bias = state["linear.weight"].double(), state["linear.bias"].double()
    except Exception as exc:  # reading the coefficients must never fail a finished run
        console.print(f"[yellow]could not read the linear model's coefficients: {exc}")
        return None
    if plan.cfg.model.task == "regression":
        return {"intercept": float(bias[0]), "weights": weight[0].tolist()}
    return {"intercept": bias.tolist(), "weights": weight.tolist()}


def print_final(console: Console, summary: dict) -> None:
    """The final table: validation metrics per class, from the last epoch's confusion matrix, or a
    regression run's error metrics (and a linear model's coefficients)."""
    from raydeep.trainers.console import metrics_table, regression_table
    from raydeep.trainers.metrics import classification_metrics

    final = summary["final"]
    if not final:
        return
    title = f"validation after epoch {final['epoch'] + 1} (step {final['global_step']})"
    if summary.get("task") == "regression":
        console.print(regression_table(final, summary.get("targets"), summary.get("linear"), title))
    elif summary.get("confusion"):
        import numpy as np

        m = classification_metrics(np.asarray(summary["confusion"]), summary["label_names"])
        console.print(metrics_table(m, summary["label_names"], title))
    else:
        return
    best = summary["best"]
    if best["value"] is not None:
        console.print(f"best {best['metric']}: {best['value']:.4f}   checkpoint: {best['checkpoint']}")
    console.print(f"wall time {summary['wall_time_s']:.1f} s   run dir: {summary['run_dir']}")


def write_plots(run_dir: Path, summary: dict, plan: RunPlan, console: Console) -> None:
    from raydeep.trainers.plots import plot_confusion, plot_learning_curves
    from raydeep.trainers.schedules import plot_schedules

    try:
        sched = plan.cfg.schedule
        plot_schedules([(sched.name, sched)], plan.cfg.optim.lr, plan.total_steps,
                       max(1, plan.steps_per_epoch // plan.cfg.optim.grad_accum), str(run_dir / "lr_schedule.png"))
        lines = (run_dir / METRICS).read_text().splitlines()
        plot_learning_curves([json.loads(x) for x in lines], run_dir / "learning_curves.png")
        if summary.get("confusion"):
            plot_confusion(summary["confusion"], summary["label_names"], run_dir / "confusion.png")
    except Exception as exc:  # a plot must never fail a finished training run
        console.print(f"[yellow]could not draw plots: {exc}")




def plot_schedule_command(cfg: Config, out: str, compare: list[str]) -> Path:
    """``raydeep schedules plot``: the run's LR schedule over its real step count, and others beside it.

    The step count comes from the training split's row count, the workers, the batch size
    and the epochs, exactly as the run computes it (no Ray needed).
    """
    import yaml
    from pydantic import TypeAdapter, ValidationError

    from raydeep.trainers.loop import steps_per_epoch
    from raydeep.trainers.schedules import ScheduleConfig, plot_schedules

    data = plan_data(cfg)
    spe = steps_per_epoch(data.train.num_rows, cfg.scaling.num_workers, cfg.data.batch_size)
    total = max(1, (spe * cfg.run.epochs) // cfg.optim.grad_accum)
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
    plot_schedules(items, cfg.optim.lr, total, max(spe // max(cfg.optim.grad_accum, 1), 1), out)
    return Path(out)
