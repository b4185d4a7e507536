"""ZeRO-Offload (``deepspeed.offload: cpu``): DeepSpeed's own optimizer section, so DeepSpeed steps
with its fused ``DeepSpeedCPUAdam`` (the ``cpu_adam`` C++ op) instead of a torch optimizer; the
schedule still drives the LR, and checkpoints restore the offloaded optimizer state."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from raydeep.config import Config
from raydeep.errors import RaydeepError
from raydeep.trainers import engine as E
from raydeep.trainers.engine import deepspeed_config, offloads_optimizer

ROOT = Path(__file__).resolve().parents[2]


def config(**sections) -> Config:
    base = {"name": "offload", "data": {"train": "x", "val": "y", "batch_size": 4},
            "model": {"kind": "linear", "task": "classification", "num_classes": 3},
            "deepspeed": {"zero_stage": 2, "precision": "bf16", "offload": "cpu"}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Config.model_validate(base)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_offload_on_gpus_hands_deepspeed_its_adamw_with_the_runs_settings(stage):
    cfg = config(deepspeed={"zero_stage": stage}, optim={"name": "adamw", "lr": 2e-3, "betas": [0.8, 0.95],
                                                         "weight_decay": 0.05})
    ds = deepspeed_config(cfg, world_size=2, device="cuda")
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert offloads_optimizer(ds)
    assert ds["optimizer"] == {"type": "AdamW", "params": {"lr": 2e-3, "betas": [0.8, 0.95], "eps": 1e-8,
                                                           "weight_decay": 0.05}}
    assert "scheduler" not in ds  # raydeep's schedule sets the LR each step
    json.dumps(ds)  # written to the run dir as deepspeed.json


def test_adam_keeps_l2_weight_decay_as_torch_adam_does():
    ds = deepspeed_config(config(optim={"name": "adam"}), world_size=1, device="cuda")
    # DeepSpeed's type "Adam" means AdamW unless adam_w_mode is false
    assert ds["optimizer"]["type"] == "Adam" and ds["optimizer"]["params"]["adam_w_mode"] is False


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_optimizers_without_a_deepspeed_cpu_op_stay_torch_optimizers(name):
    ds = deepspeed_config(config(optim={"name": name}), world_size=1, device="cuda")
    assert "optimizer" not in ds and ds["zero_force_ds_cpu_optimizer"] is False
    assert offloads_optimizer(ds)


def test_no_offload_no_optimizer_section():
    assert "optimizer" not in deepspeed_config(config(deepspeed={"offload": "none"}), world_size=1, device="cuda")
    # a CPU worker's state is already in host memory: no offload section (the plan refuses offload there)
    ds = deepspeed_config(config(deepspeed={"precision": "fp32"}), world_size=1, device="cpu")
    assert "optimizer" not in ds and not offloads_optimizer(ds)


def test_a_users_file_that_offloads_gets_deepspeeds_adam(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                                "bf16": {"enabled": True}}))
    cfg = config(deepspeed={"config_file": str(path), "offload": "none"}, optim={"lr": 1e-3})
    ds = deepspeed_config(cfg, world_size=1, device="cuda")
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 1e-3
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert "optimizer" not in deepspeed_config(cfg, world_size=1, device="cuda")


def test_the_cpu_adam_check_says_why_in_one_line(monkeypatch):
    import torch.utils.cpp_extension as cpp

    from deepspeed.git_version_info import installed_ops

    monkeypatch.setitem(installed_ops, "cpu_adam", False)  # not prebuilt: DeepSpeed would JIT-build it
    monkeypatch.setattr(cpp, "is_ninja_available", lambda: False)
    assert "ninja" in E.cpu_adam_problem()
    monkeypatch.setattr(cpp, "is_ninja_available", lambda: True)
    monkeypatch.setenv("CXX", "/no/such/c++")
    assert "no C++ compiler" in E.cpu_adam_problem()
    monkeypatch.delenv("CXX")
    assert E.cpu_adam_problem() is None  # this machine has ninja and g++ (the suite builds the op below)

    monkeypatch.setattr(E, "cpu_adam_problem", lambda: "it is not prebuilt and ninja ... is not installed")
    with pytest.raises(RaydeepError) as info:
        E.load_cpu_adam()
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("deepspeed.offload = 'cpu': DeepSpeed's CPU Adam op (cpu_adam) cannot load on node ")
    assert "DS_BUILD_CPU_ADAM=1" in text and "deepspeed.offload: none" in text


def test_a_failed_build_is_one_line(monkeypatch):
    from deepspeed.ops.op_builder import CPUAdamBuilder

    def fail(self, verbose=False):
        raise RuntimeError("Error building extension 'cpu_adam'\n[1/3] c++ ...\nfatal error: immintrin.h: No such file")

    monkeypatch.setattr(E, "cpu_adam_problem", lambda: None)
    monkeypatch.setattr(CPUAdamBuilder, "load", fail)
    with pytest.raises(RaydeepError, match=r"building it failed: RuntimeError: fatal error: immintrin.h") as info:
        E.load_cpu_adam()
    assert "\n" not in str(info.value)


# The real thing, on this CPU: DeepSpeed with raydeep's offload config builds DeepSpeedCPUAdam (its op is
# the one GPU workers use: DeepSpeed's CUDA accelerator takes CPUAdamBuilder from the CPU builders), the
# schedule's LR reaches it, and a checkpoint resumes the same trajectory. Only the plan's "offload is
# refused on CPU workers" is bypassed: the config is made for device "cuda", the engine built on "cpu".
ENGINE_SCRIPT = """
import os, sys
os.environ["DS_ACCELERATOR"] = "cpu"
import torch, torch.distributed as dist
from raydeep.trainers.engine import isolate_extension_builds
isolate_extension_builds()  # the suite's own build of DeepSpeed's C++ ops (cpu_adam: ~1-3 min once)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo")
from raydeep.config import Config
from raydeep.trainers.engine import create_engine, deepspeed_config, set_lr
cfg = Config.model_validate({"name": "t", "data": {"train": "x", "val": "y", "batch_size": 4},
    "model": {"kind": "linear", "task": "classification", "num_classes": 3},
    "optim": {"name": "adamw", "lr": 0.05, "weight_decay": 0.1},
    "deepspeed": {"zero_stage": int(sys.argv[3]), "precision": "fp32", "offload": "cpu"}})
