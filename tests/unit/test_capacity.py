"""``raydeep plan``: the memory arithmetic against hand counts, DeepSpeed's own estimators and the
bytes benchmarks/memory.py measured; the command against the real model and the driver's plan."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydeep.config import load_config, validate
from raydeep.datasets import FeatureSpec, write_manifest, write_split
from raydeep.datasets.schema import tokens_array
from raydeep.trainers.capacity import (
    STAGES,
    Budget,
    ModelShape,
    Precision,
    activation_bytes,
    deepspeed_estimate,
    deepspeed_printout,
    fits,
    optimizer_state_bytes,
    stage_memory,
)
from raydeep.trainers.models import build_model
from raydeep.trainers.plan import Steps, plan_data, plan_run
from raydeep.trainers.plan_command import bucket_elements, local_hardware, model_shape

ROOT = Path(__file__).resolve().parents[2]
RAYDEEP = str(Path(sys.executable).parent / "raydeep")
ADAM = optimizer_state_bytes("adamw")
BF16, FP32 = Precision("bf16"), Precision("fp32")


def tiny(**model) -> tuple:
    cfg = validate({"data": {"train": "-", "val": "-", "batch_size": 2},
                    "model": {"kind": "transformer", "num_classes": 3, "d_model": 8, "layers": 1, "heads": 2,
                              "max_len": 4, "vocab_size": 10, "dropout": 0.0, **model}}, "test")
    return cfg, FeatureSpec(column="input_ids", kind="tokens", seq_len=4, vocab_size=10, pad_id=0)


def test_parameter_count_of_a_tiny_transformer_by_hand():
    cfg, feature = tiny()
    # embedding 10x8; positions 4x8; one block: 2 LayerNorms (8+8 each), qkv 8x24+24, proj 8x8+8,
    # fc1 8x32+32, fc2 32x8+8; final LayerNorm 8+8; head 8x3+3
    by_hand = 80 + 32 + (16 + 216 + 72 + 16 + 288 + 264) + 16 + 27
    shape = model_shape(cfg, feature)
    real = build_model(cfg.model, feature)
    assert shape.params == shape.trainable == sum(p.numel() for p in real.parameters()) == by_hand == 1027
    assert shape.largest_layer == 288  # fc1, as DeepSpeed's model_to_params finds it
    assert (shape.layers, shape.hidden, shape.mlp_ratio) == (1, 8, 4.0)


def test_model_states_by_hand():
    shape = ModelShape(params=1000, trainable=1000, largest_layer=100)
    m = stage_memory(shape, stage=0, world=4, precision=FP32, optimizer_bytes=ADAM)
    assert (m.weights, m.gradients, m.optimizer, m.gathered, m.buckets) == (4000, 4000, 8000, 0, 0)  # torch Adam
    m = stage_memory(shape, stage=1, world=4, precision=FP32, optimizer_bytes=ADAM, bucket_elements=10)
    assert (m.weights, m.gradients, m.optimizer, m.buckets) == (4000, 4000, 3000, 40)  # (master 4 + Adam 8) / 4
    m = stage_memory(shape, stage=2, world=4, precision=BF16, optimizer_bytes=ADAM)
    assert (m.weights, m.gradients, m.optimizer) == (2000, 500, 4000)  # (fp32 grads 4 + master 4 + Adam 8) / 4
    m = stage_memory(shape, stage=3, world=4, precision=BF16, optimizer_bytes=ADAM)
    assert (m.weights, m.gradients, m.optimizer, m.gathered) == (500, 500, 4000, 400)
    frozen = ModelShape(params=1000, trainable=100, largest_layer=100)  # e.g. LoRA: only adapters train
    m = stage_memory(frozen, stage=0, world=1, precision=BF16, optimizer_bytes=ADAM)
    assert (m.weights, m.gradients, m.optimizer) == (2000, 200, 1200)  # master 4 + Adam 8, trainable only
    assert [optimizer_state_bytes(n, mom) for n, mom in
            (("adam", 0.9), ("sgd", 0.9), ("sgd", 0.0), ("rmsprop", 0.0), ("rmsprop", 0.9))] == [8, 4, 0, 4, 8]


N, LARGEST = 23_144_452, 4_194_304  # benchmarks/memory.py's model: 23.1M parameters


@pytest.mark.parametrize("world", [2, 4])
def test_zero2_equals_deepspeeds_estimator_where_its_assumptions_hold(world):
    """bf16 + Adam on GPUs of one node: 16-bit weights and grads, fp32 grads for the step, master, Adam."""
    shape = ModelShape(params=N, trainable=N, largest_layer=LARGEST)
    for offload in (False, True):
        mine = stage_memory(shape, stage=2, world=world, precision=BF16, optimizer_bytes=ADAM,
                            offload_optimizer=offload)
        ds = deepspeed_estimate(2, shape, gpus_per_node=world, nodes=1, offload_optimizer=offload,
                                offload_param=False, applies=True)
        assert abs(mine.model_states - ds.device) <= 2  # integer division, ours per term
        if offload:
            # its host figure is per node, times an "additional_buffer_factor" of 1.5
            assert mine.host * world == pytest.approx(ds.host / 1.5, abs=world)
    # and what its printing estimator shows, to its two decimals
    out = deepspeed_printout(shape, gpus_per_node=world, nodes=1)
    none = stage_memory(shape, stage=2, world=world, precision=BF16, optimizer_bytes=ADAM)
    assert re.search(rf"\|\s+{none.model_states / 2**30:.2f}GB \| offload_optimizer=none", out), out


def test_zero3_against_deepspeeds_estimator():
    """With offload the figures agree; without, DeepSpeed leaves out the 16-bit gradient partition
    (2 bytes per parameter / world), which benchmarks/memory.py measured on every rank."""
    shape = ModelShape(params=N, trainable=N, largest_layer=LARGEST)
    world = 2
    for opt, param in ((True, False), (True, True)):
        mine = stage_memory(shape, stage=3, world=world, precision=BF16, optimizer_bytes=ADAM,
                            offload_optimizer=opt, offload_param=param)
        ds = deepspeed_estimate(3, shape, gpus_per_node=world, nodes=1, offload_optimizer=opt, offload_param=param,
                                applies=True)
        assert abs(mine.model_states + mine.gathered - ds.device) <= 2
        assert mine.host * world == pytest.approx(ds.host / 1.5, abs=world)  # zero_init: per node, x 1.5
    mine = stage_memory(shape, stage=3, world=world, precision=BF16, optimizer_bytes=ADAM)
    ds = deepspeed_estimate(3, shape, gpus_per_node=world, nodes=1, offload_optimizer=False, offload_param=False,
                            applies=True)
    assert mine.model_states + mine.gathered - ds.device == pytest.approx(2 * N / world, abs=2)
    assert deepspeed_estimate(0, shape, gpus_per_node=2, nodes=1, offload_optimizer=False, offload_param=False,
                              applies=True) is None


def test_arithmetic_against_the_bytes_benchmarks_memory_measured():
    """benchmarks/results/memory-2026-11-28.json counted every tensor the engines held after backward
    and after step. Stages 0, 2 and 3 match to DeepSpeed's padding; in bf16 the step's fp32 gradient
    partition (4 bytes / world, created and freed inside step) is ours alone; ZeRO-1's measured
    gradients are already partitioned after backward, ours whole (the peak at its end)."""
    result = json.loads((ROOT / "benchmarks/results/memory-2026-11-28.json").read_text())
    cfg = validate({"data": {"train": "-", "val": "-", "batch_size": 2}, "model": result["model"]}, "memory.py")
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=64, vocab_size=result["model"]["vocab_size"],
                          pad_id=0)
    shape = model_shape(cfg, feature)
    assert shape.params == result["num_params"] == N
    world = result["world_size"]
    buckets = min(int(5e8), max(N // 8, 2**22))  # bounded_buckets, as the benchmark's --buckets raydeep
    for row in (r for r in result["measured"] if r["rank"] == 0):
        prec, stage = Precision(row["precision"]), row["zero_stage"]
        mine = stage_memory(shape, stage=stage, world=world, precision=prec, optimizer_bytes=ADAM,
                            bucket_elements=buckets)
        measured = row["parameters"] + row["gradients"] + row["optimizer"]
        expected = mine.model_states - (4 * N // world if prec.mixed and stage >= 2 else 0)
        if stage == 1:
            assert mine.model_states >= measured
        else:
            assert expected == pytest.approx(measured, rel=0.005), (prec.name, stage)
        if stage == 3:
            assert mine.buckets == row["reduce_buckets"]


@pytest.mark.parametrize("world", [2, 3, 8])
@pytest.mark.parametrize("prec", ["bf16", "fp32"])
@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_each_stage_holds_no_more_than_the_one_before(world, prec, optim):
    shape = ModelShape(params=10_000_000, trainable=10_000_000, largest_layer=1_000_000)
    states = [stage_memory(shape, stage=s, world=world, precision=Precision(prec),
                           optimizer_bytes=optimizer_state_bytes(optim)).model_states for s in STAGES]
    assert states[3] <= states[2] <= states[1] <= states[0]
    assert states[3] < states[0]


def test_offload_moves_bytes_from_the_device_to_the_host():
    shape = ModelShape(params=1000, trainable=1000, largest_layer=100)
    kw = dict(world=2, precision=BF16, optimizer_bytes=ADAM)
    for stage in (1, 2, 3):
        on = stage_memory(shape, stage=stage, **kw)
        off = stage_memory(shape, stage=stage, offload_optimizer=True, **kw)
        assert on.host == 0 and off.host == on.optimizer  # fp32 step grads, master and Adam go to the host
        assert off.optimizer == 0 and off.model_states < on.model_states
    both = stage_memory(shape, stage=3, offload_optimizer=True, offload_param=True, **kw)
    assert both.weights == 0 and both.host == stage_memory(shape, stage=3, **kw).optimizer + 1000  # + 2 x 1000 / 2
    zero0 = stage_memory(shape, stage=0, offload_optimizer=True, **kw)
    assert zero0.host == 0 and not zero0.offloaded  # ZeRO-0 cannot offload


def test_the_verdict_flips_when_the_memory_shrinks():
    shape = ModelShape(params=1_000_000, trainable=1_000_000, largest_layer=1000, layers=2, hidden=64, mlp_ratio=4)
    acts = activation_bytes(shape, batch=8, seq_len=32, precision=BF16)
    assert acts == 2 * (8 * 32 * 64 * 18 * 2) + 2 * 8 * 32 * 64 * 2  # 2 blocks of (10 + 2x4) values + 2 per token
    m = stage_memory(shape, stage=2, world=2, precision=BF16, optimizer_bytes=ADAM, activations=acts)
    assert fits(m, Budget(m.device * 2, 2**40, "GPU", "test"))
    assert not fits(m, Budget(m.device, 2**40, "GPU", "test"))  # 90% usable
    off = stage_memory(shape, stage=2, world=2, precision=BF16, optimizer_bytes=ADAM, offload_optimizer=True)
    assert not fits(off, Budget(2**40, off.host, "GPU", "test"))  # the host side counts too


def test_activation_estimate_with_checkpointing_and_logits():
    shape = ModelShape(params=1, trainable=1, largest_layer=1, layers=4, hidden=16, mlp_ratio=2, vocab=100)
    t = 2 * 8
    full = activation_bytes(shape, batch=2, seq_len=8, precision=FP32)
    assert full == 4 * t * 16 * 14 * 4 + 2 * t * 16 * 4 + t * 100 * 12
    ckpt = activation_bytes(shape, batch=2, seq_len=8, precision=FP32, checkpointing=True)
    assert ckpt == 4 * t * 16 * 4 + t * 16 * 14 * 4 + 2 * t * 16 * 4 + t * 100 * 12
    assert activation_bytes(ModelShape(1, 1, 1), batch=2, seq_len=8, precision=FP32) is None


# ---------------------------------------------------------------------------------------------
# The command


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAYDEEP, "plan", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_plan_prints_the_real_parameter_count_and_trains_step_count():
    proc = run_plan("configs/digits-lt.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    cfg = load_config(ROOT / "configs/digits-lt.yaml")
    data = plan_data(cfg)
    plan = plan_run(cfg, local_hardware().info, data)  # what train plans on this machine's local Ray
    assert out["parameters"] == sum(p.numel() for p in build_model(cfg.model, data.feature).parameters())
    assert out["steps"]["per_epoch"] == Steps.of(cfg, data.train.num_rows, plan.world).per_epoch == plan.steps_per_epoch
    assert out["steps"]["total"] == plan.total_steps
    assert (out["resources"]["workers"], out["resources"]["cpus_per_worker"]) == (plan.world, plan.cpus_per_worker)
    assert out["configured_stage"] == 1 and out["fits"] is True
    assert [s["stage"] for s in out["stages"]] == [0, 1, 2, 3]
    assert out["stages"][1]["buckets"] == bucket_elements(plan, model_shape(cfg, data.feature)) * 4
    assert "Setting accelerator" not in proc.stderr

    text = run_plan("configs/sweep-digits-lt.yaml")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == re.sub(r"\[/?(bold)?\]", "", plan.describe().splitlines()[0])  # train's own plan line
    assert f"parameters: {out['parameters']:,};" in text.stdout
    assert re.search(r"^sweep: 16 trials, each \S+ CPU; \d+ at once", text.stdout, re.M), text.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("ZeRO"))
    assert [line.split()[0] for line in lines[header + 1: header + 5]] == ["0", "1*", "2", "3"]
    assert all(line.endswith("fits") for line in lines[header + 1: header + 5])


def test_plan_exits_1_with_one_line_when_nothing_fits():
    proc = run_plan("configs/digits-lt.yaml", "--set", "model.d_model=1024", "--set", "model.layers=12",
                    "--memory-gib", "0.5")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "raydeep: error: plan: no ZeRO stage fits: the smallest, ZeRO-3, needs "), proc.stderr
    assert proc.stdout.count("does not fit") == 4


def test_plan_config_errors_are_one_line_with_exit_2():
    proc = run_plan("configs/digits-lt.yaml", "--set", "model.kind=nope")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "model.kind" in proc.stderr


def test_plan_on_the_causal_lm_config_counts_tied_weights_once(tmp_path):
    """configs/causal-lm.yaml (GPT-2 from config, tied input/output embeddings) on packed blocks."""
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=128, vocab_size=8192, pad_id=-1)
    for split, rows in (("train", 40), ("val", 8)):
        ids = np.random.default_rng(0).integers(3, 8192, size=(rows, 128))
        d = tmp_path / split
        m = write_split(d, pa.table({"input_ids": tokens_array(ids, 128)}), name="lm", split=split, task="causal_lm",
                        feature=feature, num_classes=None, label_names=None, shards=1)
        write_manifest(d, {**m, "eos_id": 2, "block_size": 128})
    sets = ["--set", f"data.train={tmp_path / 'train'}", "--set", f"data.val={tmp_path / 'val'}"]
    proc = run_plan("configs/causal-lm.yaml", *sets, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    cfg = load_config(ROOT / "configs/causal-lm.yaml", [s for s in sets if s != "--set"])
    model = build_model(cfg.model, feature)
    assert out["parameters"] == sum(p.numel() for p in model.parameters())
    assert out["steps"]["per_epoch"] == Steps.of(cfg, 40, 2).per_epoch == 2  # 20 blocks per worker, 16 a step
    logits = 16 * 128 * 8192 * (4 + 8)  # fp32 on CPUs: the logits, their fp32 copy and gradient
    assert out["stages"][0]["activations"] > logits
