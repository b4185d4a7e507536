"""run.mlflow end to end, read back through ``MlflowClient``: one tiny training run into the default
store (sqlite beside runs/, artifacts in mlruns/), and one 2-trial sweep into a real ``mlflow
server`` on 127.0.0.1 that the test starts and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from raydeep.config import validate
from raydeep.sweeps.runner import run_sweep
from raydeep.trainers.driver import train
from tests.conftest import BIN, free_port
from tests.helpers import tiny_config
from tests.integration.test_tune import sweep_raw

pytestmark = pytest.mark.ray
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

PLANTED = "planted-AWS-secret-0b7e51c4"  # an S3 credential, as the environment holds one


def test_a_run_logs_params_metrics_artifacts_and_status_never_a_secret(ray_connected, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLANTEDKEYID0001")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = validate(tiny_config(run={"epochs": 2, "seed": 0, "mlflow": {"tags": {"team": "nlp"}}},
                               storage={"region": "eu-west-1"}), "tiny.yaml")
    run_dir = tmp_path / "runs" / "tiny-mlflow"
    summary = train(cfg, run_dir=run_dir, address=ray_connected.address, source="configs/tiny.yaml")

    # the default store: MLflow's sqlite backend beside runs/, artifacts in mlruns/ beside it
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-mlflow"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["model.layers"] == "1"
    assert run.data.params["run.epochs"] == "2" and run.data.params["storage.region"] == "eu-west-1"
    tags = run.data.tags
    assert (tags["team"], tags["raydeep.task"], tags["raydeep.config"], tags["raydeep.kind"]) == \
        ("nlp", "classification", "tiny.yaml", "train")

    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for key in ("val/loss", "train/loss", "val/macro_f1", "lr"):
        history = client.get_metric_history(run_id, key)
        assert [(m.step, m.value) for m in history] == [(e["epoch"], pytest.approx(e[key])) for e in epochs], key
    assert run.data.metrics["best/val/macro_f1"] == pytest.approx(summary["best"]["value"])

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "deepspeed.json", "summary.json", "metrics.jsonl", "learning_curves.png",
            "confusion.png", "lr_schedule.png"} <= artifacts, artifacts
    assert Path(client.download_artifacts(run_id, "summary.json", str(tmp_path / "dl"))).read_text() == \
        (run_dir / "summary.json").read_text()
    assert (tmp_path / "mlruns" / "tiny").is_dir()

    store = [tmp_path / "mlflow.db", *(p for p in (tmp_path / "mlruns").rglob("*") if p.is_file())]
    for secret in (PLANTED, "AKIAPLANTEDKEYID0001"):
        assert [p for p in store if secret.encode() in p.read_bytes()] == []


@pytest.fixture(scope="module", autouse=True)
def server_process(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend, file artifacts) on a free 127.0.0.1 port, started when
    the module starts so that it boots while the first test trains; its process group is stopped at the end."""
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
         "--default-artifact-root", (tmp / "artifacts").as_uri(), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
    try:
        yield proc, f"http://127.0.0.1:{port}", tmp / "server.log"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):  # it drains slowly on SIGTERM
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture
def mlflow_server(server_process):
    """The server's URL once its /health answers (polled, not slept on)."""
    proc, url, log = server_process
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"mlflow server did not come up:\n{log.read_text()}")
        time.sleep(0.5)


def test_a_sweep_logs_a_parent_run_and_a_nested_run_per_trial_to_a_server(ray_connected, mlflow_server, tmp_path):
    raw = sweep_raw({"optim.lr": {"grid": [1.0e-2, 3.0e-3]}}, epochs=1, scheduler="none")
    raw["run"]["mlflow"] = {"tracking_uri": mlflow_server, "experiment": "sweeps"}
    cfg = validate(raw, "sweep.yaml")
    sweep = tmp_path / "runs" / "tiny-sweep"
    summary = run_sweep(cfg, source="sweep.yaml", run_dir=sweep, address=ray_connected.address)

    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(json.loads((sweep / "mlflow.json").read_text())["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tiny-sweep"
    assert client.get_experiment(parent.info.experiment_id).name == "sweeps"
    assert parent.data.params["tune.space.optim.lr.grid"] == "[0.01, 0.003]"
    assert parent.data.metrics["best/val/macro_f1"] == pytest.approx(summary["best"]["value"])
    assert parent.data.tags["raydeep.best_trial"] == summary["best"]["trial_id"]
    assert {"leaderboard.csv", "sweep.png", "best.yaml", "summary.json", "config.yaml"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id)}

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    assert sorted(float(c.data.params["optim.lr"]) for c in children) == [3.0e-3, 1.0e-2]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.info.run_name.startswith(child.data.tags["raydeep.trial_id"] + ",lr=")
        history = client.get_metric_history(child.info.run_id, "val/macro_f1")
        assert [m.step for m in history] == [0]
