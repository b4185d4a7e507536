"""``raydeep plan CONFIG``: what a run would take and whether it fits, without training.

The run is planned by the driver's own code (``plan_data`` + ``plan_run``: the same workers, CPUs,
precision, DeepSpeed JSON and step counts ``train`` prints); the model is built on the meta device
to count its parameters; ``capacity`` turns those into bytes per worker under ZeRO 0-3 and a
verdict against the smallest GPU (or, on CPU workers, each worker's share of a node's memory).

Without ``--address`` nothing is started: the local machine is described as an embedded local Ray
would see it (its CPU count, ``torch.cuda``'s GPUs, ``psutil``'s memory). With ``--address`` the
driver joins the cluster like ``train`` does, reads its nodes, and asks each GPU node's
``nvidia-smi`` (a zero-CPU task) for its GPUs' memory.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

import torch

from raydeep.cluster.connect import ClusterInfo, connect
from raydeep.config import Config
from raydeep.datasets.schema import FeatureSpec
from raydeep.errors import RaydeepError
from raydeep.trainers.capacity import (
    GiB,
    STAGES,
    USABLE,
    Budget,
    DeepSpeedEstimate,
    ModelShape,
    Precision,
    StageMemory,
    activation_bytes,
    as_dict,
    deepspeed_estimate,
    fits,
    optimizer_state_bytes,
    stage_memory,
)
from raydeep.trainers.engine import offloads_optimizer, precision_of
from raydeep.trainers.models import build_model, count_parameters
from raydeep.trainers.plan import MIN_BUCKET, RunPlan, plan_data, plan_run

DEEPSPEED_BUCKET = int(5e8)  # DeepSpeed's default reduce_bucket_size (elements)


class NothingFits(RaydeepError):
    """No ZeRO stage fits the memory a worker has (exit 1)."""


# ---------------------------------------------------------------------------------------------
# The machines


@dataclass(frozen=True)
class Hardware:
    info: ClusterInfo
    node_memory: int  # bytes: the smallest node's
    gpu_memory: int | None  # bytes: the smallest GPU's; None: no GPUs, or not found out
    gpus_per_node: int  # the most GPUs on one node
    source: str


def local_hardware() -> Hardware:
    """This machine as a local Ray would see it, without starting one."""
    import psutil

    try:
        from ray._private.utils import get_num_cpus  # what ray.init() counts (cgroup limits included)

        cpus = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a private helper: fall back on the OS
        cpus = float(os.cpu_count() or 1)
    gpus, gpu_memory = 0, None
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        gpu_memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus)) if gpus else None
    info = ClusterInfo(address=None, cpus=cpus, gpus=float(gpus), nodes=1, max_node_cpus=cpus, dashboard_url=None)
    return Hardware(info, int(psutil.virtual_memory().total), gpu_memory, gpus, "this machine (no Ray started)")


def _nvidia_smi_memory() -> list[int]:
    """Total memory of each GPU on this node, in bytes (nvidia-smi sees them all, whatever
    CUDA_VISIBLE_DEVICES says)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [int(float(line)) * 2**20 for line in out.split() if line.strip()]


