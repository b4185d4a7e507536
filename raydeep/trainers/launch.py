"""Building the ``TorchTrainer`` of one run: what ``raydeep train`` fits and every Tune trial runs.

Splits that fit in memory go to the workers as object-store tables (``datasets/memory.py``),
with no Ray Data in the run; the rest stream through Ray Data (``datasets/streaming.py``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import ray
from ray.data import DataContext, ExecutionOptions
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
from ray.train import DataConfig as RayDataConfig
from ray.train import ScalingConfig as RayScalingConfig
from ray.train.torch import TorchTrainer

from raydeep.config import Config
from raydeep.datasets.memory import in_memory_split
from raydeep.datasets.streaming import StreamedSplit, streamed_split, to_ray_dataset
from raydeep.trainers.loop import train_loop_per_worker
from raydeep.trainers.plan import RunPlan, worker_job

SAMPLE_LOG_ENV = "RAYDEEP_SAMPLE_LOG"  # tests: a directory where each rank logs the samples it trained on

try:  # private: runs go on if it moves (see cluster_address_pinned)
    from ray.train.v2._internal import constants as _train_constants
except ImportError:
    _train_constants = None


def build_trainer(plan: RunPlan, *, name: str, storage_path: str, storage_filesystem=None, board=None,
                  callbacks: list | None = None, verbose: bool = False) -> TorchTrainer:
    """The TorchTrainer for one run: what ``raydeep train`` fits, and the body of every Tune trial."""
    cfg, data = plan.cfg, plan.data
    cache_bytes = int(cfg.data.materialize_max_mb * 2**20)
    held = {"train": in_memory_split(data.train, max_bytes=cache_bytes, seed=cfg.run.seed, rates=plan.sampling_rates),
            "val": in_memory_split(data.val, max_bytes=cache_bytes)}
    if held["train"] is None:  # each worker streams its own ranges of each epoch (datasets/epoch_order.py)
        held["train"] = train_split(plan)
    job = worker_job(plan, board=board, verbose=verbose, sample_log=os.environ.get(SAMPLE_LOG_ENV) or None,
                     splits={name: split for name, split in held.items() if split is not None})
    datasets = {}
    if held["val"] is None:
        datasets["val"] = to_ray_dataset(data.val, block_bytes=block_bytes(cfg))
    es = cfg.run.early_stopping
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=RayScalingConfig(
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
                # the epoch's own value: "best/<metric>" never worsens, so it ranked the latest first
                # (Ray always keeps the latest checkpoint too, for resuming)
                num_to_keep=cfg.run.num_to_keep, checkpoint_score_attribute=es.metric,
                checkpoint_score_order=es.mode),
            callbacks=callbacks,
        ),
        datasets=datasets or None,
        # Validation is not split (trainers/loop.py says why); training is never a Ray Train dataset.
        dataset_config=RayDataConfig(datasets_to_split=[], execution_options=ingest_options(cfg.data.read_ahead_mb)),
    )


@contextlib.contextmanager
def cluster_address_pinned():
    """Make Train's PlacementGroupCleaner find this cluster.

    When a run ends abnormally (Tune stops a trial early and kills its actor, or Ctrl-C aborts it),
    the workers' placement group can outlive the Train controller until Train's detached
    PlacementGroupCleaner notices the dead controller. The cleaner looks the controller up
    through the state API with no address, which resolves RAY_ADDRESS, else the one Ray
    instance on the host: with several instances on one host (shared CI machines) and no
    RAY_ADDRESS, its monitor thread dies with "Found multiple active Ray instances", the
    group leaks, and later trials wait for CPUs forever. Train passes the variables in
    ENV_VARS_TO_PROPAGATE from the trial to its controller, whose runtime env the cleaner
    inherits: add this cluster's address there. (tests/conftest.py gives its test heads
    RAY_ADDRESS for the same reason; this covers clusters started without it, and the embedded
    local Ray of ``raydeep train``, whose raylet the driver started before RAY_ADDRESS was set.)
    Only while the fit runs: a driver that later starts another local Ray must not find this
    one's address in RAY_ADDRESS.
    """
    before = os.environ.get("RAY_ADDRESS")
    try:
        _train_constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except AttributeError:  # the private module moved (None) or changed
        pass
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_ADDRESS", None)


def ingest_options(read_ahead_mb: float | None) -> ExecutionOptions | None:
    """Ray Data's options for a run's ingest: Train's defaults plus ``data.read_ahead_mb``, which
    bounds what Ray Data reads ahead into the object store (benchmarks/BENCHMARKS.md, "Worker
    memory as the data grows"). ``None``: Train's default.
    """
    if read_ahead_mb is None:
        return None  # DataConfig's own default_ingest_options()
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


def train_split(plan: RunPlan) -> StreamedSplit:
    """The streamed training split: each worker reads its own ranges of each epoch as its own Ray Data
    execution, with its share of ``data.read_ahead_mb``."""
    read_ahead = plan.cfg.data.read_ahead_mb
    return streamed_split(plan.data.train, seed=plan.cfg.run.seed, block_bytes=block_bytes(plan.cfg),
                          read_ahead_bytes=int(read_ahead * 2**20 / plan.world) if read_ahead else None,
                          rates=plan.sampling_rates)
