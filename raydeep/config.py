"""The run config: one pydantic model per part, read from YAML plus ``--set a.b=c`` overrides.

A file may start from another: ``base: digits-lt.yaml`` (relative to the file) merges that
file under it (``merge`` says how), its base under that, and so on; ``--set`` applies last.

Everything is validated here, on the driver, before Ray starts: an unknown key, a wrong type
or an out-of-range value raises ``ConfigError`` with one line naming the file that holds the
key, the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from raydeep.config_files import (
    DEFAULT,
    Origins,
    apply_overrides,
    file_of,
    flow,
    merge,
    parse_override,
    read_chain,
)
from raydeep.datasets.storage import StorageConfig
from raydeep.errors import ConfigError
from raydeep.sections import (
    TASK_DEFAULTS,
    TASK_METRICS,
    Section,
    is_known_metric,
    loss_task_error,
    metric_mode,
    metric_task_error,
)
from raydeep.trainers.class_weights import ImbalanceConfig
from raydeep.trainers.mlflow_log import MlflowSection
from raydeep.trainers.schedules import SCHEDULES, ConstantSchedule, ScheduleConfig
from raydeep.sweeps.space import TuneConfig


class DataConfig(Section):
    """Where the data lives and how it is batched.

    ``train``/``val``/``test`` take a directory of parquet shards, a single ``.parquet`` file,
    a glob, or a bundled set: ``datasets://digits-lt/train?imbalance_ratio=100&seed=0``,
    ``datasets://synthetic-text/train?rows=2000&num_classes=4``.
    """

    train: str
    val: str
    test: str | None = None
    batch_size: int = Field(64, ge=1, description="micro-batch per worker")
    shuffle_buffer: int = Field(1024, ge=0, description="each worker permutes its training rows in chunks of this many "
                                "(at least a batch), drawn from (seed, epoch, rank, chunk); 0 = stream order")
    materialize_max_mb: float = Field(
        256, ge=0,
        description="a split whose training columns take at most this many MiB in memory (decoded and "
        "uncompressed, 2-5x its parquet files; counted from the parquet footers) is read once into Ray's "
        "object store and dealt to the workers each epoch without Ray Data, instead of re-read from "
        "storage every epoch; 0 = always stream",
    )
    read_ahead_mb: float | None = Field(
        512, gt=0,
        description="object-store MiB Ray Data may hold ahead of the workers while it reads a split "
        "(its read-ahead, across all workers); every block a worker reads is mapped into its memory, so "
        "this bounds a worker's memory however large the data set; null = Ray Data's default (up to "
        "half the object store)",
    )
    block_mb: float | None = Field(
        32, gt=0,
        description="largest block, in MiB, Ray Data cuts a streamed split into (its target_max_block_size); "
        "a worker holds a few blocks at a time, so smaller blocks keep its memory flat as the data grows "
        "(32: 1M -> 10M rows 835 -> 832 MiB, Ray Data's 128: 1080 -> 1335 MiB); null = Ray Data's default",
    )


class LoraSection(Section):
    """Low-rank adapters (``peft``) on a ``model.kind: hf`` model: only the adapters (and a
    classifier's new head) train; the base weights stay frozen."""

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="scaling: the update is (alpha / r) * B A")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [q_proj, v_proj]), or every linear layer")


