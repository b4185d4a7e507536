"""The console script end to end against the shared Ray head: demo, evaluate, refusal, fault tolerance."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN, ROOT, run_cli
from tests.helpers import SYNTH, read_tensorboard, tiny_config, write_config

pytestmark = pytest.mark.ray

DIGITS_TEST = "datasets://digits-lt/test?imbalance_ratio=100&seed=0"


@pytest.mark.slow
def test_demo_config_end_to_end_then_evaluate(ray_head, tmp_path):
    run_dir = tmp_path / "demo"
    proc = run_cli("train", "configs/digits-lt.yaml", "--set", "run.epochs=2", "--address", ray_head.address,
                   "--run-dir", str(run_dir), check=True)
    assert "epoch 2/2" in proc.stdout
    assert "validation after epoch 2" in proc.stdout  # the final table
    for name in ("config.yaml", "deepspeed.json", "metrics.jsonl", "summary.json", "learning_curves.png",
                 "confusion.png"):
        assert (run_dir / name).is_file(), name
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in epochs] == [0, 1]
    for key in ("train/loss", "val/loss", "val/accuracy", "val/macro_f1", "val/balanced_accuracy",
                "samples_per_s", "lr"):
        assert all(isinstance(m[key], float) for m in epochs), key
    for m in epochs:  # rank 0's time getting batches, the first batch's included, within the epoch
        assert 0 < m["first_batch_s"] <= m["data_wait_s"] < m["epoch_time_s"], m
    assert "samples/s (data " in proc.stdout
    # Ray's own lines (DeepSpeed's op line from every worker, Ray Train's core_worker notices) are
    # in RUN/ray.log, not on the console
    assert "deepspeed_shm_comm_op" in (run_dir / "ray.log").read_text()
    assert "(RayTrainWorker pid=" not in proc.stdout + proc.stderr and "shm_comm_op" not in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["epoch"] == 1 and summary["best"]["checkpoint"]
    # tensorboard --logdir: each epoch's metrics at its optimizer step, the config, the confusion matrix
    tb = read_tensorboard(run_dir / "tensorboard")
    assert tb["scalars"]["val/macro_f1"] == [(m["global_step"], pytest.approx(m["val/macro_f1"])) for m in epochs]
    assert [step for step, _ in tb["scalars"]["train/loss"]] == [m["global_step"] for m in epochs]
    assert "imbalance_ratio=100" in tb["text"]["config"] and '"zero_optimization"' in tb["text"]["deepspeed"]
    assert tb["images"]["confusion_matrix"][0] > 100
    # and every run.log_every_steps (10) optimizer steps rank 0's mean loss since the last record and
    # the LR: 9 steps an epoch, 18 in all, so one record, at step 10
    assert [step for step, _ in tb["scalars"]["step/train_loss"]] == [10], tb["scalars"].get("step/train_loss")
    assert 0 < tb["scalars"]["step/train_loss"][0][1] < 10 and tb["scalars"]["step/lr"][0][0] == 10
    assert 0 < tb["scalars"]["step/lr"][0][1] <= 2e-3  # optim.lr 2e-3, scheduled

    out = tmp_path / "eval.json"
    proc = run_cli("evaluate", str(run_dir), "--data", DIGITS_TEST, "--out", str(out), check=True)
    assert "confusion matrix" in proc.stdout
    # progress on stderr: the consolidation's line with its duration, then the pass over all 300 rows with its rate
    assert re.search(r"^consolidating checkpoint_\S+: \d+ tensors, [\d,]+ parameters \(ZeRO-\d, 2 ranks\) in [\d.]+ s$",
                     proc.stderr, re.M), proc.stderr
    assert re.search(r"^evaluating: rows 300/300 in [\d.]+ s, [\d,.]+ rows/s; batches 2$", proc.stderr,
                     re.M), proc.stderr
    result = json.loads(out.read_text())
    # 10 digits, chance 0.1; two epochs on the 100:1 long tail measured 0.24 (2026-12-03)
    assert result["rows"] == 300 and result["accuracy"] > 0.1 + 0.08, result
    assert len(result["confusion"]) == 10


def test_plan_reads_the_cluster_it_is_given(ray_head, tmp_path):
    """raydeep plan --address joins the real head as train does and plans on its resources (the
    session head: 4 CPUs, one node), without training."""
    proc = run_cli("plan", "configs/digits-lt.yaml", "--address", ray_head.address, "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    res = plan["resources"]
    assert res["source"] == f"the cluster at {ray_head.address}" and res["cpus"] == 4 and res["nodes"] == 1, res
    assert res["workers"] == 2 and res["gpus"] == 0 and plan["fits"] is True
    assert res["node_memory"] > 2**30  # read from the node, not assumed


def test_config_that_starves_ray_data_is_refused(ray_head, tmp_path):
    # The head has 4 CPUs: 2 workers x 2 CPUs would leave none for Ray Data's read tasks.
    cfg = write_config(tmp_path / "run.yaml", tiny_config(scaling={"num_workers": 2, "cpus_per_worker": 2}))
    proc = run_cli("train", str(cfg), "--address", ray_head.address, "--run-dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "leaves 0 for Ray Data" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_model_that_cannot_read_the_data_is_refused_before_training(ray_head, tmp_path):
    # The driver builds the model on the meta device before Ray starts (driver.check_model):
    # one line, exit 2, no run directory.
    proc = run_cli("train", "configs/seed-regression.yaml", "--set", "model.kind=transformer",
                   "--set", "model.d_model=16", "--set", "model.heads=2",
                   "--address", ray_head.address, "--run-dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("raydeep: error:")]
    assert len(errors) == 1 and "model.kind = 'transformer' on data.train (numeric in 'features')" in errors[0], \
        proc.stderr
    assert not (tmp_path / "out").exists()


def wait_for_registered(run_dir, n: int, proc: subprocess.Popen, timeout: float = 240, log=None) -> list[str]:
    """Until Ray Train's snapshot in ``run_dir`` lists ``n`` registered checkpoints (every rank uploaded)."""
    from raydeep.trainers.checkpoints import registered

    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, (f"the run ended before {n} checkpoints registered"
                                     + (f": {log.read_text()[-3000:]}" if log else ""))
        try:
            names = registered(snapshot.read_text())[0]
        except (OSError, ValueError):  # not written yet, or caught mid-write
            names = []
        if len(names) >= n:
            return names
        assert time.time() < deadline, f"{len(names)} of {n} checkpoints registered after {timeout:.0f} s"
        time.sleep(0.5)


