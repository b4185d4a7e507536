"""``raydeep tune``: runs a sweep of the same training ``raydeep train`` runs, one Ray Tune
trial per parameter set (``trial``), then hands the results to ``results`` for the leaderboard,
``best.yaml`` and ``sweep.png``.

This module builds the ``Tuner`` from a planned ``Sweep`` (its scheduler, search and param
space), starts or resumes it, and keeps the sweep log: ``trials.jsonl`` and
``trials/<id>.yaml``, written by a Tune callback on the driver, so trials on other nodes need no
shared filesystem.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import CLIReporter, ProgressReporter
from rich.console import Console

from raydeep.cluster.connect import ClusterInfo, connect
from raydeep.cluster.logs import RAY_LOG, ray_output_to
from raydeep.config import Config, load_config, to_yaml
from raydeep.errors import ConfigError, RaydeepError, ResourceError
from raydeep.fileio import atomic_write_text
from raydeep.sweeps.plan import (
    TRIAL_CPU,
    Sweep,
    check_space,
    check_trials,
    describe_sweep,
    initial_trials,
    max_concurrent,
    new_sweep_dir,
    plan_sweep,
    sweep_storage,
)
from raydeep.sweeps.results import finish
from raydeep.sweeps.callbacks import TrialEvents
from raydeep.sweeps.console import SweepConsole
from raydeep.sweeps.mlflow_sweep import MlflowSweep, MlflowSweepCallback, end_sweep
from raydeep.sweeps.schedulers import EPOCHS_DONE, EpochASHA, ResumableFIFO, ResumablePBT
from raydeep.sweeps.space import SELECTORS, Distribution, apply_params, canonical, pbt_mutable, why_not_applied
from raydeep.sweeps.trial import run_trial, trial_config, trial_params
from raydeep.trainers.mlflow_log import MlflowRun, MlflowTarget, open_run, run_tags
from raydeep.trainers.mlflow_log import check as check_mlflow
from raydeep.trainers.plan import plan_data
from raydeep.trainers.tracking import TENSORBOARD, EventLog, trial_dirname

SWEEP_FILE = "sweep.json"


# ---------------------------------------------------------------------------------------------
# On the driver, while the sweep runs: trials.jsonl and each trial's config


class SweepLog:
    """A Tune callback on the driver: one JSON line per trial start, clone and end in
    ``<sweep>/trials.jsonl``, and ``<sweep>/trials/<id>.yaml`` (the trial's whole config) at
    each start. On the driver, not in the trials: trials may run on nodes that do not share
    the sweep directory's filesystem (a sweep on S3 storage)."""

    def __init__(self, sweep_dir: str, base: dict, space: dict[str, Distribution]) -> None:
        self.sweep_dir, self.base, self.space = sweep_dir, base, space
        self.events: dict[str, EventLog] = {}  # per running trial: SWEEP/tensorboard/<id,params>

    # What Tune hands ray.tune.Callback, without Tune's signatures (SweepLogCallback wraps it),
    # so that the log can be driven and tested without a Tuner.
    def on_trial_start(self, trial) -> None:
        params = trial_params(trial.config)
        cfg, ignored = trial_config(self.base, self.space, params)
        write_trial_config(Path(self.sweep_dir) / "trials" / f"{trial.trial_id}.yaml", cfg, params, ignored,
                           trial.trial_id)
        shown = canonical(self.base, params)
        self.event(trial.trial_id, "start", params=shown)
        if trial.trial_id not in self.events:
            log = EventLog(Path(self.sweep_dir) / TENSORBOARD / trial_dirname(trial.trial_id, shown))
            log.text("config", to_yaml(cfg), fence="yaml")
            self.events[trial.trial_id] = log

    def on_trial_result(self, trial, result: dict) -> None:
        if result.get("cloned_from"):  # PBT: this segment continued another trial's checkpoint
            self.event(trial.trial_id, "clone", donor=result["cloned_from"], epochs_done=result.get("from_epochs"),
                       global_step=result.get("resumed_from_step"))
        if trial.trial_id in self.events:  # the workers' metrics, not Tune's own counters
            self.events[trial.trial_id].epoch({k: v for k, v in result.items()
                                               if "/" in k or k in ("lr", "epoch", "global_step")})

    def on_trial_end(self, trial, status: str) -> None:
        last = trial.last_result or {}
        self.event(trial.trial_id, "end", status=status, epoch=last.get("epoch"),
                   epochs_done=last.get("epochs_done"), global_step=last.get("global_step"))
        log = self.events.pop(trial.trial_id, None)
        if log is not None:
            log.close()

    def event(self, trial_id: str, event: str, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), "trial_id": trial_id, "event": event, **fields},
                          default=str) + "\n"
        fd = os.open(Path(self.sweep_dir) / "trials.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


class SweepLogCallback(TrialEvents):
    """A ``SweepLog`` as a ``ray.tune.Callback``. A failure to write a line is printed, never
    raised: it must not stop the sweep."""

    @property
    def log(self) -> SweepLog:
        return self.target

    def failed(self, exc: Exception) -> None:
        print(f"raydeep: could not write to {self.log.sweep_dir}: {exc}")


def log_callback(s: Sweep) -> SweepLogCallback:
    """The sweep log of ``s``, as Tune calls it."""
    return SweepLogCallback(SweepLog(str(s.sweep_dir), s.context.base, s.context.space))


def write_trial_config(path: Path, cfg: Config, params: dict, ignored: dict[str, str], trial_id: str) -> None:
    """``trials/<id>.yaml``: the trial's whole config, headed by what it searched and ignored."""
    lines = [f"# trial {trial_id}: the base config with these searched values"]
    lines += [f"#   {k}: {v!r}" for k, v in params.items() if k not in ignored and v is not None]
    for k, why in ignored.items():
        lines.append(f"#   {k}: not applied ({why}); the trial's config does not use it")
    atomic_write_text(path, "\n".join(lines) + "\n" + to_yaml(cfg))


# ---------------------------------------------------------------------------------------------
# The Tuner


def _param_space(s: Sweep) -> dict:
    if s.trials is None:
        return {}
    return {"params": tune.grid_search(s.trials)}


def _scheduler(s: Sweep) -> tune.schedulers.TrialScheduler:
    """The trial scheduler: subclasses that rebuild their state on --resume (Ray 2.60 does not
    save it); see ``schedulers``."""
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
    """Fail before Ray starts when search: optuna has no optuna to run."""
    try:
        import optuna  # noqa: F401  (deferred: optional and heavy; only search: optuna needs it)
    except ImportError:
        raise RaydeepError("tune.search: optuna needs the optuna package: pip install 'raydeep[optuna]'") from None


def _search_alg(s: Sweep):
    t = s.cfg.tune
    if t.search.name != "optuna":
        return None
    require_optuna()
    from ray.tune.search.optuna import OptunaSearch  # deferred: imports optuna, optional and heavy

    seed = t.search.seed if t.search.seed is not None else s.cfg.run.seed
    return OptunaSearch(space=OptunaSpace(s.context.base, dict(t.space)), metric=t.metric, mode=t.mode, seed=seed)


def _trainable(s: Sweep):
    return tune.with_resources(tune.with_parameters(run_trial, ctx=s.context), {"CPU": TRIAL_CPU})


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


def _reporter(s: Sweep, verbose: bool, console: Console | None = None) -> ProgressReporter:
    """raydeep's live table of the trials; with --debug, Tune's own (and Ray's lines, not in ray.log)."""
    t = s.cfg.tune
    if not verbose:
        return SweepConsole(metric=t.metric, mode=t.mode, epochs=s.cfg.run.epochs, keys=list(t.space),
                            console=console)
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


def _tuner(s: Sweep, verbose: bool, callbacks: list[tune.Callback] = (), console: Console | None = None
           ) -> tune.Tuner:
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
            callbacks=[log_callback(s), *callbacks],
            # PBT: a trial that reports its last segment stops there, before PBT would perturb it.
            stop={"epochs_done": s.cfg.run.epochs} if t.scheduler.name == "pbt" else None,
            progress_reporter=_reporter(s, verbose, console), verbose=2 if verbose else 1,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if t.scheduler.name == "pbt" else None),
        ),
    )