class ModelConfig(Section):
    """``task: regression`` predicts one number per row (a float ``label``) with ``imbalance.loss: mse``;
    ``classification`` (the default) predicts ``num_classes`` logits; ``causal_lm`` predicts each
    next token of ``input_ids`` (no label column; ``kind: hf`` only).

    ``kind: hf`` is a Hugging Face model: ``path`` is a local directory (config.json, weights,
    tokenizer files) or a hub id that ``transformers`` resolves from its own cache.
    """

    kind: Literal["transformer", "cnn", "linear", "lstm", "hf"] = "transformer"
    task: Literal["classification", "regression", "causal_lm"] = "classification"
    num_classes: int | None = Field(None, ge=2, description="classification only (required there)")
    d_model: int = Field(128, ge=8, description="transformer: width; lstm: hidden size per direction")
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    pooling: Literal["mean", "cls"] = "mean"
    max_len: int = Field(512, ge=1, description="size of the learned position table")
    vocab_size: int | None = Field(None, ge=2, description="token models; default: the data manifest's")
    patch_size: int = Field(2, ge=1, description="image models: square patch side in pixels")
    bidirectional: bool = Field(True, description="lstm only")
    path: str | None = Field(None, description="hf only: a local model directory or a hub id")
    pretrained: bool = Field(True, description="hf only: load the weights; false = random init from its config.json")
    gradient_checkpointing: bool = Field(False, description="hf only: recompute activations in backward")
    lora: LoraSection | None = Field(None, description="hf only: train low-rank adapters (needs raydeep[lora])")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        """A local model directory as an absolute path: workers run in another directory (and on
        a cluster the same path must exist on every node)."""
        if v and os.path.isdir(os.path.expanduser(v)):
            return os.path.abspath(os.path.expanduser(v))
        return v

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.kind == "transformer" and self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.task == "classification" and self.num_classes is None:
            raise ValueError("num_classes is required for task: classification (the number of label classes)")
        if self.task != "classification" and self.num_classes is not None:
            what = "a task: regression model has one output" if self.task == "regression" else \
                "a task: causal_lm model predicts tokens"
            raise ValueError(f"num_classes = {self.num_classes}: {what}; remove num_classes")
        if self.kind == "hf" and not self.path:
            raise ValueError("model.kind: hf needs model.path (a local model directory or a hub id)")
        for key in ("path", "lora"):
            if self.kind != "hf" and getattr(self, key) is not None:
                raise ValueError(f"model.{key} is read only by model.kind: hf (this model is kind: {self.kind})")
        if self.task == "causal_lm" and self.kind != "hf":
            raise ValueError(f"task: causal_lm needs model.kind: hf (a decoder such as GPT-2 or Llama), "
                             f"not kind: {self.kind}")
        return self

    @property
    def output_dim(self) -> int:
        """Outputs per row: ``num_classes`` logits, or one predicted value for regression (causal_lm:
        the vocabulary, per position; its loss does not read this)."""
        if self.task == "classification":
            return int(self.num_classes)  # type: ignore[arg-type]
        return 1 if self.task == "regression" else int(self.vocab_size or 0)


class OptimConfig(Section):
    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(3e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop")
    nesterov: bool = Field(False, description="sgd only")
    l1: float = Field(0.0, ge=0, description="L1 penalty coefficient on weight matrices, added to the loss")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = off")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")


class DeepSpeedConfig(Section):
    """How each worker's DeepSpeed engine is built; ``deepspeed: path.json`` uses a user's file."""

    zero_stage: int = Field(1, ge=0, le=3)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    offload: Literal["none", "cpu"] = "none"
    config_file: str | None = Field(None, description="a ds_config.json used as is (batch keys filled in)")

    @model_validator(mode="before")
    @classmethod
    def _path_form(cls, v: Any) -> Any:
        return {"config_file": v} if isinstance(v, str) else v


class ScalingConfig(Section):
    """``num_workers: auto`` is one worker per GPU when the run uses GPUs and 2 on CPUs, so one
    YAML runs on a laptop, a GPU node and a GPU cluster."""

    num_workers: int | Literal["auto"] = "auto"
    use_gpu: bool | Literal["auto"] = "auto"
    cpus_per_worker: float | Literal["auto"] = Field(
        "auto", description="auto: share the node's CPUs, keeping one for Ray Data"
    )
    gpus_per_worker: float = Field(1.0, gt=0, description="whole GPUs per training worker")

    @field_validator("num_workers")
    @classmethod
    def _at_least_one(cls, v: int | str) -> int | str:
        if v != "auto" and v < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return v

    @field_validator("cpus_per_worker")
    @classmethod
    def _positive(cls, v: float | str) -> float | str:
        if v != "auto" and v <= 0:
            raise ValueError("must be > 0 or 'auto'")
        return v

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole(cls, v: float) -> float:
        if v != int(v):
            raise ValueError(f"{v:g}: a training worker takes whole GPUs (a fraction would put two NCCL "
                             "ranks on one GPU); use 1 or more")
        return v


class EarlyStoppingConfig(Section):
    metric: str = "val/macro_f1"
    mode: Literal["max", "min"] = "max"
    patience: int | None = Field(None, ge=1, description="epochs without improvement; null = off")


