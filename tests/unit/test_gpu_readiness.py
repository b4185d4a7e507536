"""GPU readiness as pure functions of the cluster and the device: how many workers
``num_workers: auto`` takes, and which precision ``auto`` picks on which GPU."""

from __future__ import annotations

import pytest

from raydeep.errors import RaydeepError
from raydeep.trainers.engine import auto_precision, precision_of, with_precision
from raydeep.trainers.plan import CPU_WORKERS, resolve_workers


@pytest.mark.parametrize("requested, use_gpu, gpus, per_worker, workers", [
    ("auto", False, 0, 1, CPU_WORKERS),   # a laptop: today's 2 CPU workers
    ("auto", False, 8, 1, CPU_WORKERS),   # use_gpu: false on a GPU cluster
    ("auto", True, 1, 1, 1),              # one GPU node: the demo must not ask for 2
    ("auto", True, 8, 1, 8),              # 8 GPUs on 2 nodes
    ("auto", True, 8, 2, 4),
    (3, True, 4, 1, 3),
    (2, False, 0, 1, 2),
])
def test_num_workers(requested, use_gpu, gpus, per_worker, workers):
    assert resolve_workers(requested, use_gpu=use_gpu, gpus=gpus, gpus_per_worker=per_worker) == workers


def test_a_number_of_gpu_workers_that_does_not_fit_names_both_numbers():
    with pytest.raises(RaydeepError, match=r"num_workers = 2 GPU workers need 2 GPUs; the cluster has 1 "):
        resolve_workers(2, use_gpu=True, gpus=1, gpus_per_worker=1)
    with pytest.raises(RaydeepError, match=r"a GPU worker needs 2 GPU\(s\); the cluster has 1"):
        resolve_workers("auto", use_gpu=True, gpus=1, gpus_per_worker=2)


@pytest.mark.parametrize("gpu, capability, precision", [
    ("CPU", None, "fp32"),
    ("V100", (7, 0), "fp16"),
    ("T4", (7, 5), "fp16"),
    ("A100", (8, 0), "bf16"),
    ("L4", (8, 9), "bf16"),
    ("H100", (9, 0), "bf16"),
])
def test_auto_precision(gpu, capability, precision):
    assert auto_precision(capability) == precision, gpu


def test_fp16_scales_the_loss_dynamically():
    ds = with_precision({"bf16": {"enabled": True}, "fp16": {"enabled": False, "initial_scale_power": 16}}, "fp16")
    assert precision_of(ds) == "fp16"
    assert ds["fp16"] == {"enabled": True, "initial_scale_power": 16, "loss_scale": 0}  # 0: dynamic
    assert ds["bf16"] == {"enabled": False}


def test_nccl_debug_reaches_the_workers_only_with_debug(monkeypatch):
    from raydeep.cluster.connect import job_env

    monkeypatch.delenv("NCCL_DEBUG", raising=False)
    assert job_env(verbose=True)["NCCL_DEBUG"] == "INFO"
    assert "NCCL_DEBUG" not in job_env(verbose=False)


class Recorder:
    """Stands in for torch's tensor factories, recording the device each call asks for."""

    def __init__(self, monkeypatch, *names: str) -> None:
        import torch

        self.devices: list[tuple[str, object]] = []
        for name in names:
            real = getattr(torch, name)

            def record(*args, _real=real, _name=name, **kwargs):
                self.devices.append((_name, kwargs.get("device")))
                kwargs["device"] = "cpu"  # build it here: this machine has no GPU
                return _real(*args, **kwargs)

            monkeypatch.setattr(torch, name, record)


def test_worker_tensors_are_created_on_the_engine_device(monkeypatch):
    # A tensor made on the CPU and mixed with CUDA ones fails the first step on a GPU (an
    # in-place add into a CPU loss sum did). Every tensor the loop's helpers create must
    # be asked for on the device the engine hands them.
    import torch

    from raydeep.trainers.loop import EpochMeter, all_reduce_sum

    gpu = torch.device("cuda", 3)
    rec = Recorder(monkeypatch, "zeros", "tensor")
    meter = EpochMeter(gpu)
    meter.step(torch.ones(()), rows=4, tokens=0)
    all_reduce_sum([1.0, 2.0], gpu)
    meter.summary(world=1)
    assert rec.devices and all(device == gpu for _, device in rec.devices), rec.devices
