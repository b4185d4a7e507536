"""``raydeep tune``: runs a sweep of the same training ``raydeep train`` runs, one Ray Tune
trial per parameter set, then writes the leaderboard, ``best.yaml`` and ``sweep.png``.

Each trial is the multi-worker DeepSpeed ``TorchTrainer`` of ``driver.build_trainer``. Ray
2.60's ``Tuner`` refuses a Train V2 trainer, so each trial is a small Tune *function* that
applies its parameters to the base config, plans the run against data opened once on the
driver, and fits:

* ``asha`` and ``none``: one fit per trial; ``TuneReportCallback`` turns every epoch's
  ``ray.train.report`` into one Tune iteration, so ASHA can stop a trial after any epoch. The
  Train run is named after the trial, so a trial restarted by ``--resume`` continues from its
  own latest checkpoint.
* ``pbt``: one short fit per Tune iteration ("segment", ``perturbation_interval`` epochs). A
  segment's Train run folder (its checkpoints and snapshot) is handed to Tune as the trial's
  checkpoint; the next segment, of this trial or of a trial that clones it, copies that folder
  to a new Train run name, which Train V2 resumes: same global step, same optimizer state.

Where things go: the sweep directory (``runs/<name>-sweep-<time>`` or ``--run-dir``) is the
driver's: ``config.yaml``, ``trials.jsonl`` and ``trials/<id>.yaml`` (written by a Tune callback
on the driver, so trials on other nodes need no shared filesystem), the leaderboard,
``best.yaml``, ``sweep.png``. Tune's experiment state and the trials' Train runs go to the
sweep's *storage*: the same directory by default, or ``<run.storage>/<sweep name>/`` when
``run.storage`` is ``s3://...``. Trials touch that storage only through a pyarrow filesystem.

The ``tune:`` section and the search space live in ``sweep_space`` (pure). This module is
imported by ``raydeep.config`` for ``TuneConfig``, so it too keeps torch, ray and
``raydeep.config`` out of its module level.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raydeep.errors import ConfigError, RaydeepError
from raydeep.trainers.sweep_space import (  # noqa: F401  (TuneConfig: re-exported for raydeep.config)
    PER_CLASS,
    SELECTORS,
    TRIAL_CPU,
    Distribution,
    SchedulerConfig,
    TuneConfig,
    apply_params,
    base_raw,
    canonical,
    check_space,
    check_trials,
    initial_trials,
    max_concurrent,
    pbt_mutable,
    representative,
    trial_config,
    trial_resources,
    why_not_applied,
)

if TYPE_CHECKING:  # pragma: no cover
    from raydeep.cluster.connect import ClusterInfo
    from raydeep.config import Config
    from raydeep.trainers.driver import DataPlan, RunPlan


# ---------------------------------------------------------------------------------------------
# The trial (runs in a Tune trial actor)


@dataclass
class TrialContext:
    """What every trial needs, planned once on the driver and shipped with tune.with_parameters."""

    base: dict
    space: dict[str, Distribution]
    scheduler: SchedulerConfig
    metric: str
    info: Any  # ClusterInfo, with the trial's token CPU taken out
    data: Any  # DataPlan: the data opened and counted once
    trials: "TrialStorage"  # where the trials' Train runs go (local or S3)


def trial_params(config: dict) -> dict[str, Any]:
    return dict(config.get("params") or {})


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable: one trial, the same TorchTrainer ``raydeep train`` fits."""
    import ray.data
    import ray.tune

    from raydeep.trainers.driver import plan_run

    ray.data.DataContext.get_current().enable_progress_bars = False
    pin_cluster_address()
    trial_id = ray.tune.get_context().get_trial_id()
    params = trial_params(config)
    cfg, _ = trial_config(ctx.base, ctx.space, params)
    plan = plan_run(cfg, ctx.info, ctx.data)
    if ctx.scheduler.name == "pbt":
        run_segments(plan, ctx, trial_id)
    else:
        from raydeep.trainers.driver import build_trainer
        from ray.tune.integration.ray_train import TuneReportCallback

        # Named after the trial: a trial restarted by --resume continues its own Train run.
        build_trainer(plan, name=trial_id, storage_path=ctx.trials.root, storage_filesystem=ctx.trials.fs,
                      callbacks=[TuneReportCallback()]).fit()


def pin_cluster_address() -> None:
    """Make Train's PlacementGroupCleaner find this cluster.

    When Tune stops a trial early it kills the trial's actor, and with it the Train controller;
    the workers' placement group outlives them (it belongs to the job) until Train's detached
    PlacementGroupCleaner notices the dead controller. The cleaner looks the controller up
    through the state API with no address, which resolves RAY_ADDRESS, else the one Ray
    instance on the host: with several instances on one host (shared CI machines) and no
    RAY_ADDRESS, its monitor thread dies with "Found multiple active Ray instances", the
    group leaks, and later trials wait for CPUs forever. Train passes the variables in
    ENV_VARS_TO_PROPAGATE from the trial to its controller, whose runtime env the cleaner
    inherits: add this cluster's address there. (tests/conftest.py gives its test heads
    RAY_ADDRESS for the same reason; this covers clusters started without it.)
    """
    import ray

    try:
        from ray.train.v2._internal import constants  # private: keep trials running if it moves

        constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
    except (ImportError, AttributeError):
        return
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


