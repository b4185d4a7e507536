"""Training across Ray nodes: two Ray nodes on this machine, one DeepSpeed worker on each.

The nodes are a ``ray start --head`` and a ``ray start --address=HEAD`` worker node, each with
its own temp dir and ports and 3 logical CPUs. A run with ``scaling.cpus_per_worker: 2`` can
put only one 2-CPU worker on a 3-CPU node, so Ray Train's default PACK placement puts one on
each node, and each node keeps a CPU for Ray Data. The same config with 1 CPU per worker runs
both workers on the head alone first: the single-node reference with the same seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, isolated_port_flags, run_cli, start_head, stop_head, stop_process_group
from tests.helpers import tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def start_worker_node(head, tmp: Path, *, num_cpus: int) -> tuple[subprocess.Popen, str]:
    temp_dir = tempfile.mkdtemp(prefix="rdw-", dir="/tmp")  # short: AF_UNIX paths
    flags = [f for f in isolated_port_flags() if not f.startswith("--ray-client-server-port")]
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", f"--address={head.address}", "--block", f"--num-cpus={num_cpus}",
         "--num-gpus=0", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         *flags],
        stdout=open(tmp / "ray-worker-node.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": head.address},
    )
    return proc, temp_dir


def stop_worker_node(proc: subprocess.Popen, temp_dir: str) -> None:
    stop_process_group(proc, 3)  # as stop_head: nothing to drain
    shutil.rmtree(temp_dir, ignore_errors=True)


def alive_node_ids(head) -> set[str]:
    from ray.util.state import list_nodes

    return {n.node_id for n in list_nodes(address=head.dashboard_url, filters=[("state", "=", "ALIVE")])}


def train_worker_nodes(head) -> dict[str, list[str]]:
    """Node ids of the Ray Train worker actors (alive or dead), by the Ray job (driver) that ran them."""
    from ray.util.state import list_actors

    actors = list_actors(address=head.dashboard_url, filters=[("class_name", "=", "RayTrainWorker")],
                         detail=True, raise_on_missing_output=False)
    by_job: dict[str, list[str]] = {}
    for a in actors:
        by_job.setdefault(a.job_id, []).append(a.node_id)
    return by_job


def train(cfg: dict, head, tmp: Path, name: str) -> dict:
    path = write_config(tmp / f"{name}.yaml", cfg)
    proc = run_cli("train", str(path), "--address", head.address, "--run-dir", str(tmp / name),
                   env={"RAY_ADDRESS": head.address}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / name / "summary.json").read_text())["final"]


def test_two_workers_on_two_nodes_match_one_node(tmp_path, raydeep_cache):
    head = start_head(tmp_path, num_cpus=3, extra=isolated_port_flags())
    node = None
    try:
        # The reference: both workers on the head node (2 x 1 CPU of its 3).
        one = train(tiny_config(scaling={"num_workers": 2, "cpus_per_worker": 1}), head, tmp_path, "one-node")
        head_id = alive_node_ids(head)
        first = train_worker_nodes(head)
        assert len(head_id) == 1 and [set(n) for n in first.values()] == [head_id]

        for _ in range(3):
            # `ray start` gives its raylet 30 s to register with the GCS (fixed in Ray's
            # node.py); on a loaded machine that can pass, and the node exits: start it again.
            node, node_tmp = start_worker_node(head, tmp_path, num_cpus=3)
            deadline = time.time() + 120
            while len(alive_node_ids(head)) < 2 and node.poll() is None and time.time() < deadline:
                time.sleep(1)
            if len(alive_node_ids(head)) == 2:
                break
            stop_worker_node(node, node_tmp)
            node = None
        assert node is not None, (tmp_path / "ray-worker-node.log").read_text()[-3000:]

        two = train(tiny_config(scaling={"num_workers": 2, "cpus_per_worker": 2}), head, tmp_path, "two-nodes")
        # raydeep submit without run.storage to this two-node cluster: refused before anything is uploaded.
        project = tmp_path / "project"
        (project / "configs").mkdir(parents=True)
        (project / "pyproject.toml").write_text("[project]\nname = 'p'\n")
        write_config(project / "configs/x.yaml", tiny_config())
        proc = run_cli("submit", str(project / "configs/x.yaml"), "--working-dir", str(project), "--address",
                       head.dashboard_url, timeout=120)
        assert proc.returncode == 2 and "submitted" not in proc.stdout, proc.stdout + proc.stderr
        assert "run.storage is unset and the cluster has 2 nodes" in proc.stderr and "run.storage=s3://" in proc.stderr
        (used,) = [n for job, n in train_worker_nodes(head).items() if job not in first]
        assert len(used) == 2 and set(used) == alive_node_ids(head), used  # one worker on each node
    finally:
        if node is not None:
            stop_worker_node(node, node_tmp)
        stop_head(head)

    # Same seed, same data, same steps; gloo across nodes instead of within one. Which rows
    # each worker streams is decided at run time by Ray Data's split, so two runs are not
    # bitwise equal: the one-node run repeats exactly here, the two-node one does not. Measured
    # in three clean-clone CI runs (2026-11-29) against one node's train loss 1.013, val loss
    # 0.888, accuracy 0.65, macro-F1 0.56: two nodes gave train 1.107 / 1.127 / 1.129, val loss
    # 0.868 / 1.094 / 1.110, accuracy 0.675 / 0.51 / 0.50, macro-F1 0.63 / 0.46 / 0.41 after this
    # one epoch. The bounds hold that spread; what must fail is a two-node run that does not
    # learn, which would stay near chance: checked separately below.
    assert two["global_step"] == one["global_step"]
    assert two["train/samples"] == one["train/samples"]
    assert two["train/loss"] == pytest.approx(one["train/loss"], rel=0.25)
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=0.4)
    assert two["val/accuracy"] == pytest.approx(one["val/accuracy"], abs=0.25)
    assert two["val/macro_f1"] == pytest.approx(one["val/macro_f1"], abs=0.3)
    chance_loss, chance_accuracy = math.log(4), 0.25  # 4 balanced classes
    assert two["train/loss"] < chance_loss - 0.15 and two["val/accuracy"] > chance_accuracy + 0.15, two