ds = deepspeed_config(cfg, world_size=1, device="cuda")
ds["zero_optimization"]["offload_optimizer"]["pin_memory"] = False  # no CUDA host allocator here
def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return create_engine(cfg, model, ds, "cpu")
torch.manual_seed(1)
xs, ys = torch.randn(5, 4, 8), torch.randint(0, 3, (5, 4))
def step(engine, i, lr):
    set_lr(engine, lr)
    loss = torch.nn.functional.cross_entropy(engine(xs[i]), ys[i])
    engine.backward(loss)
    engine.step()
def params(engine):  # whole parameters (ZeRO-3 holds a partition outside forward)
    import deepspeed
    ps = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(ps, enabled=hasattr(ps[0], "ds_id")):
        return [p.detach().clone() for p in ps]
engine = build()
inner = engine.optimizer.optimizer  # ZeRO's wrapper holds DeepSpeed's optimizer
assert type(inner).__name__ == "DeepSpeedCPUAdam", type(inner)
assert [g["weight_decay"] for g in inner.param_groups] == [0.1, 0.0]  # matrices decay, biases do not
before = params(engine)
step(engine, 0, 0.0)  # the schedule's LR is the one used: 0 moves nothing
assert all(torch.equal(a, b) for a, b in zip(before, params(engine))), "lr 0 moved the weights"
assert all(g["lr"] == 0.0 for g in inner.param_groups)
step(engine, 1, 0.05)
assert not all(torch.equal(a, b) for a, b in zip(before, params(engine))), "lr 0.05 moved nothing"
engine.save_checkpoint(sys.argv[2], tag="t")
step(engine, 2, 0.02); step(engine, 3, 0.01)
expected = params(engine)
resumed = build()
resumed.load_checkpoint(sys.argv[2], tag="t")
assert type(resumed.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam"
step(resumed, 2, 0.02); step(resumed, 3, 0.01)
assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected, params(resumed))), "resume diverged"
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_builds_its_cpu_adam_from_our_config_and_resumes(tmp_path, stage):
    with socket.socket() as s:  # a free port for the one-process gloo group
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, port, str(tmp_path / "ckpt"), str(stage)],
                          capture_output=True, text=True, timeout=800, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok"