SEGMENT_FILE = "segment.json"


@dataclass
class TrialStorage:
    """Where the trials' Train runs live: ``root`` is a path in ``fs``, a pyarrow filesystem
    (``None``: this machine's, for a local sweep). Every file operation a trial makes on it
    goes through ``fs``, so a sweep on ``s3://`` runs the same code as a local one."""

    root: str
    fs: Any = None  # pyarrow.fs.FileSystem | None

    @property
    def filesystem(self):
        import pyarrow.fs as pafs

        return self.fs if self.fs is not None else pafs.LocalFileSystem()

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def segment_folders(self, trial_id: str) -> list[str]:
        """This trial's segment folders (``<trial>-e<epochs>``), left by a pause or restart."""
        import pyarrow.fs as pafs

        infos = self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.path for i in infos
                      if i.type == pafs.FileType.Directory and i.base_name.startswith(f"{trial_id}-e"))

    def remove(self, path: str) -> None:
        self.filesystem.delete_dir(path)

    def copy_in(self, source: str, source_fs, dest: str) -> None:
        """Copy the folder ``source`` (on ``source_fs``: Tune's checkpoint) to ``dest`` here."""
        import pyarrow.fs as pafs

        self.filesystem.create_dir(dest)
        pafs.copy_files(source, dest, source_filesystem=source_fs, destination_filesystem=self.filesystem,
                        chunk_size=64 * 1024 * 1024)

    def move(self, source: str, dest: str) -> None:
        """A rename on a local filesystem; on S3 (no renames) a copy of every object, then the
        delete (fsspec's recursive ``mv`` trips over the folder's own marker object)."""
        import pyarrow.fs as pafs

        if self.fs is None:
            self.filesystem.move(source, dest)
            return
        pafs.copy_files(source, dest, source_filesystem=self.fs, destination_filesystem=self.fs,
                        chunk_size=64 * 1024 * 1024)
        self.fs.delete_dir(source)

    def write_json(self, path: str, obj: Any) -> None:
        with self.filesystem.open_output_stream(path) as f:
            f.write(json.dumps(obj).encode())


def read_segment(checkpoint) -> dict[str, Any]:
    """``segment.json`` of a Tune checkpoint, on whatever filesystem Tune keeps it."""
    with checkpoint.filesystem.open_input_stream(f"{checkpoint.path.rstrip('/')}/{SEGMENT_FILE}") as f:
        return json.loads(f.read())


def run_segments(plan: "RunPlan", ctx: TrialContext, trial_id: str) -> None:
    """PBT: one short fit per Tune iteration, each continuing the Train run it was handed.

    A segment's Train run folder, plus ``segment.json`` (whose trial, how far), is the Tune
    checkpoint. The trial's next segment renames the folder to its own run name and Train
    resumes it; a trial restarted or cloned from a checkpoint copies Tune's copy first.
    """
    import ray.tune

    from raydeep.trainers.driver import build_trainer

    store = ctx.trials
    for stale in store.segment_folders(trial_id):  # this trial's folders from before a pause or restart
        store.remove(stale)
    total = plan.cfg.run.epochs
    done, carry, cloned_from = 0, None, None  # carry: the Train run folder the next segment continues
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        meta = read_segment(checkpoint)
        done = int(meta["epochs_done"])
        carry = store.path(f"{trial_id}-e{done:03d}")
        store.copy_in(checkpoint.path, checkpoint.filesystem, carry)
        if meta["trial_id"] != trial_id:
            cloned_from = meta["trial_id"]
    while done < total:
        end = min(done + ctx.scheduler.perturbation_interval, total)
        run_dir = store.path(f"{trial_id}-e{end:03d}")
        if carry is not None:
            store.move(carry, run_dir)  # Train V2 resumes a run whose folder holds a snapshot
        seg_cfg = plan.cfg.model_copy(update={"run": plan.cfg.run.model_copy(update={"epochs": end})})
        seg_plan = replace(plan, cfg=seg_cfg)  # total_steps stays the whole run's: one LR schedule
        final = build_trainer(seg_plan, name=run_dir.rsplit("/", 1)[1], storage_path=store.root,
                              storage_filesystem=store.fs).fit().return_value or {}
        store.write_json(f"{run_dir}/{SEGMENT_FILE}",
                         {"trial_id": trial_id, "epochs_done": end, "global_step": final.get("global_step")})
        metrics = {k: v for k, v in final.items() if k != "val/confusion"}
        # from_epochs and cloned_from: the driver's trials.jsonl logs a clone from them.
        metrics.update(epochs_done=end, from_epochs=done, cloned_from=cloned_from or "")
        last = end == total or bool(final.get("stopped_early"))
        # Tune copies the folder into its own storage: what a clone reads never changes under it.
        # (Tune stops a trial that reports its last segment.)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint(run_dir, filesystem=store.filesystem))
        carry, done, cloned_from = run_dir, end, None
        if last:
            break


