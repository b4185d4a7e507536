"""The DeepSpeed engine each worker wraps its model in.

The DeepSpeed JSON is resolved once, on the driver (``deepspeed_config``), saved in the run
directory, and shipped to the workers, so what ran is exactly what the run dir says.
The engine itself is built on the worker (``create_engine``), after Ray Train has set up the
process group (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raydeep.errors import ConfigError, RaydeepError

if TYPE_CHECKING:
    import torch

    from raydeep.config import Config

Device = Literal["cpu", "cuda"]

# DeepSpeed's keys for batch geometry: a user's ds_config.json may leave them out or say "auto";
# raydeep owns them because the data pipeline must agree with them.
_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def resolve_precision(requested: str, device: Device) -> str:
    """``auto`` is bf16 on GPUs and fp32 on CPUs, as the driver sees it.

    On CPUs without AMX, bf16 matmuls are slower than fp32 and lose accuracy, so ``auto``
    does not pick them there; ask for ``bf16`` explicitly to use it. A GPU without bf16
    (compute capability < 8.0) turns ``auto`` into fp16 on the worker (``settle_precision``),
    which has the device.
    """
    if requested != "auto":
        return requested
    return "bf16" if device == "cuda" else "fp32"


def deepspeed_config(cfg: Config, *, world_size: int, device: Device) -> dict[str, Any]:
    """The DeepSpeed JSON for this run, from the config or from the user's file."""
    micro = cfg.data.batch_size
    accum = cfg.optim.grad_accum
    batch = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
    }
    ds = cfg.deepspeed
    if ds.config_file:
        path = Path(ds.config_file)
        try:
            user = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"deepspeed.config_file: {path}: file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"deepspeed.config_file: {path}: not valid JSON: {exc}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"deepspeed.config_file: {path}: expected a JSON object")
        for key in _BATCH_KEYS:
            if key in user and user[key] != "auto" and user[key] != batch[key]:
                raise ConfigError(
                    f"deepspeed.config_file: {path}: {key} = {user[key]!r} disagrees with the run "
                    f"(data.batch_size, optim.grad_accum and scaling.num_workers give {batch[key]}); "
                    f"remove it or set it to \"auto\""
                )
        if "optimizer" in user or "scheduler" in user:
            raise ConfigError(
                f"deepspeed.config_file: {path}: remove 'optimizer'/'scheduler'; "
                "raydeep builds them from the optim: and schedule: sections"
            )
        # A file that offloads the optimizer gets raydeep's Adam/AdamW as DeepSpeed's own (CPU Adam)
        return with_offload_optimizer({**user, **batch}, cfg)

    precision = resolve_precision(ds.precision, device)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload == "cpu":
        if ds.zero_stage == 0:
            raise ConfigError("deepspeed.offload = 'cpu' needs deepspeed.zero_stage >= 1")
        # On a CPU-only run the optimizer state already lives in host memory; offloading
        # would only add copies (and the plan refuses offload on CPU workers).
        if device == "cuda":
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        # Small models: gather parameters eagerly rather than per-submodule.
        zero["stage3_param_persistence_threshold"] = 0
    out = {
        **batch,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        # Without offload raydeep passes its own torch optimizer, which DeepSpeed must accept
        # under ZeRO; with offload, Adam/AdamW come from the "optimizer" section below.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return with_offload_optimizer(out, cfg)


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    """Whether ZeRO keeps the optimizer state (and its step) in host memory or on NVMe."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device") in ("cpu", "nvme")


def optimizer_section(cfg: Config) -> dict[str, Any] | None:
    """DeepSpeed's ``optimizer`` section for ``optim:``: Adam and AdamW, the optimizers DeepSpeed has a
    host-side C++ op for (``DeepSpeedCPUAdam``); None for the others (sgd, rmsprop), which stay torch
    optimizers that DeepSpeed steps on the host copy.

    The weight decay here is the default of the two parameter groups ``param_groups`` hands DeepSpeed
    (matrices decay, biases and norms do not); the LR is the peak LR, and the worker's schedule sets
    it on the engine's optimizer before every step (``set_lr``), as without offload.
    """
    o = cfg.optim
    if o.name not in ("adam", "adamw"):
        return None
    params: dict[str, Any] = {"lr": o.lr, "betas": list(o.betas), "eps": 1e-8, "weight_decay": o.weight_decay}
    if o.name == "adam":
        # DeepSpeed turns type "Adam" into AdamW unless told otherwise; torch.optim.Adam (what
        # raydeep runs without offload) adds weight decay to the gradient (L2).
        params["adam_w_mode"] = False
    return {"type": "AdamW" if o.name == "adamw" else "Adam", "params": params}


def with_offload_optimizer(ds_config: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """``ds_config`` with DeepSpeed's own optimizer when ZeRO offloads it, so DeepSpeed builds its
    fused ``DeepSpeedCPUAdam`` (the ``cpu_adam`` C++ op) instead of stepping a torch optimizer on
    the host. Without offload, or for sgd/rmsprop, ``ds_config`` is returned unchanged."""
    if not offloads_optimizer(ds_config):
        return ds_config
    section = optimizer_section(cfg)
    if section is None:  # a torch optimizer on the host; DeepSpeed must be told that is intended
        return {**ds_config, "zero_force_ds_cpu_optimizer": False}
    return {**ds_config, "optimizer": section}


def precision_of(ds_config: dict[str, Any]) -> str:
    if ds_config.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def auto_precision(capability: tuple[int, int] | None) -> str:
    """``precision: auto`` for a worker's device: fp32 on CPUs (``capability`` None), bf16 on GPUs of
    compute capability 8.0 or newer (A100, H100, ...), else fp16 with DeepSpeed's dynamic loss
    scaling (V100, T4)."""
    if capability is None:
        return "fp32"
    return "bf16" if capability >= (8, 0) else "fp16"


def with_precision(ds_config: dict[str, Any], precision: str) -> dict[str, Any]:
    """``ds_config`` switched to ``precision`` (fp16 scales the loss dynamically: loss_scale 0)."""
    return {**ds_config, "bf16": {"enabled": precision == "bf16"},
            "fp16": {**ds_config.get("fp16", {}), "enabled": precision == "fp16", "loss_scale": 0}}


def settle_precision(ds_config: dict[str, Any], requested: str, device: Device) -> dict[str, Any]:
    """On the worker, which has the device: ``auto`` becomes what this GPU runs best; an explicit
    bf16 the GPU cannot run fails with what to do instead."""
    import torch

    if device != "cuda":
        return ds_config
    capability = torch.cuda.get_device_capability()
    if requested == "auto":
        return with_precision(ds_config, auto_precision(capability))
    if precision_of(ds_config) == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"deepspeed.precision: {torch.cuda.get_device_name()} has no bf16; "
            "set deepspeed.precision: fp16 (or auto)"
        )
    return ds_config


def param_groups(cfg: Config, model: torch.nn.Module) -> list[dict[str, Any]]:
    """Weight decay only on matrices (not biases, norms or the CLS token)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """A torch optimizer over ``param_groups``."""
    import torch

    groups = param_groups(cfg, model)
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    if o.name == "adam":
        # Adam's weight decay is L2 added to the gradient (not decoupled as in AdamW).
        return torch.optim.Adam(groups, lr=o.lr, betas=o.betas)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=o.lr, momentum=o.momentum)
    raise ConfigError(f"optim.name = {o.name!r}: not supported")