def cluster_hardware(address: str, verbose: bool = False) -> Hardware:
    """The cluster at ``address``: joined as a driver (as ``train`` does), its nodes read, each GPU
    node's GPU memory asked of nvidia-smi in a zero-CPU task pinned to it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    info = connect(address, verbose=verbose)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    memory = [int(n["Resources"].get("memory", 0) + n["Resources"].get("object_store_memory", 0)) for n in nodes]
    gpu_nodes = [n for n in nodes if n["Resources"].get("GPU", 0) > 0]
    gpu_memory = None
    if gpu_nodes:
        probe = ray.remote(num_cpus=0)(_nvidia_smi_memory)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in gpu_nodes]
        try:
            found = [m for per_node in ray.get(refs, timeout=60) for m in per_node]
            gpu_memory = min(found) if found else None
        except Exception:  # noqa: BLE001 - no nvidia-smi, a busy node: say unknown, --memory-gib decides
            gpu_memory = None
    per_node = max((int(n["Resources"].get("GPU", 0)) for n in nodes), default=0)
    return Hardware(info, min(memory, default=0), gpu_memory, per_node, f"the cluster at {address}")


# ---------------------------------------------------------------------------------------------
# The model


def model_shape(cfg: Config, feature: FeatureSpec) -> ModelShape:
    """Parameter counts (on the meta device: shapes only) and, for transformers, the widths the
    activation estimate needs."""
    with torch.device("meta"):
        model = build_model(cfg.model, feature)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a shared (tied) one once
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    shape = ModelShape(params=params, trainable=count_parameters(model), largest_layer=largest)
    m = cfg.model
    if m.kind == "transformer":
        return ModelShape(**{**shape.__dict__, "layers": m.layers, "hidden": m.d_model, "mlp_ratio": m.mlp_ratio})
    if m.kind == "hf":
        hf = getattr(getattr(model, "model", model), "config", None)
        hidden = _first(hf, "hidden_size", "n_embd", "d_model", "dim")
        layers = _first(hf, "num_hidden_layers", "n_layer", "num_layers")
        if hidden and layers:
            inner = _first(hf, "intermediate_size", "n_inner", "ffn_dim", "hidden_dim") or 4 * hidden
            vocab = _first(hf, "vocab_size") if m.task == "causal_lm" else None
            return ModelShape(**{**shape.__dict__, "layers": layers, "hidden": hidden, "mlp_ratio": inner / hidden,
                                 "vocab": vocab})
    return shape


def _first(obj: Any, *names: str) -> int | None:
    for name in names:
        v = getattr(obj, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def sequence_length(cfg: Config, feature: FeatureSpec) -> int:
    """Positions each row runs through the blocks: its tokens or image patches (+ a CLS token)."""
    extra = 1 if cfg.model.kind == "transformer" and cfg.model.pooling == "cls" else 0
    if feature.kind == "tokens":
        return int(feature.seq_len or cfg.model.max_len) + extra
    if feature.kind == "image" and feature.image_shape:
        _, h, w = feature.image_shape
        return (h // cfg.model.patch_size) * (w // cfg.model.patch_size) + extra
    return 1


def bucket_elements(plan: RunPlan, shape: ModelShape) -> int:
    """``reduce_bucket_size`` as the workers would get it: the user's file's, else as ``bounded_buckets``
    sizes it for raydeep's own JSON (DeepSpeed's default under a user's file that leaves it out)."""
    zero = plan.ds_config.get("zero_optimization", {})
    if "reduce_bucket_size" in zero:
        return int(zero["reduce_bucket_size"])
    if plan.cfg.deepspeed.config_file:
        return DEEPSPEED_BUCKET
    return int(min(DEEPSPEED_BUCKET, max(shape.trainable // 8, MIN_BUCKET)))


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class StagePlan:
    memory: StageMemory
    deepspeed: DeepSpeedEstimate | None
    fits: bool | None  # None: the device's memory is unknown


@dataclass
class CapacityPlan:
    run: RunPlan
    hardware: Hardware
    shape: ModelShape
    precision: str
    offload: str
    seq_len: int
    budget: Budget | None
    workers_per_node: int
    stages: list[StagePlan]
    sweep: Any = None  # set by the caller for a config with a tune: section (sweeps/capacity.py)
    notes: list[str] = field(default_factory=list)

    @property
    def configured_stage(self) -> int:
        return int(self.run.ds_config.get("zero_optimization", {}).get("stage", 0))

    @property
    def any_fits(self) -> bool | None:
        verdicts = [s.fits for s in self.stages]
        return None if None in verdicts and not any(verdicts) else any(verdicts)


def capacity_plan(cfg: Config, *, address: str | None = None, memory_gib: float | None = None,
                  verbose: bool = False) -> CapacityPlan:
    """Plan ``cfg`` as ``train`` would and size it under every ZeRO stage (no training)."""
    data = plan_data(cfg)  # the data checks first: a bad path fails before any cluster is joined
    hw = cluster_hardware(address, verbose) if address else local_hardware()
    run = plan_run(cfg, hw.info, data)
    shape = model_shape(cfg, data.feature)
    precision = Precision(precision_of(run.ds_config))
    zero = run.ds_config.get("zero_optimization", {})
    offload_opt = offloads_optimizer(run.ds_config)
    offload_param = (zero.get("offload_param") or {}).get("device") in ("cpu", "nvme")
    seq = sequence_length(cfg, data.feature)
    acts = activation_bytes(shape, batch=cfg.data.batch_size, seq_len=seq, precision=precision,
                            checkpointing=cfg.model.kind == "hf" and cfg.model.gradient_checkpointing)
    opt_bytes = optimizer_state_bytes(cfg.optim.name, cfg.optim.momentum)
    buckets = bucket_elements(run, shape)

    if run.use_gpu:
        per_node = max(1, min(run.world, int(hw.gpus_per_node // cfg.scaling.gpus_per_worker)))
    else:
        per_node = max(1, min(run.world, math.floor(hw.info.max_node_cpus / run.cpus_per_worker + 1e-9)))
    host_share = hw.node_memory // per_node
    budget: Budget | None
    if memory_gib is not None:
        device = int(memory_gib * GiB)
        budget = Budget(device, host_share if run.use_gpu else device, "GPU" if run.use_gpu else "CPU memory",
                        f"--memory-gib {memory_gib:g}")
    elif run.use_gpu:
        budget = None if hw.gpu_memory is None else Budget(
            hw.gpu_memory, host_share, "GPU", f"the smallest GPU, {hw.gpu_memory / GiB:.1f} GiB")
    else:
        budget = Budget(host_share, host_share, "CPU memory",
                        f"{hw.node_memory / GiB:.1f} GiB node memory / {per_node} worker(s) on it")

    nodes = max(1, math.ceil(run.world / per_node))
    applies = precision.mixed and cfg.optim.name in ("adam", "adamw")
    stages = []
    for stage in STAGES:
        mem = stage_memory(shape, stage=stage, world=run.world, precision=precision, optimizer_bytes=opt_bytes,
                           offload_optimizer=offload_opt, offload_param=offload_param, bucket_elements=buckets,
                           activations=acts)
        ds = deepspeed_estimate(stage, shape, gpus_per_node=min(per_node, run.world), nodes=nodes,
                                offload_optimizer=mem.offloaded and offload_opt,
                                offload_param=mem.offloaded and offload_param, applies=applies)
        stages.append(StagePlan(mem, ds, None if budget is None else fits(mem, budget)))

    notes = []
    if acts is None:
        notes.append(f"no activation estimate for model.kind {cfg.model.kind!r} (transformers only): the totals "
                     "hold model states and buckets alone")
    if not applies:
        notes.append(f"DeepSpeed's estimators assume 16-bit weights with an fp32 master copy and Adam; this run is "
                     f"{precision.name} with {cfg.optim.name}, so its figures are shown for reference only")
    if budget is None:
        notes.append("the GPUs' memory could not be found out (no nvidia-smi on the GPU nodes?); give it with "
                     "--memory-gib")
    return CapacityPlan(run, hw, shape, precision.name, "cpu" if offload_opt or offload_param else "none", seq,
                        budget, per_node, stages, notes=notes)


# ---------------------------------------------------------------------------------------------
# Output


def size(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if n == 0:
        return "0"
    return f"{n / 2**10:.1f} KiB"


def _verdict(s: StagePlan) -> str:
    return "unknown" if s.fits is None else "fits" if s.fits else "does not fit"


def format_plan(p: CapacityPlan) -> str:
    """The plan as plain text: the run's own plan line, resources, parameters, steps, then a table
    of bytes per worker under each ZeRO stage with DeepSpeed's figure beside raydeep's and a verdict."""
    from rich.text import Text

    run, cfg, hw, shape = p.run, p.run.cfg, p.hardware, p.shape
    info = hw.info
    lines = [Text.from_markup(run.describe()).plain]
    gpus = f", {info.gpus:g} GPUs" + (f" ({hw.gpu_memory / GiB:.1f} GiB the smallest)" if hw.gpu_memory else "")
    lines.append(f"resources: {hw.source}: {info.cpus:g} CPUs{gpus if info.gpus else ', no GPUs'}, "
                 f"{info.nodes} node(s), {hw.node_memory / GiB:.1f} GiB memory (smallest node); "
                 f"{run.world} workers x {run.cpus_per_worker:g} CPU"
                 + (f" + {cfg.scaling.gpus_per_worker:g} GPU" if run.use_gpu else "")
                 + f", {p.workers_per_node} per node")
    if p.sweep is not None:
        lines.append(f"sweep: {p.sweep.describe()}")
    frozen = f" ({shape.trainable:,} trainable)" if shape.trainable != shape.params else ""
    lines.append(f"parameters: {shape.params:,}{frozen}; largest layer {shape.largest_layer:,}")
    s = run.steps
    lines.append(f"steps: {s.per_epoch} per epoch per worker x {cfg.run.epochs} epochs = {s.total} optimizer steps "
                 f"(grad_accum {cfg.optim.grad_accum})")
    budget = (f"{size(p.budget.device)} {p.budget.device_kind} per worker ({p.budget.source}), {USABLE:.0%} usable"
              if p.budget else "unknown (use --memory-gib)")
    lines.append(f"memory per worker: {p.precision}, offload {p.offload}, {run.world} data-parallel workers, "
                 f"batch {cfg.data.batch_size} x {p.seq_len} positions; budget {budget}")
    lines.append("")
    head = ["ZeRO", "weights", "grads", "optimizer", "gathered", "buckets", "activations", "device total",
            "host (offload)", "DeepSpeed device", "DeepSpeed host/node", "verdict"]
    rows = []
    for sp in p.stages:
        m, ds = sp.memory, sp.deepspeed
        mark = "*" if m.stage == p.configured_stage else ""
        rows.append([f"{m.stage}{mark}", size(m.weights), size(m.gradients), size(m.optimizer),
                     size(m.gathered), size(m.buckets), size(m.activations), size(m.device),
                     size(m.host) if m.offloaded else "-",
                     "-" if ds is None else size(ds.device) + ("" if ds.applies else " (n/a)"),
                     "-" if ds is None else size(ds.host) + ("" if ds.applies else " (n/a)"), _verdict(sp)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.rjust(w) if i < len(r) - 1 else c for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines += [fmt(head), *map(fmt, rows)]
    lines.append(f"* the configured stage (deepspeed.zero_stage). device total = weights + grads + optimizer + "
                 "gathered + buckets + activations (a rough upper estimate without activation checkpointing); "
                 "docs/plan.md has the formulas")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines) + "\n"


def plan_json(p: CapacityPlan) -> dict[str, Any]:
    run, info = p.run, p.hardware.info
    return {
        "name": run.cfg.name,
        "resources": {"source": p.hardware.source, "cpus": info.cpus, "gpus": info.gpus, "nodes": info.nodes,
                      "node_memory": p.hardware.node_memory, "gpu_memory": p.hardware.gpu_memory,
                      "workers": run.world, "cpus_per_worker": run.cpus_per_worker, "use_gpu": run.use_gpu,
                      "gpus_per_worker": run.cfg.scaling.gpus_per_worker if run.use_gpu else 0,
                      "workers_per_node": p.workers_per_node},
        "sweep": None if p.sweep is None else p.sweep.as_dict(),
        "parameters": p.shape.params, "trainable_parameters": p.shape.trainable,
        "largest_layer_parameters": p.shape.largest_layer,
        "steps": {"per_epoch": run.steps.per_epoch, "optimizer_per_epoch": run.steps.optimizer_per_epoch,
                  "total": run.steps.total, "epochs": run.cfg.run.epochs},
        "precision": p.precision, "offload": p.offload, "configured_stage": p.configured_stage,
        "batch_size": run.cfg.data.batch_size, "seq_len": p.seq_len,
        "budget": None if p.budget is None else {"device": p.budget.device, "host": p.budget.host,
                                                 "device_kind": p.budget.device_kind, "source": p.budget.source,
                                                 "usable_fraction": USABLE},
        "stages": [{**as_dict(s.memory), "deepspeed": None if s.deepspeed is None else s.deepspeed.__dict__,
                    "fits": s.fits} for s in p.stages],
        "fits": p.any_fits,
        "notes": p.notes,
    }


def plan_command(cfg: Config, *, address: str | None = None, memory_gib: float | None = None, as_json: bool = False,
                 verbose: bool = False, sweep=None) -> CapacityPlan:
    """Plan, print (text or JSON), and raise ``NothingFits`` when no stage fits. ``sweep``: a function
    of the plan that returns the sweep's fit (the CLI passes ``sweeps.capacity.sweep_fit``)."""
    p = capacity_plan(cfg, address=address, memory_gib=memory_gib, verbose=verbose)
    if sweep is not None and cfg.tune is not None:
        p.sweep = sweep(cfg, p.hardware.info, p.run.data)
    print(json.dumps(plan_json(p), indent=2) if as_json else format_plan(p), end="\n" if as_json else "", flush=True)
    if p.any_fits is False:
        smallest = min(p.stages, key=lambda s: s.memory.device)
        raise NothingFits(f"plan: no ZeRO stage fits: the smallest, ZeRO-{smallest.memory.stage}, needs "
                          f"{size(smallest.memory.device)} per worker; {p.budget.device_kind} per worker is "
                          f"{size(p.budget.device)} ({USABLE:.0%} usable)")
    return p