# ---------------------------------------------------------------------------------------------
# On the driver, while the sweep runs: trials.jsonl and each trial's config


class SweepLog:
    """A Tune callback on the driver: one JSON line per trial start, clone and end in
    ``<sweep>/trials.jsonl``, and ``<sweep>/trials/<id>.yaml`` (the trial's whole config) at
    each start. On the driver, not in the trials: trials may run on nodes that do not share
    the sweep directory's filesystem (a sweep on S3 storage)."""

    def __init__(self, sweep_dir: str, base: dict, space: dict[str, Distribution]) -> None:
        self.sweep_dir, self.base, self.space = sweep_dir, base, space

    # ray.tune.Callback's interface, without importing ray here (see the module docstring);
    # tune_callback() wraps it.
    def on_trial_start(self, trial) -> None:
        params = trial_params(trial.config)
        cfg, ignored = trial_config(self.base, self.space, params)
        write_trial_config(Path(self.sweep_dir) / "trials" / f"{trial.trial_id}.yaml", cfg, params, ignored,
                           trial.trial_id)
        self.event(trial.trial_id, "start", params=canonical(self.base, params))

    def on_trial_result(self, trial, result: dict) -> None:
        if result.get("cloned_from"):  # PBT: this segment continued another trial's checkpoint
            self.event(trial.trial_id, "clone", donor=result["cloned_from"], epochs_done=result.get("from_epochs"),
                       global_step=result.get("resumed_from_step"))

    def on_trial_end(self, trial, status: str) -> None:
        last = trial.last_result or {}
        self.event(trial.trial_id, "end", status=status, epoch=last.get("epoch"),
                   epochs_done=last.get("epochs_done"), global_step=last.get("global_step"))

    def event(self, trial_id: str, event: str, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), "trial_id": trial_id, "event": event, **fields},
                          default=str) + "\n"
        fd = os.open(Path(self.sweep_dir) / "trials.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def tune_callback(log: SweepLog):
    """``log`` as a ``ray.tune.Callback``. A failure to write a line is printed, never raised:
    it must not stop the sweep."""
    from ray import tune

    class SweepLogCallback(tune.Callback):
        def __init__(self, log: SweepLog) -> None:
            self.log = log

        def _safe(self, fn, *args) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - logging must never fail a sweep
                print(f"raydeep: could not write to {self.log.sweep_dir}: {exc}")

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._safe(self.log.on_trial_start, trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self._safe(self.log.on_trial_result, trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._safe(self.log.on_trial_end, trial, "terminated")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._safe(self.log.on_trial_end, trial, "error")

    return SweepLogCallback(log)


def write_trial_config(path: Path, cfg: "Config", params: dict, ignored: dict[str, str], trial_id: str) -> None:
    from raydeep.config import to_yaml
    from raydeep.fileio import atomic_write_text

    lines = [f"# trial {trial_id}: the base config with these searched values"]
    lines += [f"#   {k}: {v!r}" for k, v in params.items() if k not in ignored and v is not None]
    for k, why in ignored.items():
        lines.append(f"#   {k}: not applied ({why}); the trial's config does not use it")
    atomic_write_text(path, "\n".join(lines) + "\n" + to_yaml(cfg))


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class Sweep:
    cfg: Any  # Config
    source: str
    sweep_dir: Path
    data: Any  # DataPlan
    info: Any  # ClusterInfo as the trials see it
    plan: Any  # RunPlan of the base config: the resource shape every trial shares
    trials: list[dict[str, Any]] | None
    concurrency: int
    context: TrialContext = field(repr=False, default=None)
    storage: "SweepStorage" = None

    @property
    def tune_dir(self) -> str:
        """Tune's experiment folder, as a user would name it (a local path or s3://...)."""
        return self.storage.uri("tune")


@dataclass
class SweepStorage:
    """Where Tune's experiment state and the trials' Train runs go: the sweep directory itself
    (``remote`` None), or ``remote`` = ``s3://bucket/prefix/<sweep name>``."""

    path: str  # Tune's storage_path: a local directory, or bucket/prefix/<sweep name> in fs
    fs: Any = None  # pyarrow.fs.FileSystem for S3; None: local
    remote: str | None = None

    def uri(self, name: str) -> str:
        return f"{self.remote}/{name}" if self.remote else str(Path(self.path) / name)

    def trials(self) -> TrialStorage:
        return TrialStorage(f"{self.path}/trials", self.fs)

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.trials().filesystem.get_file_info(f"{self.path}/{name}").type != pafs.FileType.NotFound


def new_sweep_dir(cfg: "Config") -> Path:
    """``<run.storage>/<name>-sweep-<time>`` for a local run.storage; else under ``runs/`` (for
    ``s3://`` storage the sweep's state goes to ``<run.storage>/<that folder's name>``)."""
    local = cfg.run.storage and "://" not in cfg.run.storage
    root = Path(cfg.run.storage) if local else Path("runs")
    return root / f"{cfg.name}-sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def sweep_storage(cfg: "Config", sweep_dir: Path, remote: str | None = None) -> SweepStorage:
    """The sweep's storage; for ``s3://`` the bucket is checked now, before Ray starts (a missing
    bucket or bad credentials fail in a second). ``remote``: a resumed sweep's own location."""
    from raydeep.datasets.storage import resolve_storage

    if remote is None and cfg.run.storage and "://" in cfg.run.storage:
        remote = f"{cfg.run.storage.rstrip('/')}/{sweep_dir.name}"
    if remote is None:
        return SweepStorage(str(sweep_dir.resolve()))
    path, fs = resolve_storage(remote, cfg.storage, key="run.storage")
    if fs is None:  # file://
        return SweepStorage(path)
    return SweepStorage(path, fs, remote)


def plan_sweep(cfg: "Config", source: str, sweep_dir: Path, info: "ClusterInfo", data: "DataPlan",
               storage: SweepStorage) -> Sweep:
    """Everything the sweep checks once Ray is up: every listed trial plans (resources, LR
    schedule against the real step counts), and the concurrency fits the cluster."""
    from raydeep.trainers.driver import plan_run
    from raydeep.trainers.schedules import check_run

    t = cfg.tune
    if t.metric.startswith(PER_CLASS) and t.metric.rsplit("/", 1)[1] not in data.label_names:
        raise ConfigError(f"{source}: tune.metric = {t.metric!r}: the data's classes are "
                          f"{', '.join(data.label_names)}")
    trial_info = replace(info, cpus=info.cpus - TRIAL_CPU)  # "auto" worker CPUs leave the trial its token
    base = base_raw(cfg)
    plan = plan_run(cfg, trial_info, data)
    trials = initial_trials(cfg)
    checked = trials if trials is not None else [representative(t.space)]
    for params in checked:
        tcfg, _ = trial_config(base, t.space, params)
        p = plan_run(tcfg, trial_info, data)
        try:
            check_run(tcfg.schedule, p.total_steps, p.steps_per_epoch)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if v is not None)
            raise ConfigError(f"{source}: tune.space: the trial with {shown}: {exc}") from None
    if trials is not None and not trials:
        raise ConfigError(f"{source}: tune.space: no trials to run")
    n = len(trials) if trials is not None else t.search.trials
    concurrency = max_concurrent(t.max_concurrent_trials, plan=plan, cluster_cpus=info.cpus,
                                 cluster_gpus=info.gpus, num_trials=n)
    sweep_dir = sweep_dir.resolve()
    ctx = TrialContext(base=base, space=dict(t.space), scheduler=t.scheduler, metric=t.metric, info=trial_info,
                       data=data, trials=storage.trials())
    return Sweep(cfg, source, sweep_dir, data, trial_info, plan, trials, concurrency, ctx, storage)


def describe_sweep(s: Sweep) -> str:
    t = s.cfg.tune
    n = f"{len(s.trials)} trials" if s.trials is not None else f"{t.search.trials} trials (optuna TPE)"
    cpus, gpus = trial_resources(s.plan)
    sched = t.scheduler.name + {
        "asha": f" (grace {t.scheduler.grace_period}, reduction x{t.scheduler.reduction_factor:g})",
        "pbt": f" (segments of {t.scheduler.perturbation_interval} epochs)", "none": ""}[t.scheduler.name]
    return (f"[bold]{s.cfg.name}[/] sweep: {n}, {t.search.name} search, scheduler {sched}, "
            f"{t.mode} {t.metric}; each trial {s.plan.world} workers x {s.plan.cpus_per_worker:g} CPU "
            f"(+{TRIAL_CPU:g}) = {cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
            + f", up to {s.concurrency} at once, {s.cfg.run.epochs} epochs each "
            f"({s.plan.steps_per_epoch} steps/epoch)")


def _param_space(s: Sweep) -> dict:
    from ray import tune

    if s.trials is None:
        return {}
    return {"params": tune.grid_search(s.trials)}


def _scheduler(s: Sweep):
    from ray import tune

    # Subclasses that rebuild their state on --resume (Ray 2.60 does not save it); see there.
    from raydeep.trainers.sweep_schedulers import EPOCHS_DONE, EpochASHA, ResumableFIFO, ResumablePBT

    t = s.cfg.tune
    sc = t.scheduler
    if sc.name == "asha":
        # Time is epochs done, not Tune iterations (which restart at 1 when --resume restarts a
        # trial's Train run from its checkpoint). max_t one past the last epoch: ASHA STOPs a
        # trial that reaches max_t, which would kill a finished trial's actor while its Train
        # run shuts down; ending on its own is cleaner. The rungs (grace_period x
        # reduction_factor^k) up to the last epoch do not change.
        return EpochASHA(max_t=s.cfg.run.epochs + 1, grace_period=sc.grace_period,
                         reduction_factor=sc.reduction_factor)
    if sc.name == "pbt":
        mutations = {}
        for key, d in t.space.items():
            if not pbt_mutable(key):
                continue
            if d.kind in ("choice", "grid"):
                mutations[key] = list(d.values)
            elif d.kind == "uniform":
                mutations[key] = tune.uniform(d.low, d.high)
            elif d.kind == "loguniform":
                mutations[key] = tune.loguniform(d.low, d.high)
            else:
                mutations[key] = tune.randint(int(d.low), int(d.high) + 1)
        # Time is epochs done (what each segment reports), not Tune iterations: a trial restored
        # by --resume restarts Tune's iteration count from its checkpoint, and with it out of step
        # with the saved results synchronous PBT paused every trial forever (a real resume test
        # found it). Every segment ends on a perturbation point but the last.
        return ResumablePBT(
            time_attr=EPOCHS_DONE, perturbation_interval=sc.perturbation_interval,
            hyperparam_mutations={"params": mutations},
            quantile_fraction=sc.quantile_fraction, resample_probability=sc.resample_probability,
            synch=sc.synch)
    return ResumableFIFO()


class OptunaSpace:
    """Optuna's define-by-run space: a parameter is only drawn where it applies, so TPE models
    the conditionals instead of learning from values that changed nothing. (A class, not a
    closure: OptunaSearch pickles it with the experiment state.)"""

    def __init__(self, base: dict, space: dict[str, Distribution]) -> None:
        self.base, self.space = base, space

    def __call__(self, trial) -> dict[str, None]:
        chosen: dict[str, Any] = {}
        skipped: dict[str, None] = {}
        for key in sorted(self.space, key=lambda k: (k not in SELECTORS, k)):
            raw, _ = apply_params(self.base, chosen)
            if why_not_applied(key, raw):
                skipped[f"params/{key}"] = None  # the canonical "does not apply", as in the listed searches
                continue
            d, name = self.space[key], f"params/{key}"  # OptunaSearch unflattens "/" into {"params": {...}}
            if d.kind == "choice":
                chosen[key] = trial.suggest_categorical(name, d.values)
            elif d.kind == "randint":
                chosen[key] = trial.suggest_int(name, int(d.low), int(d.high))
            else:
                chosen[key] = trial.suggest_float(name, d.low, d.high, log=d.kind == "loguniform")
        return skipped


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise RaydeepError("tune.search: optuna needs the optuna package: pip install 'raydeep[optuna]'") from None


def _search_alg(s: Sweep):
    t = s.cfg.tune
    if t.search.name != "optuna":
        return None
    require_optuna()
    from ray.tune.search.optuna import OptunaSearch

    seed = t.search.seed if t.search.seed is not None else s.cfg.run.seed
    return OptunaSearch(space=OptunaSpace(s.context.base, dict(t.space)), metric=t.metric, mode=t.mode, seed=seed)


def _trainable(s: Sweep):
    from ray import tune

    return tune.with_resources(tune.with_parameters(run_trial, ctx=s.context), {"CPU": TRIAL_CPU})


def _reporter(s: Sweep):
    from ray.tune import CLIReporter

    class ChangesReporter(CLIReporter):
        """Tune's table, redrawn when a trial starts, reports or ends (at most every 10 s),
        not every 10 s regardless: a sweep runs for hours."""

        _seen: tuple = ()

        def should_report(self, trials, done: bool = False) -> bool:
            now = tuple((t.trial_id, t.status, t.last_result.get("training_iteration")) for t in trials)
            if done or (now != self._seen and super().should_report(trials, done)):
                self._seen = now
                return True
            return False

    t = s.cfg.tune
    return ChangesReporter(
        parameter_columns={f"params/{k}": k for k in t.space},
        metric_columns={"epoch": "epoch", t.metric: t.metric, "val/loss": "val loss"} if t.metric != "val/loss"
        else {"epoch": "epoch", "val/loss": "val loss"},
        sort_by_metric=True, max_report_frequency=10,  # metric and mode: from TuneConfig
    )


def _quiet_tune() -> None:
    # Tune's new output engine infers its table's columns from the param space, which here is a
    # list of whole trials; the classic reporter takes our columns (the searched keys).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def _tuner(s: Sweep, verbose: bool):
    from ray import tune

    t = s.cfg.tune
    search_alg = _search_alg(s)
    return tune.Tuner(
        _trainable(s),
        param_space=_param_space(s),
        tune_config=tune.TuneConfig(
            metric=t.metric, mode=t.mode,
            scheduler=_scheduler(s), search_alg=search_alg,
            num_samples=1 if s.trials is not None else t.search.trials,
            max_concurrent_trials=s.concurrency, reuse_actors=False,
            trial_name_creator=lambda trial: trial.trial_id,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=s.storage.path, storage_filesystem=s.storage.fs,
            callbacks=[tune_callback(SweepLog(str(s.sweep_dir), s.context.base, s.context.space))],
            # PBT: a trial that reports its last segment stops there, before PBT would perturb it.
            stop={"epochs_done": s.cfg.run.epochs} if t.scheduler.name == "pbt" else None,
            progress_reporter=_reporter(s), verbose=2 if verbose else 1,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if t.scheduler.name == "pbt" else None),
        ),
    )


def run_sweep(cfg: "Config", *, source: str = "config", run_dir: str | os.PathLike | None = None,
              address: str | None = None, verbose: bool = False, console=None) -> dict[str, Any]:
    """``raydeep tune CONFIG``: check, plan, run the trials, then leaderboard, best.yaml, sweep.png."""
    from rich.console import Console

    from raydeep.cluster.connect import connect
    from raydeep.config import to_yaml
    from raydeep.fileio import atomic_write_text
    from raydeep.trainers.driver import plan_data

    console = console or Console()
    check_space(cfg, source)  # before any data or Ray
    trials = initial_trials(cfg)
    if trials is not None:
        check_trials(cfg, trials, source)
    if cfg.tune.search.name == "optuna":
        require_optuna()
    data = plan_data(cfg)
    sweep_dir = Path(run_dir) if run_dir else new_sweep_dir(cfg)
    if (sweep_dir / "tune").exists() or (sweep_dir / SWEEP_FILE).exists():
        raise ConfigError(f"--run-dir {sweep_dir}: holds a sweep already; continue it with "
                          f"raydeep tune --resume {sweep_dir}, or pick a new directory")
    storage = sweep_storage(cfg, sweep_dir)
    if storage.remote and storage.exists("tune"):
        raise ConfigError(f"run.storage: {storage.remote} holds a sweep already; pick another --run-dir name "
                          f"or run.storage prefix")
    info = connect(address, verbose=verbose)
    s = plan_sweep(cfg, source, sweep_dir, info, data, storage)
    (s.sweep_dir / "trials").mkdir(parents=True, exist_ok=True)
    atomic_write_text(s.sweep_dir / "config.yaml", to_yaml(cfg))
    # Tune keeps this concurrency in its saved state; --resume checks that the cluster holds it.
    # storage: where --resume finds Tune's state (the sweep dir itself when absent).
    atomic_write_text(s.sweep_dir / SWEEP_FILE, json.dumps(
        {"max_concurrent_trials": s.concurrency, "storage": storage.remote}) + "\n")
    console.print(describe_sweep(s), soft_wrap=True)
    console.print(f"sweep dir: {s.sweep_dir}" + (f"   storage: {storage.remote}" if storage.remote else "")
                  + (f"   dashboard: {info.dashboard_url}" if info.dashboard_url else ""), soft_wrap=True)
    _quiet_tune()
    t0 = time.time()
    results = _tuner(s, verbose).fit()
    return finish(s, results, console, wall_time_s=time.time() - t0)


def resume_sweep(sweep_dir: str | os.PathLike, *, address: str | None = None, verbose: bool = False,
                 console=None) -> dict[str, Any]:
    """``raydeep tune --resume DIR``: finished trials stay finished; unfinished ones continue
    (ASHA: from their Train run's latest checkpoint; PBT: from their last segment); errored
    ones restart."""
    from rich.console import Console
    from ray import tune

    from raydeep.cluster.connect import connect
    from raydeep.config import load_config
    from raydeep.trainers.driver import plan_data

    console = console or Console()
    sweep_dir = Path(sweep_dir)
    source = str(sweep_dir / "config.yaml")
    saved = read_sweep_file(sweep_dir)
    if not (sweep_dir / "config.yaml").is_file() or not ((sweep_dir / "tune").is_dir() or saved.get("storage")):
        raise ConfigError(f"--resume {sweep_dir}: not a sweep directory (no config.yaml and tune/ in it)")
    cfg = load_config(source)
    check_space(cfg, source)
    data = plan_data(cfg)
    storage = sweep_storage(cfg, sweep_dir, remote=saved.get("storage"))
    info = connect(address, verbose=verbose)
    s = plan_sweep(cfg, source, sweep_dir, info, data, storage)
    tune_path = f"{storage.path}/tune"
    if not tune.Tuner.can_restore(tune_path, storage_filesystem=storage.fs):
        raise RaydeepError(f"--resume {sweep_dir}: Tune saved no experiment state in {s.tune_dir} yet; "
                           f"start the sweep again")
    check_resumed_concurrency(s, info, saved)
    console.print(f"resuming {describe_sweep(s)}", soft_wrap=True)
    _quiet_tune()
    t0 = time.time()
    tuner = tune.Tuner.restore(tune_path, trainable=_trainable(s), resume_unfinished=True, restart_errored=True,
                               storage_filesystem=storage.fs)
    point_log_at(tuner, s)
    results = tuner.fit()
    return finish(s, results, console, wall_time_s=time.time() - t0)


SWEEP_FILE = "sweep.json"


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    try:
        saved = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return {}  # a sweep dir from before this file
    return saved if isinstance(saved, dict) else {}


def point_log_at(tuner, s: Sweep) -> None:
    """Tune.restore brings back the run config it pickled, callbacks included: make the sweep
    log write to this sweep directory (it may have been moved), or add it to a sweep started
    before raydeep logged from the driver."""
    try:
        callbacks = tuner._local_tuner.get_run_config().callbacks  # private; the log is best effort
    except AttributeError:
        return
    for cb in callbacks or []:
        if isinstance(getattr(cb, "log", None), SweepLog):
            cb.log.sweep_dir = str(s.sweep_dir)
            return
    if callbacks is not None:
        callbacks.append(tune_callback(SweepLog(str(s.sweep_dir), s.context.base, s.context.space)))


def check_resumed_concurrency(s: Sweep, info: "ClusterInfo", saved_file: dict[str, Any]) -> None:
    """Tune.restore runs as many trials at once as the sweep did when it started (it is in
    Tune's saved state, not recomputed); on a smaller cluster that many would wait on each
    other's CPUs and starve Ray Data. Refuse with the numbers instead."""
    from raydeep.errors import ResourceError

    saved = saved_file.get("max_concurrent_trials")
    if saved is None:
        return  # a sweep dir from before this file: nothing to compare
    try:
        max_concurrent(int(saved), plan=s.plan, cluster_cpus=info.cpus, cluster_gpus=info.gpus, num_trials=None)
    except ResourceError as exc:
        why = str(exc).removeprefix(f"tune.max_concurrent_trials = {saved}: ").removesuffix(" (or use auto)")
        raise ResourceError(f"--resume {s.sweep_dir}: the sweep runs {saved} trials at once (fixed when it "
                            f"started), more than this cluster holds: {why}; resume it on a cluster like the "
                            f"one it started on") from None


# ---------------------------------------------------------------------------------------------
# After the sweep: leaderboard, best.yaml, sweep.png


@dataclass
class TrialRow:
    trial_id: str
    status: str  # finished | stopped early | error | unfinished
    best: float | None
    best_epoch: int | None
    epochs: int
    params: dict[str, Any]  # canonical: None where a parameter did not apply
    history: list[tuple[int, float]]  # (epochs done, metric)
    error: str | None = None
    rank: int | None = None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def collect_rows(s: Sweep, results) -> list[TrialRow]:
    t = s.cfg.tune
    statuses = {}
    analysis = getattr(results, "_experiment_analysis", None)
    for trial in getattr(analysis, "trials", None) or []:
        statuses[trial.trial_id] = trial.status
    rows = []
    for r in results:
        # Tune names a trial's folder after its id, but a trial that --resume starts for the first
        # time gets a suffixed folder (its id's folder exists already): the id is in its results.
        trial_id = str((r.metrics or {}).get("trial_id") or Path(r.path).name)
        df = r.metrics_dataframe
        history: list[tuple[int, float]] = []
        if df is not None and len(df) and "epoch" in df:
            for epoch, value in zip(df["epoch"], df[t.metric] if t.metric in df else [None] * len(df)):
                if _finite(epoch):
                    history.append((int(epoch) + 1, float(value) if _finite(value) else float("nan")))
        epochs = max((e for e, _ in history), default=0)
        scored = [(v, e) for e, v in history if math.isfinite(v)]
        pick = max if t.mode == "max" else min
        best, best_epoch = pick(scored) if scored else (None, None)
        status = statuses.get(trial_id, "TERMINATED")
        if r.error is not None:
            label = "error"
        elif status != "TERMINATED":
            label = "unfinished"
        elif epochs >= s.cfg.run.epochs:
            label = "finished"
        else:
            label = "stopped early"
        err = None
        if r.error is not None:
            text = str(r.error).strip().splitlines()
            err = next((ln for ln in reversed(text) if ln.strip()), type(r.error).__name__)
        params = canonical(s.context.base, trial_params(r.config or {}))
        rows.append(TrialRow(trial_id, label, best, best_epoch, epochs, params, history, err))
    sign = -1 if t.mode == "max" else 1
    rows.sort(key=lambda row: (row.best is None, sign * row.best if row.best is not None else 0, row.trial_id))
    for i, row in enumerate(r for r in rows if r.best is not None):
        row.rank = i + 1
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_leaderboard(s: Sweep, rows: list[TrialRow], path: Path) -> None:
    from raydeep.fileio import atomic_write_text

    keys = list(s.cfg.tune.space)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "trial_id", s.cfg.tune.metric, "best_epoch", "epochs_run", "status", *keys])
    for row in rows:
        w.writerow([row.rank or "", row.trial_id, "" if row.best is None else f"{row.best:.6g}",
                    row.best_epoch or "", row.epochs, row.status,
                    *("" if row.params.get(k) is None else row.params[k] for k in keys)])
    atomic_write_text(path, buf.getvalue())