def select_accelerator(device: Device) -> None:
    """Tell DeepSpeed which accelerator this worker uses; must run before deepspeed is first
    imported in the process. Set, not defaulted: an inherited ``DS_ACCELERATOR=cpu`` must not
    win on a GPU worker (nor ``cuda`` on a CPU one). The worker calls it first thing, so a GPU
    worker that cannot see its GPU fails here, in one line naming its node and rank."""
    os.environ["DS_ACCELERATOR"] = "cpu" if device == "cpu" else "cuda"
    announce_worker()
    if device == "cuda":
        check_gpu_visible()


# Ray's internal key-value store (in the GCS, reachable from every node) holds each worker's node,
# so the driver can name the node of a rank whose error does not say it (a NCCL time-out does not).
NODE_KV_NAMESPACE = "raydeep"


def node_key(run_name: str, rank: int) -> str:
    return f"node/{run_name}/{rank}"


def worker_identity() -> tuple[str, int | None, str | None]:
    """(node IP or host name, world rank or None, Train run name or None) of this process."""
    import socket
    import sys

    rank = int(os.environ["RANK"]) if os.environ.get("RANK", "").isdigit() else None
    node, run = socket.gethostname(), None
    if "ray" not in sys.modules:  # a process that never used Ray (a benchmark, a unit test)
        return node, rank, run
    try:
        import ray

        if ray.is_initialized():
            import ray.train
            from ray.util import get_node_ip_address

            node = get_node_ip_address()

            ctx = ray.train.get_context()
            rank, run = ctx.get_world_rank(), ctx.get_experiment_name()
    except Exception:  # noqa: BLE001 - not inside a Train worker: the host name and RANK will do
        pass
    return node, rank, run