class CheckpointEvery(Section):
    """``run.checkpoint_every`` as a mapping: exactly one of ``epochs``, ``steps`` (optimizer steps,
    counted over the run) or ``minutes`` (rank 0's clock). ``steps`` and ``minutes`` checkpoint
    mid-epoch, with every rank's position in the epoch's sample order, and at every epoch's end."""

    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    minutes: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> "CheckpointEvery":
        given = [k for k in ("epochs", "steps", "minutes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of epochs, steps, minutes (got {', '.join(given) or 'none'}); "
                             "e.g. {steps: 500}, or an integer for epochs")
        return self

    @property
    def mid_epoch(self) -> bool:
        """Whether checkpoints also come between epochs' ends."""
        return self.epochs is None


class RunSection(Section):
    epochs: int = Field(5, ge=1)
    seed: int = 0
    storage: str | None = Field(None, description="where checkpoints go; default: the run directory")
    checkpoint_every: Annotated[int, Field(ge=1)] | CheckpointEvery = Field(
        1, description="N (epochs), {epochs: N}, {steps: N} (optimizer steps) or {minutes: M}; the last epoch always "
        "saves one. steps/minutes also save at every epoch's end and resume mid-epoch at the exact next sample "
        "(raydeep train only: a sweep refuses them)")
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=-1, description="worker-group restarts; -1 = unlimited")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    on_nonfinite_loss: Literal["stop", "skip_batch"] = Field(
        "stop", description="a step whose loss is NaN or inf on any worker: stop ends the run with one line naming "
        "the epoch and step (no retry, exit 1); skip_batch skips that step on every worker (no backward, no optimizer "
        "step) and counts it in train/skipped_steps. fp16's own overflow skipping stays DeepSpeed's")
    mlflow: MlflowSection | None = Field(None, description="log the run (or sweep) to MLflow; needs raydeep[mlflow]")
    log_every_steps: int = Field(10, ge=0, description="every N optimizer steps rank 0's mean training loss and the "
                                 "LR go to TensorBoard (step/train_loss, step/lr) and MLflow; 0: epochs only")

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _checkpoint_every(cls, v: Any) -> Any:
        """One line for every wrong shape (pydantic's union errors name both arms)."""
        shapes = "expected an integer (epochs) or one of {epochs: N}, {steps: N}, {minutes: M}"
        if isinstance(v, CheckpointEvery):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError(f"must be at least 1 ({shapes})")
            return v
        if not isinstance(v, dict):
            raise ValueError(shapes)
        unknown = sorted(set(v) - {"epochs", "steps", "minutes"})
        given = [k for k in ("epochs", "steps", "minutes") if v.get(k) is not None]
        if unknown or len(given) != 1:
            what = f"unknown key {unknown[0]!r}" if unknown else f"{len(given)} of epochs, steps, minutes given"
            raise ValueError(f"{what}; {shapes}")
        key, value = given[0], v[given[0]]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "minutes" and not (number and value > 0):
            raise ValueError(f"minutes must be a number > 0, got {value!r}")
        if key != "minutes" and not (number and value == int(value) and value >= 1):
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        return CheckpointEvery(**{key: value if key == "minutes" else int(value)})

    @property
    def checkpoints(self) -> CheckpointEvery:
        """``checkpoint_every`` with an integer read as epochs."""
        every = self.checkpoint_every
        return CheckpointEvery(epochs=every) if isinstance(every, int) else every