def leaderboard_table(s: Sweep, rows: list[TrialRow], top: int = 10):
    from rich.table import Table

    t = s.cfg.tune
    table = Table(title=f"leaderboard: {t.mode} {t.metric} ('-': does not apply to that trial)", title_justify="left")
    for col in ("rank", t.metric, "epochs", "status", *t.space, "trial"):
        table.add_column(col, justify="right" if col in ("rank", t.metric, "epochs") else "left")
    for row in rows[:top]:
        table.add_row(str(row.rank or "-"), _fmt(row.best), str(row.epochs), row.status,
                      *(_fmt(row.params.get(k)) for k in t.space), row.trial_id)
    if len(rows) > top:
        table.caption = f"{len(rows) - top} more in leaderboard.csv"
    return table


def write_best(s: Sweep, row: TrialRow, path: Path) -> "Config":
    """best.yaml: the winning trial's complete config, without a tune: section, so that
    ``raydeep train best.yaml`` runs it as is."""
    from raydeep.config import to_yaml
    from raydeep.fileio import atomic_write_text

    cfg, ignored = trial_config(s.context.base, s.context.space, {k: v for k, v in row.params.items()})
    t = s.cfg.tune
    header = [f"# Best trial of the sweep {s.sweep_dir.name} ({row.trial_id}): {t.metric} = {row.best:.4f} "
              f"at epoch {row.best_epoch} of {row.epochs}.",
              f"# Run it: raydeep train {path}"]
    header += [f"#   searched {k}: {v!r}" for k, v in row.params.items() if v is not None]
    if t.scheduler.name == "pbt":
        header.append("# PBT changed this trial's hyperparameters while it trained (see tune/pbt_policy_*.txt); "
                      "these are its last values.")
    atomic_write_text(path, "\n".join(header) + "\n" + to_yaml(cfg, exclude={"tune"}))
    return cfg


