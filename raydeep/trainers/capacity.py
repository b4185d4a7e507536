"""Memory per worker under ZeRO 0-3: model states, reduce buckets and activations, by arithmetic.

Pure arithmetic on parameter counts and the run's shapes (no model, no Ray), plus DeepSpeed's own
estimators called beside it. ``raydeep plan`` prints both; docs/plan.md states the formulas.

Model states are counted at their peak, the optimizer step, per trainable parameter (``T``; the
weights of frozen parameters count too, ``N`` in all), with ``p`` bytes per 16- or 32-bit weight:

=================  ===========================  ==========================
term               bytes                        partitioned over the world
=================  ===========================  ==========================
weights            p x N                        ZeRO-3
gradients          p x T                        ZeRO-2, 3
fp32 step grads    4 x T (mixed precision only) ZeRO-1, 2, 3 (stage 0: none)
fp32 master copy   4 x T (mixed precision, or   ZeRO-1, 2, 3
                   any stage >= 1: DeepSpeed
                   clones even fp32 weights)
optimizer states   8 (Adam), 4 (SGD momentum,   ZeRO-1, 2, 3
                   RMSprop), 8 (RMSprop with
                   momentum), 0 (plain SGD) x T
=================  ===========================  ==========================

ZeRO-1 keeps whole gradients until the end of backward (DeepSpeed reduces and partitions them
then), so its peak holds them unpartitioned. Offloading the optimizer (stages 1-3) moves the
fp32 step gradients, master copy and optimizer states to host memory (at stages 2-3 the
gradient partitions leave the device too: DeepSpeed reduces them into the host's fp32 step
gradients, which in fp32 are the partitions themselves); offloading parameters
(ZeRO-3 only) moves the weight partitions too. ZeRO-3 also holds, while a module computes, its
gathered 16/32-bit weights and gradients (``2p x`` the largest module's parameters).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import asdict, dataclass
from typing import Any

STAGES = (0, 1, 2, 3)
GiB = 2**30
USABLE = 0.9  # of a device's memory: the rest for the CUDA context, allocator slack, NCCL, the process


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs to know about a model (counted on the meta device)."""

    params: int  # every parameter, shared ones once
    trainable: int  # requires_grad: what has gradients and optimizer state
    largest_layer: int  # parameters of the largest single module (DeepSpeed's own definition)
    layers: int | None = None  # transformer blocks; None: not a transformer (no activation estimate)
    hidden: int | None = None
    mlp_ratio: float | None = None
    vocab: int | None = None  # a causal LM's output vocabulary (its logits dominate activations)


@dataclass(frozen=True)
class Precision:
    name: str  # bf16, fp16, fp32

    @property
    def weight_bytes(self) -> int:
        return 4 if self.name == "fp32" else 2

    @property
    def mixed(self) -> bool:
        return self.name != "fp32"


def optimizer_state_bytes(name: str, momentum: float = 0.9) -> int:
    """fp32 bytes of optimizer state per trainable parameter: Adam/AdamW keep two moments, SGD one
    momentum buffer (none without momentum), RMSprop its square average (and a momentum buffer)."""
    if name in ("adam", "adamw"):
        return 8
    if name == "sgd":
        return 4 if momentum > 0 else 0
    if name == "rmsprop":
        return 8 if momentum > 0 else 4
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass(frozen=True)
class StageMemory:
    """Bytes per worker under one ZeRO stage; ``device`` is the GPU (or, on CPU workers, the host)."""

    stage: int
    weights: int
    gradients: int
    optimizer: int  # fp32 step gradients + master copy + optimizer states
    gathered: int  # ZeRO-3: one module's full weights and gradients while it computes
    buckets: int  # gradient-reduction buckets (reduce_bucket_size elements)
    activations: int | None  # None: no estimate for this kind of model
    host: int  # offloaded to host memory (0 without offload)
    offloaded: bool

    @property
    def model_states(self) -> int:
        """Device bytes of weights, gradients and optimizer state (what the ZeRO paper counts)."""
        return self.weights + self.gradients + self.optimizer

    @property
    def device(self) -> int:
        return self.model_states + self.gathered + self.buckets + (self.activations or 0)


def stage_memory(shape: ModelShape, *, stage: int, world: int, precision: Precision, optimizer_bytes: int,
                 offload_optimizer: bool = False, offload_param: bool = False, bucket_elements: int = 0,
                 activations: int | None = None) -> StageMemory:
    """Per-worker bytes under ZeRO ``stage`` on ``world`` data-parallel workers (module docstring)."""
    n, t, p = shape.params, shape.trainable, precision.weight_bytes
    step_grads = 4 if precision.mixed and stage >= 1 else 0
    master = 4 if precision.mixed or stage >= 1 else 0
    opt = (step_grads + master + optimizer_bytes) * t
    opt = opt // world if stage >= 1 else opt
    grads = p * t // world if stage >= 2 else p * t
    weights = p * n // world if stage == 3 else p * n
    offload_optimizer = offload_optimizer and stage >= 1
    offload_param = offload_param and stage == 3
    host = 0
    if offload_optimizer:
        host += opt
        opt = 0
        if stage >= 2:  # reduced straight into the host's fp32 step gradients (counted above in 16-bit)
            host += 0 if precision.mixed else grads
            grads = 0
    if offload_param:
        host += weights
        weights = 0
    gathered = 2 * p * shape.largest_layer if stage == 3 else 0
    buckets = bucket_elements * p if stage >= 1 else 0
    return StageMemory(stage, weights, grads, opt, gathered, buckets, activations, host,
                       offload_optimizer or offload_param)