def where(node: str, rank: int | None) -> str:
    return f"node {node} rank {rank}" if rank is not None else f"node {node}"


def announce_worker() -> None:
    """Record this worker's node under its run and rank in Ray's key-value store (best effort)."""
    node, rank, run = worker_identity()
    if run is None or rank is None:
        return
    try:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(node_key(run, rank), node, overwrite=True, namespace=NODE_KV_NAMESPACE)
    except Exception:  # noqa: BLE001 - only error messages read it
        pass


def check_gpu_visible() -> None:
    """A GPU worker that sees no GPU fails at once, in one line naming its node and rank (else
    DeepSpeed or NCCL fails later with a message that names neither)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    node, rank, _ = worker_identity()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    why = ("this torch has no CUDA (a CPU build)" if torch.version.cuda is None else
           f"torch.cuda.is_available() is False, device count {torch.cuda.device_count()}, "
           f"CUDA_VISIBLE_DEVICES={visible!r}")
    raise RaydeepError(f"GPU worker on {where(node, rank)} cannot see a GPU: {why}; check the node's driver "
                       "(nvidia-smi) and that Ray gave the worker a GPU (its resources and the image's torch build)")


def cpu_adam_problem() -> str | None:
    """Why DeepSpeed's ``cpu_adam`` op (the C++ Adam ZeRO-Offload steps with) cannot be loaded
    here, or None: ``ds_report``'s checks. Prebuilt into the install (``DS_BUILD_CPU_ADAM=1``, as
    cluster/Dockerfile does) it loads as is; else DeepSpeed JIT-builds it, which needs the op's
    compatibility check to pass, ninja and a C++ compiler."""
    import shutil

    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops
    from deepspeed.ops.op_builder import CPUAdamBuilder

    if installed_ops.get("cpu_adam", False) and accelerator_name == get_accelerator()._name:
        return None
    builder = CPUAdamBuilder()
    try:
        compatible = builder.is_compatible(verbose=False)
    except Exception as exc:  # noqa: BLE001 - a probe that fails is an incompatible op (as ds_report says)
        return f"its compatibility check failed: {exc}"
    if not compatible:
        log = "; ".join(str(x) for x in (getattr(builder, "error_log", None) or []) if x)
        return "DeepSpeed reports it not compatible with this machine" + (f" ({log})" if log else "")
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "it is not prebuilt and ninja, which DeepSpeed builds it with, is not installed"
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        return f"it is not prebuilt and there is no C++ compiler ({compiler!r} not found)"
    return None


def load_cpu_adam() -> None:
    """Load (building it on first use: ~1 min) DeepSpeed's ``cpu_adam`` op, or fail in one line."""
    problem = cpu_adam_problem()
    if problem is None:
        try:
            from deepspeed.ops.op_builder import CPUAdamBuilder

            CPUAdamBuilder().load(verbose=False)
            return
        except Exception as exc:  # noqa: BLE001 - a failed compile: its last line says why
            text = str(exc).strip().splitlines()
            problem = f"building it failed: {type(exc).__name__}: {text[-1] if text else ''}"
    node, rank, _ = worker_identity()
    raise RaydeepError(f"deepspeed.offload = 'cpu': DeepSpeed's CPU Adam op (cpu_adam) cannot load on "
                       f"{where(node, rank)}: {problem}. Prebuild it (DS_BUILD_CPU_ADAM=1 pip install deepspeed, "
                       "as cluster/Dockerfile does), install ninja and g++ on the workers, or set "
                       "deepspeed.offload: none")


