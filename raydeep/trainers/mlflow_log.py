"""MLflow tracking (``run.mlflow``): where a run's MLflow record goes, and what is sent there.

Written on the driver from what it already has, like the TensorBoard events (``tracking.py``):
the resolved config as params, each epoch's metrics at ``step=epoch``, the run dir's plots,
``summary.json``, ``config.yaml`` and ``deepspeed.json`` as artifacts, and the run's end as its
status (FINISHED, FAILED, KILLED on Ctrl-C). No worker talks to MLflow.

``mlflow`` is an optional extra (``raydeep[mlflow]``): it is imported only here, inside the
functions that need it, so a run without ``run.mlflow`` never imports it; a run that asks for
it without the package fails before Ray starts. A config section with no ``mlflow`` key costs
nothing.

Secrets never reach MLflow: S3 credentials come from the environment (``datasets/storage.py``)
and are never in the config; params and tags whose key names a secret, or whose value holds the
value of a secret-named environment variable, are dropped; a tracking URI with
``user:password@`` is refused (MLflow reads ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator

from raydeep.errors import ConfigError
from raydeep.fileio import atomic_write_text
from raydeep.sections import Section

MLFLOW_FILE = "mlflow.json"  # in a run or sweep dir: its MLflow run, so --resume continues it
INSTALL_HINT = "run.mlflow: needs the mlflow package: pip install 'raydeep[mlflow]'"
DEFAULT_DB = "mlflow.db"  # beside runs/: the default store (MLflow's own default backend)
DEFAULT_ARTIFACTS = "mlruns"  # beside runs/: the default store's artifacts
PROBE_TIMEOUT_S = 5.0
# MLflow's limits (mlflow/utils/validation.py)
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
ARTIFACT_NAMES = ("config.yaml", "deepspeed.json", "metrics.jsonl", "summary.json")
SWEEP_ARTIFACT_NAMES = ("config.yaml", "leaderboard.csv", "best.yaml", "summary.json", "sweep.png")
_SECRET_WORDS = {"key", "keys", "secret", "secrets", "token", "tokens", "password", "passwords", "passwd", "pwd",
                 "credential", "credentials", "auth", "apikey", "accesskey", "privatekey"}


def is_secret_key(key: str) -> bool:
    """Whether a config key or variable name looks like it holds a secret (a word of it is
    key, secret, token, password, credential, auth ...)."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())
    return any(w in _SECRET_WORDS for w in words)


class MlflowSection(Section):
    """``run.mlflow``: log the run to MLflow (needs ``raydeep[mlflow]``). Absent: nothing is logged."""

    tracking_uri: str | None = Field(
        None, description="an MLflow tracking URI (http://host:5000, sqlite:///path.db, file:///path); default: "
        "MLFLOW_TRACKING_URI, else sqlite:///<beside runs/>/mlflow.db with artifacts in <beside runs/>/mlruns")
    experiment: str | None = Field(None, description="default: the config's name ('raydeep' for the default 'run')")
    run_name: str | None = Field(None, description="default: the run (or sweep) directory's name")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on the run (never secrets)")

    @field_validator("tracking_uri")
    @classmethod
    def _no_userinfo(cls, v: str | None) -> str | None:
        if v and "://" in v and "@" in v.split("://", 1)[1].split("/", 1)[0]:
            # the URI is saved with the config and logged; MLflow reads credentials from its own variables
            raise ValueError("must not contain user:password@; set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment")
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for k in v:
            if is_secret_key(str(k)):
                raise ValueError(f"tag {k!r} looks like a secret; tags are stored in the clear (and the config "
                                 "with them): keep credentials in the environment")
        # numbers and booleans as YAML wrote them: tags are strings
        return {str(k): (json.dumps(x) if isinstance(x, bool) else str(x)) if isinstance(x, (int, float, bool)) else x
                for k, x in v.items()}


# ---------------------------------------------------------------------------------------------
# Where the run goes: resolved on the driver, checked before Ray starts