def activation_bytes(shape: ModelShape, *, batch: int, seq_len: int, precision: Precision,
                     checkpointing: bool = False) -> int | None:
    """A rough upper estimate of the activations one worker keeps for backward, without activation
    checkpointing (after Korthikanti et al. 2022, "Reducing Activation Recomputation"):

        per block: batch x seq_len x hidden x (10 + 2 x mlp_ratio) values
        (LayerNorm inputs and outputs, q/k/v, attention output, projections, residuals, the MLP's
        two wide tensors; attention through scaled_dot_product_attention keeps no seq_len^2 matrix)
        + 2 x batch x seq_len x hidden (embedding output, final LayerNorm)
        + a causal LM's logits: batch x seq_len x vocab x (a + 8) bytes (16/32-bit logits, their
          fp32 copy for the loss and its gradient)

    each value ``a`` bytes (2 in bf16/fp16, 4 in fp32). With activation checkpointing only each
    block's input is kept, plus one block recomputed in backward. None when the model is not a
    transformer (no estimate)."""
    if shape.layers is None or shape.hidden is None:
        return None
    a = precision.weight_bytes
    tokens = batch * seq_len
    block = tokens * shape.hidden * (10 + 2 * (shape.mlp_ratio or 4.0)) * a
    kept = shape.layers * tokens * shape.hidden * a + block if checkpointing else shape.layers * block
    total = kept + 2 * tokens * shape.hidden * a
    if shape.vocab:
        total += tokens * shape.vocab * (a + 8)
    return int(total)


# ---------------------------------------------------------------------------------------------
# DeepSpeed's estimators (deepspeed.runtime.zero): they assume 16-bit weights and gradients with
# an fp32 master copy, fp32 gradients for the step and Adam, and count the host side per node.


@dataclass(frozen=True)
class DeepSpeedEstimate:
    device: int  # per GPU
    host: int  # per node ("per CPU" in its printout), with its 1.5 buffer factor
    applies: bool  # its assumptions (16-bit, Adam) hold for this run


def _name_accelerator() -> None:
    """DeepSpeed picks an accelerator when imported and warns when it finds no GPU; its estimators are
    arithmetic, so name the one there is (as the workers do) and keep the console quiet."""
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")


def deepspeed_estimate(stage: int, shape: ModelShape, *, gpus_per_node: int, nodes: int, offload_optimizer: bool,
                       offload_param: bool, applies: bool) -> DeepSpeedEstimate | None:
    """DeepSpeed's figure for ZeRO-2 or ZeRO-3 (it has none for stages 0 and 1)."""
    _name_accelerator()
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        host, device = estimate_zero2_model_states_mem_needs(
            shape.params, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload_optimizer)
    elif stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        host, device, _ = estimate_zero3_model_states_mem_needs(
            shape.params, shape.largest_layer, num_gpus_per_node=gpus_per_node, num_nodes=nodes,
            cpu_offload=offload_optimizer or offload_param, cpu_offload_params=offload_param, zero_init=True)
    else:
        return None
    return DeepSpeedEstimate(int(device), int(host), applies)


def deepspeed_printout(shape: ModelShape, *, gpus_per_node: int, nodes: int) -> str:
    """What DeepSpeed's own ``*_all_cold`` estimators print for this model (their table, verbatim)."""
    _name_accelerator()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        estimate_zero2_model_states_mem_needs_all_cold(shape.params, num_gpus_per_node=gpus_per_node,
                                                       num_nodes=nodes)
        estimate_zero3_model_states_mem_needs_all_cold(shape.params, shape.largest_layer,
                                                       num_gpus_per_node=gpus_per_node, num_nodes=nodes)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# The verdict


@dataclass(frozen=True)
class Budget:
    """Memory one worker may use: its device (the smallest GPU, or on CPU workers its share of the
    smallest node's memory) and, for offloaded state, its share of its node's host memory."""

    device: int
    host: int
    device_kind: str  # "GPU" or "CPU memory"
    source: str  # where the figures came from, shown to the user


def fits(m: StageMemory, budget: Budget, usable: float = USABLE) -> bool:
    """Whether ``m`` fits ``usable`` of the budget, on the device and, when offloaded, on the host.
    On CPU workers the device is the host: offload is refused there (``plan_run``)."""
    return m.device <= usable * budget.device and m.host <= usable * budget.host


def as_dict(m: StageMemory) -> dict[str, Any]:
    return {**asdict(m), "model_states": m.model_states, "device_total": m.device}