def create_engine(cfg: Config, model: torch.nn.Module, ds_config: dict[str, Any], device: Device,
                  verbose: bool = False):
    """Wrap ``model`` in a DeepSpeed engine inside an already-initialised process group."""
    select_accelerator(device)
    import logging

    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        import warnings

        # DeepSpeed's ZeRO step calls it; torch 2.13 deprecates it with a FutureWarning that
        # filled the console with one line per step and worker. Nothing the user can act on.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                                category=FutureWarning)

    isolate_extension_builds()
    ds_config = settle_precision(ds_config, cfg.deepspeed.precision, device)
    if "optimizer" in ds_config:  # ZeRO-Offload: DeepSpeed builds DeepSpeedCPUAdam from the section
        load_cpu_adam()
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups(cfg, model), config=ds_config, dist_init_required=False
        )
        return engine
    optimizer = build_optimizer(cfg, model)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, dist_init_required=False
    )
    return engine


def isolate_extension_builds() -> str:
    """Give this Python environment its own folder for the C++ ops DeepSpeed compiles at run time.

    On CPUs DeepSpeed JIT-builds its shared-memory all-reduce op (``deepspeed_shm_comm``, a g++
    build of ~30 s) into torch's extension cache, one folder per Python version and accelerator
    (``~/.cache/torch_extensions/py311_cpu``). The build's hash covers its include paths, which
    name the virtualenv: two environments on one machine (a project checkout and its CI clone,
    two projects) rebuild the op every time the other one has run, and every start of a run
    that follows pays the 30 s (benchmarks/startup.py measured "DeepSpeed init" 27.8 s instead of
    3.4 s). Here each environment gets ``<torch's cache root>/raydeep-<hash of sys.prefix,
    Python, torch and its accelerator>``, so it builds once. ``TORCH_EXTENSIONS_DIR`` set by the
    user wins. Returns the folder in use.
    """
    import hashlib
    import sys

    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        key = "|".join([os.path.realpath(sys.prefix), sys.version, torch.__version__,
                        str(torch.version.cuda), str(torch.version.hip)])
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(
            get_default_build_root(), "raydeep-" + hashlib.sha1(key.encode()).hexdigest()[:12])
    return os.environ["TORCH_EXTENSIONS_DIR"]


def l1_penalty(model: torch.nn.Module, coeff: float):
    """``coeff * sum |W|`` over weight matrices (the parameters weight decay applies to)."""
    return coeff * sum(p.abs().sum() for p in model.parameters() if p.requires_grad and p.ndim >= 2)


def held_parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameters this worker holds: its partition under ZeRO-3 (``ds_tensor``), else all."""
    held = (getattr(p, "ds_tensor", p) for p in module.parameters())
    return sum(t.numel() * t.element_size() for t in held)


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def input_dtype(engine) -> torch.dtype:
    """The dtype float inputs must have to match the engine's parameters (bf16/fp16/fp32)."""
    import torch

    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32