@dataclass(frozen=True)
class MlflowTarget:
    """A resolved ``run.mlflow``: the store, experiment, run name and tags of one MLflow run."""

    tracking_uri: str
    experiment: str
    run_name: str
    tags: dict[str, str] = field(default_factory=dict)
    artifact_location: str | None = None  # for a new experiment in the default store: beside its database

    def shown(self) -> str:
        """One line for the console: where the run goes and how to look at it."""
        line = f"mlflow: {self.tracking_uri}   experiment: {self.experiment}   run: {self.run_name}"
        if self.tracking_uri.startswith("file:"):  # MLflow 3 opens a file store only when asked (client_for)
            line += f"   view: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {self.tracking_uri}"
        elif not self.tracking_uri.startswith(("http://", "https://", "databricks")):
            line += f"   view: mlflow ui --backend-store-uri {self.tracking_uri}"
        return line


def default_root(run_dir: Path) -> Path:
    """Where the default store goes: beside the folder that holds the run dir (``runs/``)."""
    return run_dir.resolve().parent.parent


def resolve_uri(uri: str) -> str:
    """A store path as an absolute URI: a bare path (``mlruns/``) is a file store."""
    if "://" in uri or uri.startswith("databricks"):
        if uri.startswith("file://"):
            return Path(uri[len("file://"):]).resolve().as_uri()
        return uri
    if uri.startswith("file:"):
        uri = uri[len("file:"):]
    return Path(uri).expanduser().resolve().as_uri()


def resolve(section: MlflowSection, run_dir: str | os.PathLike, config_name: str,
            tags: dict[str, str] | None = None, env: dict[str, str] | None = None) -> MlflowTarget:
    """``run.mlflow`` with its defaults filled in for the run (or sweep) in ``run_dir``."""
    env = os.environ if env is None else env
    run_dir = Path(run_dir)
    artifacts = None
    if section.tracking_uri:
        uri = resolve_uri(section.tracking_uri)
    elif env.get("MLFLOW_TRACKING_URI"):
        uri = resolve_uri(env["MLFLOW_TRACKING_URI"])
    else:
        root = default_root(run_dir)
        uri = f"sqlite:///{root / DEFAULT_DB}"
        artifacts = (root / DEFAULT_ARTIFACTS).as_uri()
    experiment = section.experiment or (config_name if config_name != "run" else "raydeep")
    if artifacts is not None:
        artifacts = f"{artifacts}/{re.sub(r'[^A-Za-z0-9._-]+', '_', experiment)}"
    return MlflowTarget(uri, experiment, section.run_name or run_dir.resolve().name,
                        {**(tags or {}), **section.tags}, artifacts)


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401  (deferred: the optional extra raydeep[mlflow])
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """An http(s) tracking server that answers nothing fails now, in one line, not after training."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy's 401 or 404 is still a server)
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise ConfigError(f"run.mlflow.tracking_uri = {uri!r}: no MLflow server answers there ({why}); start one "
                          f"(mlflow server --host ... --port ...) or fix the URI") from None


def check(section: MlflowSection, run_dir: str | os.PathLike, config_name: str,
          tags: dict[str, str] | None = None) -> MlflowTarget:
    """Resolve ``run.mlflow`` and check it before Ray starts: the package, and a server that answers."""
    require_mlflow()
    target = resolve(section, run_dir, config_name, tags)
    probe(target.tracking_uri)
    return target


# ---------------------------------------------------------------------------------------------
# What is sent: params, metric names, statuses


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``; lists stay values."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def secret_values(env: dict[str, str] | None = None) -> set[str]:
    """Values of the environment's secret-named variables (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN ...),
    so that none can be logged even if it found its way into a value."""
    env = os.environ if env is None else env
    return {v for k, v in env.items() if is_secret_key(k) and len(v) >= 6}


def as_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def clean(items: dict[str, Any], limit: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Params or tags as MLflow takes them: string values cut to ``limit``; secret-named keys, keys over
    MLflow's 250 characters and values holding a secret dropped."""
    secrets = secret_values(env)
    out = {}
    for key, value in items.items():
        text = as_text(value)
        if is_secret_key(key) or len(key) > MAX_KEY or any(s in text for s in secrets):
            continue
        out[key] = text if len(text) <= limit else text[:limit - 3] + "..."
    return out


