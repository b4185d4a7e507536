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


# ---------------------------------------------------------------------------------------------
# Too few GPUs now: refused, unless an autoscaler can add them (--wait-for-resources, or one the
# cluster reports); then the plan waits with a countdown. (Here: the GPU count the issue names.)

import io
import pickle
from dataclasses import replace

from raydeep.cluster import resources as R
from raydeep.cluster.connect import ClusterInfo
from raydeep.trainers import plan as P


def cluster(gpus=0.0, cpus=8.0, nodes=1, address="10.0.0.1:6379") -> ClusterInfo:
    return ClusterInfo(address=address, cpus=cpus, gpus=gpus, nodes=nodes, max_node_cpus=cpus, dashboard_url=None)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_wait_budget_from_the_flag_or_a_detected_autoscaler():
    assert R.wait_budget({R.WAIT_ENV: "600"}, detect=lambda: False) == (600.0, "--wait-for-resources")
    assert R.wait_budget({R.WAIT_ENV: "0"}, detect=lambda: True) is None  # 0: refuse at once, whatever is detected
    assert R.wait_budget({}, detect=lambda: True) == (R.AUTOSCALER_WAIT_S, "the cluster has an autoscaler")
    assert R.wait_budget({}, detect=lambda: False) is None
    with pytest.raises(R.ResourceError, match="expected seconds"):
        R.wait_budget({R.WAIT_ENV: "soon"})


@pytest.mark.parametrize("report, launches", [
    ({"active_nodes": {"node_9f2c01": 1, "node_77aa10": 1}}, False),  # `ray start` by hand: a read-only mirror
    ({"active_nodes": {"ray.head.default": 1}}, False),
    ({"active_nodes": {"head": 1}, "idle_nodes": {}, "pending_launches": {}}, True),  # cluster-launcher types
    ({"active_nodes": {}, "pending_launches": {"gpu-g5": 2}}, True),
    ({"active_nodes": {"node_1": 1}, "pending_nodes": [["10.0.0.9", "gpu-g5", "launching"]]}, True),
])
def test_an_autoscaler_that_can_launch_is_told_from_rays_readonly_mirror(report, launches):
    assert R.autoscaler_report_can_launch({"autoscaler_report": report}) is launches
    assert R.autoscaler_report_can_launch({}) is False


def test_the_wait_returns_once_gpus_join_keeping_what_the_caller_took_off():
    clock, out = Clock(), io.StringIO()
    seen = iter([cluster(0), cluster(0), cluster(0), cluster(1, cpus=16, nodes=2)])
    short = R.ResourceShortage("scaling: a GPU worker needs 1 GPU(s); the cluster has 0", "1 GPU(s); the cluster has 0")
    wait = R.ResourceWait(120, "--wait-for-resources", clock=clock, sleep=clock.sleep, out=out)
    trial = replace(cluster(0), cpus=7.9)  # a sweep's trial keeps a token CPU back
    info = wait.grown(short, trial, lambda: next(seen))
    assert (info.gpus, info.cpus, info.nodes) == (1.0, pytest.approx(15.9), 2)
    lines = out.getvalue().splitlines()
    assert lines[0] == "waiting for resources (--wait-for-resources): 1 GPU(s); the cluster has 0; 2:00 left (Ctrl-C stops)"
    assert lines[-1] == "the cluster now has 1 GPUs, 16 CPUs on 2 node(s)"


def test_the_wait_ends_at_its_deadline_in_one_line_with_the_time_waited():
    clock, out = Clock(), io.StringIO()
    short = R.ResourceShortage("scaling.num_workers = 2 GPU workers need 2 GPUs; the cluster has 0", "2 GPUs")
    wait = R.ResourceWait(30, "the cluster has an autoscaler", clock=clock, sleep=clock.sleep, out=out)
    with pytest.raises(R.ResourceShortage) as info:
        wait.grown(short, cluster(0), lambda: cluster(0))
    assert str(info.value) == ("scaling.num_workers = 2 GPU workers need 2 GPUs; the cluster has 0 (waited 30 s for "
                               "it: the cluster has an autoscaler)")
    assert info.value.exit_code == 2
    assert len(out.getvalue().splitlines()) == 2  # a countdown line every 15 s, not every poll
    again = pickle.loads(pickle.dumps(info.value))  # errors cross Ray's process boundaries
    assert (str(again), again.need, again.bundles) == (str(info.value), info.value.need, info.value.bundles)


def fake_plan(monkeypatch, seen):
    """plan_run's loop around a plan that only resolves the GPU workers, on clusters from ``seen``."""
    monkeypatch.setattr(P, "_plan_run", lambda cfg, info, data: P.resolve_workers(
        2, use_gpu=True, gpus=info.gpus, gpus_per_worker=1))
    monkeypatch.setattr(P, "describe", lambda address: next(seen))
    monkeypatch.setattr(R, "autoscaler_can_add_nodes", lambda: False)
    monkeypatch.setattr("time.sleep", lambda s: None)  # ResourceWait polls every 5 s


def test_an_explicit_gpu_count_that_does_not_fit_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.delenv(R.WAIT_ENV, raising=False)
    fake_plan(monkeypatch, iter([]))
    with pytest.raises(R.ResourceShortage) as info:
        P.plan_run(None, cluster(1), data=object())
    assert str(info.value) == ("scaling.num_workers = 2 GPU workers need 2 GPUs; the cluster has 1 (num_workers: auto "
                               "takes one per GPU); if an autoscaler can add it, use --wait-for-resources")
    assert info.value.exit_code == 2
    with pytest.raises(R.ResourceShortage) as info:  # the local Ray this process started never grows
        P.plan_run(None, cluster(1, address=None), data=object())
    assert "--wait-for-resources" not in str(info.value)


def test_with_the_flag_the_plan_waits_for_the_gpus(monkeypatch, capsys):
    monkeypatch.setenv(R.WAIT_ENV, "60")
    fake_plan(monkeypatch, iter([cluster(1), cluster(1), cluster(2, nodes=2)]))
    assert P.plan_run(None, cluster(1), data=object()) == 2
    assert "waiting for resources (--wait-for-resources): 2 GPUs for 2 workers; the cluster has 1" in capsys.readouterr().err