# ---------------------------------------------------------------------------------------------
# Run and resume


def run_sweep(cfg: Config, *, source: str = "config", run_dir: str | os.PathLike | None = None,
              address: str | None = None, verbose: bool = False, console: Console | None = None) -> dict[str, Any]:
    """``raydeep tune CONFIG``: check, plan, run the trials, then leaderboard, best.yaml, sweep.png."""
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
    target = sweep_mlflow_target(cfg, sweep_dir, source)  # the package and the server, before Ray starts
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
    parent, callback = start_mlflow(s, target, console, resume=False)
    _quiet_tune()
    t0 = time.time()
    tuner = _tuner(s, verbose, [callback] if callback else [], console)
    return tracked(s, parent, callback, lambda: finish(s, fit_quietly(tuner, s, verbose), console,
                                                      wall_time_s=time.time() - t0))


def resume_sweep(sweep_dir: str | os.PathLike, *, address: str | None = None, verbose: bool = False,
                 console: Console | None = None) -> dict[str, Any]:
    """``raydeep tune --resume DIR``: finished trials stay finished; unfinished ones continue
    (ASHA: from their Train run's latest checkpoint; PBT: from their last segment); errored
    ones restart."""
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
    target = sweep_mlflow_target(cfg, sweep_dir, source)
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
    point_reporter_at(tuner, _reporter(s, verbose, console))
    parent, callback = start_mlflow(s, target, console, resume=True)
    callback = point_mlflow_at(tuner, callback)
    return tracked(s, parent, callback, lambda: finish(s, fit_quietly(tuner, s, verbose), console,
                                                      wall_time_s=time.time() - t0))


