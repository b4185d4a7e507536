"""A NCCL time-out, or a GPU worker that cannot see its GPU, fails the run in one line naming the
node and the rank (``follow.training_error``, ``engine.check_gpu_visible``). The texts are torch's
own (ProcessGroupNCCL.cpp, NCCLUtils.cpp, the CUDA lazy init) and Ray Train's (worker failures)."""

from __future__ import annotations

import pytest
import torch
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2.api.exceptions import NCCLHangError, WorkerGroupError

from raydeep.errors import RaydeepError
from raydeep.trainers import engine as E
from raydeep.trainers.follow import training_error

WORK = "WorkNCCL(SeqNum=6463, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=1800000)"
# What a rank blocked in a collective raises once the watchdog aborted its communicator
ABORTED = ("NCCL communicator was aborted on rank 1.  Original reason for failure was: [Rank 1] Watchdog caught "
           f"collective operation timeout: {WORK} ran for 1800017 milliseconds before timing out.")
# What the watchdog thread itself throws (and logs) before it takes the process down
WATCHDOG = ("[PG ID 0 PG GUID 0(default_pg) Rank 2] Process group watchdog thread terminated with exception: "
            f"[Rank 2] Watchdog caught collective operation timeout: {WORK} ran for 1800047 milliseconds before "
            "timing out.\nException raised from checkTimeout at /pytorch/torch/csrc/distributed/c10d/"
            "ProcessGroupNCCL.cpp:760 (most recent call first):\nframe #0: c10::Error::Error(...)")
BLOCKING = (f"[PG ID 0 PG GUID 0(default_pg) Rank 3] Work {WORK} timed out in blocking wait.")
# Ray Train's error for a worker whose process died (the watchdog's SIGABRT)
DEAD = ("A worker health check failed.\nWorker info: Worker(\n  actor=Actor(RayTrainWorker, 1f2e),\n  metadata="
        "ActorMetadata(\n    hostname='gpu-node-7',\n    node_id='a1b2',\n    node_ip='10.0.3.17',\n    pid=4242,\n  ),\n)")


def failed(**by_rank: BaseException) -> WorkerGroupError:
    return WorkerGroupError("...", {int(k.removeprefix("r")): v for k, v in by_rank.items()})


def one_line(exc: BaseException) -> str:
    assert isinstance(exc, RaydeepError)
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.fixture
def kv(monkeypatch):
    """Ray's internal key-value store, as a dict (the workers record their nodes there)."""
    import ray.experimental.internal_kv as internal_kv

    store: dict[tuple[str, str], bytes] = {}
    monkeypatch.setattr(internal_kv, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(internal_kv, "_internal_kv_put",
                        lambda k, v, overwrite=True, namespace=None: store.__setitem__((namespace, k), v.encode()))
    monkeypatch.setattr(internal_kv, "_internal_kv_get", lambda k, namespace=None: store.get((namespace, k)))
    return store


def test_a_nccl_timeout_names_node_rank_collective_and_time(kv):
    kv[(E.NODE_KV_NAMESPACE, E.node_key("run-a", 1))] = b"10.0.3.16"
    err = training_error(failed(r1=torch.distributed.DistBackendError(ABORTED)), "run-a")
    text = one_line(err)
    assert text.startswith("NCCL time-out on node 10.0.3.16 rank 1: collective ALLREDUCE #6463 did not complete "
                           "after 1800 s (limit 1800 s)"), text
    assert "NCCL_DEBUG=INFO" in text


def test_the_watchdogs_own_text_and_the_blocking_wait():
    text = one_line(training_error(failed(r2=RuntimeError(WATCHDOG))))
    assert text.startswith("NCCL time-out on rank 2 (node unknown): collective ALLREDUCE #6463"), text
    text = one_line(training_error(failed(r3=torch.distributed.DistBackendError(BLOCKING))))
    assert text.startswith("NCCL time-out on rank 3 (node unknown): collective ALLREDUCE #6463 did not complete "
                           "(limit 1800 s)"), text


def test_the_rank_that_did_not_time_out_comes_first(kv):
    kv[(E.NODE_KV_NAMESPACE, E.node_key("run-b", 0))] = b"10.0.3.15"
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB")
    err = training_error(failed(r0=oom, r1=torch.distributed.DistBackendError(ABORTED),
                                r2=torch.distributed.DistBackendError(ABORTED)), "run-b")
    assert one_line(err) == ("training failed on worker rank 0 (node 10.0.3.15): OutOfMemoryError: CUDA out of "
                             "memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB (then ranks "
                             "1, 2 timed out waiting for it)")


def test_a_dead_worker_is_named_by_the_node_ray_reports():
    from ray.exceptions import ActorDiedError

    dead = WorkerHealthCheckFailedError(DEAD, failure=ActorDiedError())
    text = one_line(training_error(failed(r4=dead)))
    assert text.startswith("training failed on worker rank 4 (node 10.0.3.17): WorkerHealthCheckFailedError: "), text


@pytest.mark.parametrize("message", [
    "No CUDA GPUs are available",  # torch's lazy CUDA init with CUDA_VISIBLE_DEVICES empty
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver",
    "CUDA error: no CUDA-capable device is detected",
])
def test_a_gpu_the_worker_cannot_see(message, kv):
    kv[(E.NODE_KV_NAMESPACE, E.node_key("run-c", 0))] = b"10.0.3.20"
    text = one_line(training_error(failed(r0=RuntimeError(message)), "run-c"))
    assert text.startswith("GPU worker on node 10.0.3.20 rank 0 cannot see a GPU: "), text


def test_rays_nccl_hang_detector_is_one_line():
    exc = NCCLHangError("1 of 1 communicators have a collective mismatch and made no progress for 300 seconds "
                        "(5 polls). This usually means ...\nTo debug:\n  - Read NCCL RAS report", worker_failures={})
    text = one_line(training_error(exc))
    assert text.startswith("NCCL hang: 1 of 1 communicators have a collective mismatch"), text


def test_a_worker_raydeep_error_passes_through_unchanged():
    mine = RaydeepError("GPU worker on node 10.0.3.21 rank 5 cannot see a GPU: ...")
    assert training_error(failed(r5=mine)) is mine


def test_a_gpu_worker_that_sees_no_gpu_fails_at_start_naming_node_and_rank(monkeypatch, kv):
    monkeypatch.setattr(E, "worker_identity", lambda: ("10.0.3.22", 6, "run-d"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(RaydeepError) as info:
        E.select_accelerator("cuda")
    text = one_line(info.value)
    assert text.startswith("GPU worker on node 10.0.3.22 rank 6 cannot see a GPU: "), text
    assert kv[(E.NODE_KV_NAMESPACE, E.node_key("run-d", 6))] == b"10.0.3.22"  # recorded for the driver
    E.select_accelerator("cpu")  # a CPU worker is not asked for a GPU


def test_worker_identity_outside_ray_is_the_host_and_rank(monkeypatch):
    import socket

    monkeypatch.setenv("RANK", "3")
    node, rank, run = E.worker_identity()
    assert rank == 3 and node  # inside Ray: the node IP and Train's world rank and run name
    if run is None:
        assert node == socket.gethostname()
