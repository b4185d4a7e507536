"""Planning a run on the driver: the data checks, resources, DeepSpeed JSON and step counts.

Everything that can be checked without Ray (data paths, schemas, labels, whether the model can
read the data) is checked in ``plan_data`` before Ray starts; ``plan_run`` then resolves what
the cluster gives. ``WorkerJob`` is all a worker is handed: a typed dataclass built here, so a
wrong field fails on the driver, not minutes into a run on a worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from raydeep.cluster.connect import ClusterInfo, describe
from raydeep.cluster.resources import ResourceShortage, ResourceWait, cpus_per_worker, wait_budget
from raydeep.config import Config
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.splits import ParquetSplit, open_split
from raydeep.errors import ConfigError, DataError
from raydeep.trainers.class_weights import class_weights, expected_sampled_counts, sampling_rates
from raydeep.trainers.engine import deepspeed_config, precision_of
from raydeep.trainers.models import build_model, count_parameters
from raydeep.trainers.models.hf import check_data_tokenizer
from raydeep.trainers.tasks import LabelFacts, Task, task_of


@dataclass
class DataPlan:
    train: ParquetSplit
    val: ParquetSplit
    feature: FeatureSpec
    labels: LabelFacts

    @property
    def class_counts(self) -> list[int] | None:
        return self.labels.class_counts

    @property
    def label_names(self) -> list[str] | None:
        return self.labels.label_names

    @property
    def targets(self) -> dict[str, float] | None:
        return self.labels.targets


def plan_data(cfg: Config) -> DataPlan:
    """Open and check both splits and scan the training labels, on the driver, once."""
    task = task_of(cfg)
    train = open_split(cfg.data.train, key="data.train", storage=cfg.storage, label_kind=task.label_kind)
    val = open_split(cfg.data.val, key="data.val", storage=cfg.storage, label_kind=task.label_kind)
    labels = task.check_labels(cfg, train, val)
    t, v = train.feature, val.feature
    # Token rows may be padded to another length in each split; pixels and numbers may not.
    if (t.column, t.kind) != (v.column, v.kind) or (t.kind != "tokens" and t.width != v.width):
        raise DataError(f"data.val: feature column {val.feature.column!r} ({val.feature.width} values per row) "
                        f"differs from data.train's {train.feature.column!r} ({train.feature.width})")
    check_model(cfg, train.feature)
    try:
        check_data_tokenizer(cfg.model, train.uri)  # a hf model's own tokenizer made the data
    except ValueError as exc:
        raise ConfigError(f"data.train: {exc}") from None
    return DataPlan(train, val, train.feature, labels)


def check_model(cfg: Config, feature: FeatureSpec) -> None:
    """Build the model on the meta device (shapes only, no memory), so a model that cannot read
    this data fails on the driver in a second, not on every worker after Ray has started."""
    try:
        with torch.device("meta"):
            build_model(cfg.model, feature)
    except ValueError as exc:
        raise ConfigError(f"model.kind = {cfg.model.kind!r} on data.train ({feature.kind} in "
                          f"{feature.column!r}): {exc}") from None


# ---------------------------------------------------------------------------------------------
# Step arithmetic: the one place it is done


def steps_per_epoch(num_rows: int, world_size: int, batch_size: int) -> int:
    """Micro-batches each worker runs per epoch: every worker gets ``num_rows // world_size`` rows
    (the remainder is dropped and reported)."""
    return math.ceil((num_rows // world_size) / batch_size)


@dataclass(frozen=True)
class Steps:
    per_epoch: int  # micro-batches per worker per epoch
    optimizer_per_epoch: int  # optimizer steps per epoch (after gradient accumulation)
    total: int  # optimizer steps in the run

    @classmethod
    def of(cls, cfg: Config, train_rows: int, world: int) -> "Steps":
        spe = steps_per_epoch(train_rows, world, cfg.data.batch_size)
        accum = cfg.optim.grad_accum
        return cls(spe, max(1, spe // accum), max(1, (spe * cfg.run.epochs) // accum))


# ---------------------------------------------------------------------------------------------


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
    steps: Steps
    sampling_rates: list[float] | None = None  # imbalance.sampling: copies per row of each class
    expected_counts: list[float] | None = None  # the exact expected class counts after sampling

    @property
    def task(self) -> Task:
        return task_of(self.cfg)

    @property
    def steps_per_epoch(self) -> int:
        return self.steps.per_epoch

    @property
    def total_steps(self) -> int:
        return self.steps.total

    def describe(self) -> str:
        cfg, d = self.cfg, self.data
        stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        gpu = f" + {cfg.scaling.gpus_per_worker:g} GPU" if self.use_gpu else ""
        extra = self.task.describe(d.labels, d.feature.width)
        precision = precision_of(self.ds_config)
        if self.use_gpu and cfg.deepspeed.precision == "auto":  # settled per GPU on the worker
            precision = "bf16 (auto: fp16 on GPUs older than compute capability 8.0)"
        return (
            f"[bold]{cfg.name}[/]: {d.train.num_rows:,} train rows ({d.train.num_rows % self.world} dropped to "
            f"equalize {self.world} shards), {d.val.num_rows:,} val rows; {self.world} workers x "
            f"{self.cpus_per_worker:g} CPU{gpu}, ZeRO-{stage}, {precision}; "
            f"{self.steps.per_epoch} steps/epoch x {cfg.run.epochs} epochs; "
            f"{cfg.data.batch_size * self.world * cfg.optim.grad_accum} samples per optimizer step"
            + (f"\n{cfg.imbalance.sampling} sampling: class counts {d.class_counts} -> expected "
               f"{[round(c, 1) for c in self.expected_counts]} per epoch" if self.expected_counts else "")
            + (f"\n{extra}" if extra else "")
        )


CPU_WORKERS = 2  # scaling.num_workers: auto without GPUs (data parallelism worth its overhead here)


def resolve_workers(requested: int | str, *, use_gpu: bool, gpus: float, gpus_per_worker: float) -> int:
    """``scaling.num_workers``: ``auto`` is one worker per ``gpus_per_worker`` GPUs of the cluster
    when the run uses GPUs, else ``CPU_WORKERS``; a number that does not fit the GPUs is refused."""
    if requested == "auto":
        if not use_gpu:
            return CPU_WORKERS
        if gpus < gpus_per_worker:
            raise ResourceShortage(f"scaling: a GPU worker needs {gpus_per_worker:g} GPU(s); the cluster has {gpus:g}",
                                   f"{gpus_per_worker:g} GPU(s); the cluster has {gpus:g}",
                                   ({"GPU": gpus_per_worker, "CPU": 1.0},))
        return int(gpus // gpus_per_worker)
    n = int(requested)
    if use_gpu and gpus < n * gpus_per_worker:
        raise ResourceShortage(f"scaling.num_workers = {n} GPU workers need {n * gpus_per_worker:g} GPUs; the "
                               f"cluster has {gpus:g} (num_workers: auto takes one per GPU)",
                               f"{n * gpus_per_worker:g} GPUs for {n} workers; the cluster has {gpus:g}",
                               ({"GPU": gpus_per_worker, "CPU": 1.0},) * n)
    return n


def plan_run(cfg: Config, info: ClusterInfo, data: DataPlan | None = None) -> RunPlan:
    """Resolve resources, DeepSpeed JSON and step counts for ``cfg`` on the cluster ``info``.

    ``data`` lets a sweep open and count the data once for all its trials. A cluster with too few
    GPUs or CPUs *now* is refused, unless an autoscaler could add them (``--wait-for-resources``, or
    an autoscaler the cluster reports): then the plan waits for them, with a countdown.
    """
    data = data or plan_data(cfg)
    wait: ResourceWait | None = None
    while True:
        try:
            return _plan_run(cfg, info, data)
        except ResourceShortage as short:
            if wait is None:
                if info.address is None:  # the local Ray this process started: nothing will join it
                    raise
                budget = wait_budget()
                if budget is None:
                    raise ResourceShortage(f"{short}; if an autoscaler can add it, use --wait-for-resources",
                                           short.need, short.bundles) from None
                wait = ResourceWait(*budget)
            info = wait.grown(short, info, lambda: describe(info.address))


def _plan_run(cfg: Config, info: ClusterInfo, data: DataPlan) -> RunPlan:
    weights = None if cfg.imbalance.weighting == "none" else class_weights(
        data.class_counts, cfg.imbalance.weighting, cfg.imbalance.beta, cfg.imbalance.zero_count)
    use_gpu = info.gpus > 0 if cfg.scaling.use_gpu == "auto" else bool(cfg.scaling.use_gpu)
    world = resolve_workers(cfg.scaling.num_workers, use_gpu=use_gpu, gpus=info.gpus,
                            gpus_per_worker=cfg.scaling.gpus_per_worker)
    cpw = cpus_per_worker(cfg.scaling.cpus_per_worker, num_workers=world,
                          cluster_cpus=info.cpus, max_node_cpus=info.max_node_cpus, use_gpu=use_gpu)
    device = "cuda" if use_gpu else "cpu"
    if not use_gpu and precision_of(deepspeed_config(cfg, world_size=world, device=device)) == "fp16":
        raise ConfigError("deepspeed.precision = 'fp16' needs GPUs (CPU workers have no fp16 kernels worth the "
                          "name); use bf16 or fp32 here, fp16 on a GPU without bf16")
    if not use_gpu and cfg.deepspeed.offload != "none":
        raise ConfigError(f"deepspeed.offload = {cfg.deepspeed.offload!r} moves GPU memory to the host; on CPU "
                          "workers everything already is there: remove it")
    rates = expected = None
    train_rows = data.train.num_rows
    if cfg.imbalance.sampling != "none":
        rates = sampling_rates(data.class_counts, cfg.imbalance.sampling)
        expected = expected_sampled_counts(data.class_counts, cfg.imbalance.sampling)
        train_rows = int(round(sum(expected)))
    steps = Steps.of(cfg, train_rows, world)
    if steps.per_epoch == 0:
        raise DataError(f"data.train: {data.train.num_rows} rows cannot feed {world} workers")
    return RunPlan(
        cfg=cfg, data=data, class_weights=weights, world=world, use_gpu=use_gpu, cpus_per_worker=cpw,
        device=device, ds_config=bounded_buckets(deepspeed_config(cfg, world_size=world, device=device), cfg, data.feature),
        steps=steps, sampling_rates=rates, expected_counts=expected,
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
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            n = count_parameters(build_model(cfg.model, feature))
    except ValueError:
        return ds_config  # the workers raise the model's own error
    zero["reduce_bucket_size"] = int(min(5e8, max(n // 8, MIN_BUCKET)))
    return ds_config


# ---------------------------------------------------------------------------------------------


@dataclass
class WorkerJob:
    """What every worker of one run is handed (``train_loop_per_worker``'s only argument)."""

    config: Config
    feature: FeatureSpec
    label_names: list[str] | None
    class_weights: list[float] | None
    device: str  # "cpu" or "cuda"
    ds_config: dict[str, Any]
    steps: Steps
    board: Any = None  # the ProgressBoard actor handle; None in Tune trials (Tune draws its own table)
    verbose: bool = False
    # split name -> what the workers cut their rows from: an InMemorySplit, or for a streamed training
    # split a StreamedSplit (a streamed validation split comes whole from Ray Train's dataset)
    splits: dict[str, Any] = field(default_factory=dict)
    sample_log: str | None = None  # RAYDEEP_SAMPLE_LOG: tests log the samples each rank trained on (loop.SampleLog)

    @property
    def zero_stage(self) -> int:
        return self.ds_config.get("zero_optimization", {}).get("stage", 0)


def worker_job(plan: RunPlan, *, board: Any = None, verbose: bool = False,
               splits: dict[str, Any] | None = None, sample_log: str | None = None) -> WorkerJob:
    return WorkerJob(config=plan.cfg, feature=plan.data.feature, label_names=plan.data.label_names,
                     class_weights=plan.class_weights, device=plan.device, ds_config=plan.ds_config,
                     steps=plan.steps, board=board, verbose=verbose, splits=splits or {}, sample_log=sample_log)