def _worker_pids(dashboard_url: str) -> list[int]:
    from ray.util.state import list_actors

    # An explicit address: other Ray instances on the machine make "auto" ambiguous.
    actors = list_actors(address=dashboard_url,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


@pytest.mark.slow
def test_killed_worker_run_resumes_from_last_checkpoint(ray_connected, tmp_path):
    epochs = 15  # ~1 s each once running: the kill comes at epoch 2 or 3, well before the end
    cfg = tiny_config(
        data={"train": SYNTH.format(split="train", rows=3000), "val": SYNTH.format(split="val", rows=3000)},
        run={"epochs": epochs, "seed": 0, "max_failures": 1, "checkpoint_every": 1},
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [str(BIN / "raydeep"), "train", str(write_config(tmp_path / "run.yaml", cfg)),
         "--address", ray_connected.address, "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=os.environ.copy(),
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "run ended before the kill"
        wait_for_registered(run_dir, 2, proc)  # the kill must find a checkpoint to resume from
        pids = _worker_pids(ray_connected.dashboard_url)
        assert len(pids) == 2, pids
        os.kill(pids[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    resumed = re.search(r"resumed at epoch (\d+), global step (\d+)", out)
    assert resumed, out[-3000:]
    epoch, step = int(resumed.group(1)), int(resumed.group(2))
    assert epoch >= 2 and step > 0  # continued from a checkpoint, not from zero
    summary = json.loads((run_dir / "summary.json").read_text())
    spe = step // epoch
    assert summary["final"]["epoch"] == epochs - 1
    assert summary["final"]["global_step"] == epochs * spe
    assert summary["final"]["resumed_from_step"] == step


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_writes_no_summary_and_resume_finishes(ray_connected, tmp_path):
    """SIGINT mid-run (issue 19 item 8): Ray Train's abort stops the workers and removes their
    placement group, the driver exits 130 naming how to resume, and --resume finishes the run."""
    from ray.util.state import list_placement_groups

    epochs = 8
    cfg = tiny_config(data={"train": SYNTH.format(split="train", rows=2000), "val": SYNTH.format(split="val", rows=1000)},
                      run={"epochs": epochs, "seed": 0, "checkpoint_every": 1})
    run_dir = tmp_path / "run"

    def live_groups() -> set[str]:
        return {g.placement_group_id for g in list_placement_groups(address=ray_connected.dashboard_url)
                if g.state != "REMOVED"}

    before = live_groups()  # another test's, if any: not this run's to judge
    log_out, log_err = tmp_path / "out.log", tmp_path / "err.log"
    with open(log_out, "w") as out_f, open(log_err, "w") as err_f:
        proc = subprocess.Popen([str(BIN / "raydeep"), "train", str(write_config(tmp_path / "run.yaml", cfg)),
                                 "--address", ray_connected.address, "--run-dir", str(run_dir)],
                                stdout=out_f, stderr=err_f, cwd=ROOT, env=os.environ.copy())
        try:
            wait_for_registered(run_dir, 1, proc, log=log_err)
            assert _worker_pids(ray_connected.dashboard_url), "no worker alive before the Ctrl-C"
            t0 = time.time()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    out, err = log_out.read_text(), log_err.read_text()
    stopped_in = time.time() - t0
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    ours = [x for x in err.splitlines() if x.startswith("raydeep:")]  # workers' log lines may trail it
    assert ours == [f"raydeep: interrupted; the workers were stopped; continue with: "
                    f"raydeep train --resume {run_dir}"], err[-3000:]
    assert not (run_dir / "summary.json").exists()

    deadline = time.time() + 90  # Ray's state changes take seconds on a loaded 2-core machine
    while True:
        workers = _worker_pids(ray_connected.dashboard_url)
        groups = live_groups() - before
        if not workers and not groups:
            break
        assert time.time() < deadline, f"after the Ctrl-C: workers {workers}, placement groups {groups}"
        time.sleep(0.5)
    print(f"\nstopped {stopped_in:.1f} s after SIGINT")

    resumed = run_cli("train", "--resume", str(run_dir), "--address", ray_connected.address, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.search(r"resumed at epoch [1-9]", resumed.stdout), resumed.stdout[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["epoch"] == epochs - 1 and summary["final"]["resumed_from_step"] > 0