def fit_quietly(tuner: tune.Tuner, s: Sweep, verbose: bool):
    """``tuner.fit()`` with Ray's and Tune's log lines in ``SWEEP/ray.log`` (the console shows
    raydeep's table); with --debug, on the console as before."""
    reporter = _run_config(tuner).progress_reporter if _run_config(tuner) else None
    try:
        with ray_output_to(Path(s.sweep_dir) / RAY_LOG, quiet=not verbose):
            return tuner.fit()
    finally:
        if isinstance(reporter, SweepConsole):
            reporter.close()


def _run_config(tuner: tune.Tuner):
    try:
        return tuner._local_tuner.get_run_config()  # private, as in point_log_at
    except AttributeError:
        return None


def point_reporter_at(tuner: tune.Tuner, reporter: ProgressReporter) -> None:
    """Tune.restore brings back the progress reporter it pickled: draw with this session's."""
    run_config = _run_config(tuner)
    if run_config is not None:
        run_config.progress_reporter = reporter


# ---------------------------------------------------------------------------------------------
# MLflow (run.mlflow): the sweep's parent run, and the callback that logs a nested run per trial


def sweep_mlflow_target(cfg: Config, sweep_dir: Path, source: str) -> MlflowTarget | None:
    if cfg.run.mlflow is None:
        return None
    return check_mlflow(cfg.run.mlflow, sweep_dir, cfg.name,
                        run_tags("tune", task=cfg.model.task, source=source, run_dir=sweep_dir))


def start_mlflow(s: Sweep, target: MlflowTarget | None, console: Console, *, resume: bool
                 ) -> tuple[MlflowRun | None, MlflowSweepCallback | None]:
    """The sweep's parent run (continued on --resume) and the Tune callback for its trials."""
    if target is None:
        return None, None
    console.print(target.shown(), soft_wrap=True)
    parent = open_run(target, s.cfg.model_dump(mode="json"), s.sweep_dir, resume=resume, tags={},
                      warn=lambda line: console.print(f"[yellow]{line}"))
    return parent, MlflowSweepCallback(MlflowSweep(target, parent.run_id, s.context.base))


def tracked(s: Sweep, parent: MlflowRun | None, callback: MlflowSweepCallback | None, run) -> dict[str, Any]:
    """``run()`` (the sweep and its results), with the parent run ended by how it went."""
    if parent is None:
        return run()
    try:
        summary = run()
    except BaseException as exc:
        end_sweep(parent, callback, s.sweep_dir, None, exc)
        raise
    end_sweep(parent, callback, s.sweep_dir, summary)
    return summary


def point_mlflow_at(tuner, callback: MlflowSweepCallback | None) -> MlflowSweepCallback | None:
    """Tune.restore brings back the MLflow callback it pickled: use this session's (its parent run and
    store) in its place, or add it."""
    try:
        callbacks = tuner._local_tuner.get_run_config().callbacks  # private, as in point_log_at
    except AttributeError:
        return callback
    if callbacks is None:
        return callback
    callbacks[:] = [cb for cb in callbacks if not isinstance(cb, MlflowSweepCallback)]
    if callback is not None:
        callbacks.append(callback)
    return callback


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    """``sweep.json``: what --resume needs that Tune does not keep (concurrency, storage)."""
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
        callbacks.append(log_callback(s))


def check_resumed_concurrency(s: Sweep, info: ClusterInfo, saved_file: dict[str, Any]) -> None:
    """Tune.restore runs as many trials at once as the sweep did when it started (it is in
    Tune's saved state, not recomputed); on a smaller cluster that many would wait on each
    other's CPUs and starve Ray Data. Refuse with the numbers instead."""
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