class Config(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ConstantSchedule()
    imbalance: ImbalanceConfig = ImbalanceConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    scaling: ScalingConfig = ScalingConfig()
    run: RunSection = RunSection()
    storage: StorageConfig = StorageConfig()
    tune: TuneConfig | None = None  # what `raydeep tune` searches; `raydeep train` ignores it

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw: Any) -> Any:
        """Unset loss and metrics default to the task's own (sections.TASK_DEFAULTS); the sections'
        own defaults are classification's."""
        model = raw.get("model") if isinstance(raw, dict) else None
        task = model.get("task") if isinstance(model, dict) else None
        defaults = TASK_DEFAULTS.get(task) if isinstance(task, str) else None
        if defaults is None or task == "classification":
            return raw
        raw = dict(raw)

        def section(parent: dict, key: str) -> dict | None:
            value = parent.get(key)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                return None  # validation names the bad value
            parent[key] = value = dict(value)
            return value

        imbalance = section(raw, "imbalance")
        if imbalance is not None:
            imbalance.setdefault("loss", defaults.loss)
        run = section(raw, "run")
        es = section(run, "early_stopping") if run is not None else None
        if es is not None:
            es.setdefault("metric", defaults.early_stopping_metric)
            if es["metric"] in TASK_METRICS[task]:
                es.setdefault("mode", metric_mode(es["metric"]))
        if isinstance(raw.get("tune"), dict):
            tune = section(raw, "tune")
            tune.setdefault("metric", defaults.tune_metric)
            if tune["metric"] in TASK_METRICS[task]:
                tune.setdefault("mode", metric_mode(tune["metric"]))
        return raw

    @model_validator(mode="before")
    @classmethod
    def _tune_metric_fits_task(cls, raw: Any) -> Any:
        """A tune.metric of another task is refused before TuneConfig checks its mode: a classification
        run's ``val/rmse`` should hear that it is a regression metric, not "use mode: min"."""
        model = raw.get("model") if isinstance(raw, dict) else None
        tune = raw.get("tune") if isinstance(raw, dict) else None
        if not (isinstance(model, dict) and isinstance(tune, dict) and isinstance(tune.get("metric"), str)):
            return raw
        task, metric = model.get("task", "classification"), tune["metric"]
        if task in TASK_METRICS and is_known_metric(metric):  # else the field validators say what is wrong
            why = metric_task_error("tune.metric", metric, task)
            if why:
                raise ValueError(why)
        return raw

    @model_validator(mode="after")
    def _task_consistent(self) -> "Config":
        task, loss = self.model.task, self.imbalance.loss
        why = loss_task_error(loss, task)
        if why:
            raise ValueError(why)
        if task == "causal_lm":
            for key in ("weighting", "sampling"):
                if getattr(self.imbalance, key) != "none":
                    raise ValueError(f"imbalance.{key} = {getattr(self.imbalance, key)!r}: a task: causal_lm run has "
                                     "no label classes to weight or resample; remove it")
        metrics = [("run.early_stopping.metric", self.run.early_stopping.metric, self.run.early_stopping.mode)]
        if getattr(self.schedule, "metric", None) is not None:
            metrics.append(("schedule.metric", self.schedule.metric, self.schedule.mode))
        if self.tune is not None:
            metrics.append(("tune.metric", self.tune.metric, self.tune.mode))
        for key, metric, mode in metrics:
            why = metric_task_error(key, metric, task)
            if why:
                raise ValueError(why)
            if mode != metric_mode(metric):  # a best checkpoint or early stop that keeps the worst epoch
                raise ValueError(f"{key} = {metric!r} with mode: {mode} would favour the worst values; "
                                 f"use mode: {metric_mode(metric)}")
        return self

    @model_validator(mode="after")
    def _cpu_precision(self) -> "Config":
        """What CPU workers cannot do, refused at load when the config says CPU (with use_gpu: auto
        the run plan refuses it once the cluster is known, still before training)."""
        if self.scaling.use_gpu is False and not self.deepspeed.config_file:
            if self.deepspeed.precision == "fp16":
                raise ValueError("deepspeed.precision = 'fp16' with scaling.use_gpu: false: CPU workers have no "
                                 "fp16 kernels worth the name; use bf16 or fp32")
            if self.deepspeed.offload != "none":
                raise ValueError(f"deepspeed.offload = {self.deepspeed.offload!r} with scaling.use_gpu: false: "
                                 "offload moves GPU memory to the host, where a CPU run already is; remove it")
        return self

    @model_validator(mode="after")
    def _l1_needs_whole_parameters(self) -> "Config":
        if self.optim.l1 and self.deepspeed.zero_stage == 3 and not self.deepspeed.config_file:
            # Under ZeRO-3 a rank holds only a slice of each parameter outside forward, so a
            # penalty summed over parameters would be wrong.
            raise ValueError("optim.l1 > 0 needs deepspeed.zero_stage <= 2")
        return self


# ---------------------------------------------------------------------------------------------
# Loading: the merged YAML (``config_files``) validated, and where each value came from


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where each of its values came from."""

    config: Config
    origins: Origins
    files: tuple[str, ...]  # the file given, then its base, that file's base, ...

    def origin(self, path: tuple[str, ...]) -> str:
        """Who set the value at ``path``: the nearest enclosing key a file or --set gave (a
        ``deepspeed: ds.json`` sets every deepspeed key), else ``default``."""
        for i in range(len(path), 0, -1):
            if path[:i] in self.origins:
                return self.origins[path[:i]]
        return DEFAULT


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc[:-1]`` (for did-you-mean)."""
    model: Any = Config
    if len(loc) >= 3 and loc[0] == "schedule":  # the discriminated union: loc is (schedule, <name>, key)
        return SCHEDULES.get(str(loc[1]))
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        # `X | None` (e.g. tune): the model inside
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None:
            return None
    return model