def finish(s: Sweep, results, console, *, wall_time_s: float) -> dict[str, Any]:
    from raydeep.fileio import atomic_write_text

    t = s.cfg.tune
    rows = collect_rows(s, results)
    interrupted = any(r.status == "unfinished" for r in rows)
    table = leaderboard_table(s, rows)
    width = console.width
    if not console.is_terminal:
        # Logs and pipes get rich's default 80 columns, which would fold every cell.
        console.width = max(width, 240)
    try:
        console.print(table)
    finally:
        console.width = width
    write_leaderboard(s, rows, s.sweep_dir / "leaderboard.csv")
    scored = [r for r in rows if r.best is not None]
    summary: dict[str, Any] = {
        "name": s.cfg.name, "sweep_dir": str(s.sweep_dir), "metric": t.metric, "mode": t.mode,
        "trials": len(rows), "errors": sum(r.status == "error" for r in rows),
        "stopped_early": sum(r.status == "stopped early" for r in rows),
        "epochs_run": sum(r.epochs for r in rows), "interrupted": interrupted, "wall_time_s": wall_time_s,
        "storage": s.storage.remote, "best": None,
    }
    for row in rows:
        if row.status == "error":
            console.print(f"[red]trial {row.trial_id} failed: {row.error}")
    if scored:
        best = scored[0]
        write_best(s, best, s.sweep_dir / "best.yaml")
        summary["best"] = {"trial_id": best.trial_id, "value": best.best, "epoch": best.best_epoch,
                           "params": best.params, "config": str(s.sweep_dir / "best.yaml")}
        try:
            from raydeep.trainers.sweep_plots import plot_sweep

            plot_sweep(s, rows, s.sweep_dir / "sweep.png")
        except Exception as exc:  # a plot must never fail a finished sweep
            console.print(f"[yellow]could not draw sweep.png: {exc}")
        console.print(f"best {t.metric}: {best.best:.4f} (trial {best.trial_id}, epoch {best.best_epoch})   "
                      f"config: {s.sweep_dir / 'best.yaml'}", soft_wrap=True)
    atomic_write_text(s.sweep_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    console.print(f"{len(rows)} trials, {summary['epochs_run']} epochs in {wall_time_s:.0f} s   "
                  f"leaderboard: {s.sweep_dir / 'leaderboard.csv'}", soft_wrap=True)
    if interrupted:
        console.print(f"[yellow]the sweep was interrupted; continue it with: raydeep tune --resume {s.sweep_dir}",
                      soft_wrap=True)
    elif not scored:
        raise RaydeepError(f"no trial reported {t.metric}; see the errors above and {s.tune_dir}")
    return summary
