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

from raydeep.errors import ConfigError

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
        return {**user, **batch}

    precision = resolve_precision(ds.precision, device)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload == "cpu":
        if ds.zero_stage == 0:
            raise ConfigError("deepspeed.offload = 'cpu' needs deepspeed.zero_stage >= 1")
        # On a CPU-only run the optimizer state already lives in host memory; offloading
        # would only add copies.
        if device == "cuda":
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        # Small models: gather parameters eagerly rather than per-submodule.
        zero["stage3_param_persistence_threshold"] = 0
    return {
        **batch,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        # raydeep passes its own torch optimizer; DeepSpeed must accept it under ZeRO and
        # with CPU offload (its fused CPU Adam needs a C++ op build on every machine).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


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


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """A torch optimizer; weight decay only on matrices (not biases, norms or the CLS token)."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
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
    win on a GPU worker (nor ``cuda`` on a CPU one)."""
    os.environ["DS_ACCELERATOR"] = "cpu" if device == "cpu" else "cuda"


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