def _describe(err: dict, source: str, overridden: set[str], origins: Origins | None = None) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
    owner = _model_at(loc)
    if len(loc) >= 2 and loc[0] == "schedule" and loc[1] in SCHEDULES:
        loc = (loc[0],) + loc[2:]  # pydantic puts the union member's name in the path; users never write it
    source = file_of(loc, origins, source)
    key = ".".join(str(p) for p in loc) or "(top level)"
    origin = " (from --set)" if key in overridden else ""
    if err["type"] == "extra_forbidden":
        hint = ""
        if owner is not None:
            close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
            allowed = ", ".join(owner.model_fields)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {allowed})"
        return f"{source}: {key}{origin}: unknown key{hint}"
    if err["type"] == "union_tag_not_found" or err["type"] == "union_tag_invalid":
        allowed = ", ".join(SCHEDULES)
        return f"{source}: {key}.name{origin}: expected one of {allowed}"
    if err["type"] == "missing":
        return f"{source}: {key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(err.get("input"), dict):
        # A check across a section's keys (or across sections) names its keys in the message;
        # echoing the whole section back would bury it.
        return f"{source}: {msg}" if not loc else f"{source}: {key}: {msg}"
    return f"{source}: {key} = {err.get('input')!r}{origin}: {msg}"


def validate(raw: Any, source: str, overrides: list[str] = (), origins: Origins | None = None) -> Config:
    """``raw`` as a Config; errors name ``source`` or, with ``origins``, the file that set the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    overridden = {".".join(parse_override(o)[0]) for o in overrides}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, source, overridden, origins) for e in exc.errors()]
        more = f" (and {len(lines) - 1} more: {'; '.join(lines[1:])})" if len(lines) > 1 else ""
        raise ConfigError(lines[0] + more) from None


def load_config_with_origins(path: str | os.PathLike, overrides: list[str] = ()) -> LoadedConfig:
    """Read ``path`` and its ``base:`` chain, merge each file over its base (``merge``), apply
    ``--set`` overrides last, validate; raise ConfigError (naming the file that holds the bad
    key) on anything bad."""
    chain = read_chain(path)
    origins: Origins = {}
    raw: Any = {}
    for name, layer in reversed(chain):
        raw = merge(raw, layer, source=name, origins=origins) if isinstance(layer, dict) else layer
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides), origins)
    cfg = validate(raw, str(path), list(overrides), origins)
    return LoadedConfig(cfg, origins, tuple(name for name, _ in chain))


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """Read ``path`` (and its ``base:`` chain), apply ``--set`` overrides, validate; raise
    ConfigError on anything bad."""
    return load_config_with_origins(path, overrides).config


def _dumped(cfg: Config, exclude: set[str] | None = None) -> dict:
    raw = cfg.model_dump(mode="json", exclude=exclude)
    if isinstance(raw.get("schedule"), dict):  # the schedule's name first, as users write it
        raw["schedule"] = {"name": raw["schedule"]["name"],
                           **{k: v for k, v in raw["schedule"].items() if k != "name"}}
    return raw


def to_yaml(cfg: Config, *, exclude: set[str] | None = None) -> str:
    """Every field, defaults included, as YAML that ``load_config`` reads back to an equal config
    (the models' serializers drop what would contradict: e.g. cosine_restarts' ``cycles`` beside
    ``cycle_steps``). ``exclude``: top-level sections to leave out (``{"tune"}`` for best.yaml)."""
    return yaml.safe_dump(_dumped(cfg, exclude), sort_keys=False)


def to_yaml_with_origins(loaded: LoadedConfig) -> str:
    """``to_yaml`` of the config with a comment on each leaf naming who set it (a file,
    ``--set`` or ``default``); lists are written inline, so each leaf is one line. It reads
    back as the same YAML."""
    lines: list[tuple[str, str | None]] = []

    def walk(node: dict, path: tuple[str, ...], indent: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                lines.append((f"{indent}{flow(key)}:", None))
                walk(value, path + (str(key),), indent + "  ")
            else:
                lines.append((f"{indent}{flow(key)}: {flow(value)}", loaded.origin(path + (str(key),))))

    walk(_dumped(loaded.config), (), "")
    width = min(max(len(text) for text, origin in lines if origin), 60)
    return "".join(f"{text.ljust(width)}  # {origin}\n" if origin else f"{text}\n" for text, origin in lines)