def config_params(config: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    """The flattened resolved config (``optim.lr``, ``model.layers`` ...), safe to log."""
    return clean(flatten(config), MAX_PARAM_VALUE, env)


def metric_name(key: str) -> str:
    """``key`` as an MLflow metric name: characters it refuses become ``_``; no empty, ``.`` or ``..``
    path parts (MLflow treats names as paths). ``val/loss`` stays ``val/loss``."""
    parts = [re.sub(r"[^A-Za-z0-9_\-. ]", "_", p) for p in key.split("/") if p]
    parts = ["_" if p.strip(".") == "" else p for p in parts]
    return "/".join(parts)[:MAX_KEY] or "_"


def epoch_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's numbers (bools, lists and the epoch itself aside), by their MLflow names."""
    return {metric_name(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}


def ended_status(exc: BaseException | None) -> str:
    """The MLflow status a run ends with: KILLED for Ctrl-C, FAILED for an error, else FINISHED."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def raydeep_version() -> str:
    try:
        from importlib.metadata import version

        return version("raydeep")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "unknown"


# ---------------------------------------------------------------------------------------------
# One MLflow run


class MlflowRun:
    """One MLflow run, through ``MlflowClient`` (no global ``mlflow.start_run`` state: a sweep holds
    many at once). After ``start``, a failure to log warns once and is never raised: tracking
    must not fail a training run."""

    def __init__(self, target: MlflowTarget, run_id: str, warn: Callable[[str], None] = print) -> None:
        self.target, self.run_id, self.warn = target, run_id, warn
        self._client = None
        self._warned = False

    def __getstate__(self) -> dict:  # a sweep's Tune callback is pickled with the experiment state
        return {**self.__dict__, "_client": None, "warn": print}

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.target.tracking_uri)
        return self._client

    @classmethod
    def start(cls, target: MlflowTarget, params: dict[str, str], *, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, resume_id: str | None = None,
              warn: Callable[[str], None] = print) -> "MlflowRun":
        """A new run (or ``resume_id``'s, set RUNNING again) with its tags and params. Errors raise:
        they happen before training, where a bad store should stop the run."""
        client = client_for(target.tracking_uri)
        all_tags = clean({**target.tags, **(tags or {})}, MAX_TAG_VALUE)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = None
        if resume_id:
            try:
                run = client.get_run(resume_id)
            except Exception as exc:  # noqa: BLE001 - deleted, or another store: a new run instead
                warn(f"mlflow: could not continue run {resume_id} ({str(exc).splitlines()[0][:200]}); "
                     f"starting a new one")
        if run is not None:
            client.update_run(resume_id, status="RUNNING")
            resumed = cls(target, resume_id, warn)
            old = run.data.params
            changed = {k: f"{old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v}
            params = {k: v for k, v in params.items() if k not in old}  # MLflow params are immutable
            if changed:
                all_tags["raydeep.resumed_changes"] = "; ".join(f"{k}: {v}" for k, v in changed.items())[:MAX_TAG_VALUE]
            resumed._log_batch(params=params, tags=all_tags)
            return resumed
        experiment_id = experiment_for(client, target)
        run = client.create_run(experiment_id, run_name=target.run_name, tags=all_tags)
        started = cls(target, run.info.run_id, warn)
        started._log_batch(params=params)
        return started

    def _log_batch(self, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
                   metrics: dict[str, float] | None = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param, RunTag  # deferred: the optional extra

        now = int(time.time() * 1000)
        ps = [Param(k, v) for k, v in (params or {}).items()]
        ts = [RunTag(k, v) for k, v in (tags or {}).items()]
        ms = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
        for i in range(0, max(len(ps), len(ts), 1), PARAMS_PER_BATCH):  # MLflow takes 100 params+tags a batch
            self.client.log_batch(self.run_id, params=ps[i:i + PARAMS_PER_BATCH], tags=ts[i:i + PARAMS_PER_BATCH],
                                  metrics=ms if i == 0 else [])

    def _safely(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
            if not self._warned:
                self._warned = True
                self.warn(f"mlflow: could not {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                          "training goes on, further MLflow errors are not shown")

    def epoch(self, metrics: dict[str, Any]) -> None:
        """One epoch's metrics at ``step`` = its epoch number (0-based, as in metrics.jsonl)."""
        step = int(metrics.get("epoch") or 0)
        self._safely("log epoch metrics", lambda: self._log_batch(metrics=epoch_metrics(metrics), step=step))

    def step(self, record: dict[str, float]) -> None:
        """Every run.log_every_steps: ``step/train_loss`` and ``step/lr`` at ``step`` = the optimizer step."""
        self.metrics({f"step/{k}": v for k, v in record.items() if k != "global_step"},
                     step=int(record["global_step"]))

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        self._safely("log metrics", lambda: self._log_batch(metrics={metric_name(k): float(v) for k, v in values.items()},
                                                             step=step))

    def params(self, params: dict[str, str]) -> None:
        self._safely("log params", lambda: self._log_batch(params=params))

    def tags(self, tags: dict[str, str]) -> None:
        self._safely("set tags", lambda: self._log_batch(tags=clean(tags, MAX_TAG_VALUE)))

    def artifacts(self, paths: list[Path]) -> None:
        for p in paths:
            if p.is_file():
                self._safely(f"upload {p.name}", lambda p=p: self.client.log_artifact(self.run_id, str(p)))

    def end(self, status: str = "FINISHED") -> None:
        self._safely("end the run", lambda: self.client.set_terminated(self.run_id, status))

    def remember(self, folder: Path) -> None:
        """``folder/mlflow.json``: this run's id, so a resumed run or sweep continues it."""
        atomic_write_text(folder / MLFLOW_FILE, json.dumps(
            {"run_id": self.run_id, "tracking_uri": self.target.tracking_uri, "experiment": self.target.experiment})
            + "\n")


def remembered(folder: Path, target: MlflowTarget) -> str | None:
    """The run id a previous start in ``folder`` logged to, when it used the same store."""
    try:
        saved = json.loads((folder / MLFLOW_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved.get("run_id") if saved.get("tracking_uri") == target.tracking_uri else None


def client_for(uri: str):
    from mlflow.tracking import MlflowClient  # deferred: the optional extra

    if uri.startswith("file:"):
        # MLflow 3.x keeps its file store in maintenance mode and refuses it unless asked; a user who
        # names a file: store has asked (the default store is sqlite, MLflow's own default)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri)


def experiment_for(client, target: MlflowTarget) -> str:
    """The experiment's id, created (with the default store's artifact folder) if it is new."""
    found = client.get_experiment_by_name(target.experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    except Exception:  # another run created it meanwhile
        found = client.get_experiment_by_name(target.experiment)
        if found is None:
            raise
        return found.experiment_id


def run_tags(kind: str, *, task: str | None = None, source: str | None = None, run_dir: Path | None = None
             ) -> dict[str, str]:
    """raydeep's own tags: what made the run, from which config file, where its files are."""
    tags = {"raydeep.version": raydeep_version(), "raydeep.kind": kind, "mlflow.source.name": f"raydeep {kind}"}
    if task:
        tags["raydeep.task"] = task
    if source:
        tags["raydeep.config"] = Path(source).name
    if run_dir is not None:
        tags["raydeep.run_dir"] = str(Path(run_dir).resolve())
    return tags


def run_artifacts(run_dir: Path, names: tuple[str, ...] = ARTIFACT_NAMES) -> list[Path]:
    """What a run dir has to upload: its named files and its plots."""
    named = [run_dir / n for n in names if (run_dir / n).is_file()]
    return named + [p for p in sorted(run_dir.glob("*.png")) if p not in named]


def open_run(target: MlflowTarget, config: dict[str, Any], folder: Path, *, resume: bool, tags: dict[str, str],
             warn: Callable[[str], None] = print) -> MlflowRun:
    """Start the MLflow run of the run (or sweep) in ``folder``, or continue the one it logged to
    before when resuming; record its id in ``folder/mlflow.json``."""
    resume_id = remembered(folder, target) if resume else None
    run = MlflowRun.start(target, config_params(config), tags=tags, resume_id=resume_id, warn=warn)
    run.remember(folder)
    return run
