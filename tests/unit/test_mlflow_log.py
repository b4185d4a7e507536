"""run.mlflow: the section and its defaults, the params MLflow gets (flattened, no secrets), metric
names, the checks made before Ray starts, and a run and a sweep's nested runs written to a real
MLflow file store and read back through ``MlflowClient`` (no Ray)."""

from __future__ import annotations

import http.server
import json
import pickle
import socket
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from raydeep.config import validate
from raydeep.errors import ConfigError
from raydeep.trainers.mlflow_log import (
    INSTALL_HINT,
    MAX_PARAM_VALUE,
    MlflowRun,
    MlflowSection,
    config_params,
    ended_status,
    epoch_metrics,
    flatten,
    is_secret_key,
    metric_name,
    open_run,
    probe,
    require_mlflow,
    resolve,
    run_artifacts,
)
from tests.helpers import tiny_config

PLANTED = "planted-Secret-9f3a77"


def test_the_section_is_optional_and_its_keys_are_checked():
    assert validate(tiny_config(), "t.yaml").run.mlflow is None
    cfg = validate(tiny_config(run={"mlflow": {"experiment": "e", "tags": {"team": "nlp", "n": 3}}}), "t.yaml")
    assert cfg.run.mlflow.tags == {"team": "nlp", "n": "3"}
    assert validate(tiny_config(run={"mlflow": {}}), "t.yaml").run.mlflow == MlflowSection()
    with pytest.raises(ConfigError, match=r"^t.yaml: run.mlflow.experimnt: unknown key \(did you mean 'experiment'\?\)$"):
        validate(tiny_config(run={"mlflow": {"experimnt": "e"}}), "t.yaml")
    with pytest.raises(ConfigError, match="must not contain user:password@; set MLFLOW_TRACKING_USERNAME"):
        validate(tiny_config(run={"mlflow": {"tracking_uri": "https://me:pw@mlflow.example.com"}}), "t.yaml")
    with pytest.raises(ConfigError, match="tag 'api_token' looks like a secret"):
        validate(tiny_config(run={"mlflow": {"tags": {"api_token": "x"}}}), "t.yaml")


def test_defaults_resolve_beside_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = Path("runs") / "tiny-20261203"
    t = resolve(MlflowSection(), run_dir, "tiny", env={})
    # MLflow's own default backend (sqlite), beside runs/, artifacts in mlruns/ beside it too
    assert t.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert t.artifact_location == (tmp_path.resolve() / "mlruns" / "tiny").as_uri()
    assert (t.experiment, t.run_name) == ("tiny", "tiny-20261203")
    assert resolve(MlflowSection(), run_dir, "run", env={}).experiment == "raydeep"  # the default name
    assert "mlflow ui --backend-store-uri sqlite:///" in t.shown()

    from_env = resolve(MlflowSection(), run_dir, "tiny", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert (from_env.tracking_uri, from_env.artifact_location) == ("http://127.0.0.1:5000", None)
    given = resolve(MlflowSection(tracking_uri="mlruns/", experiment="x", run_name="r", tags={"a": "b"}),
                    run_dir, "tiny", tags={"raydeep.kind": "train"}, env={"MLFLOW_TRACKING_URI": "http://h:1"})
    assert given.tracking_uri == (tmp_path.resolve() / "mlruns").as_uri()  # an absolute file: URI, not the env's
    assert (given.experiment, given.run_name, given.tags) == ("x", "r", {"raydeep.kind": "train", "a": "b"})


def test_params_are_the_flattened_config_without_secrets():
    cfg = validate(tiny_config(storage={"endpoint_url": "http://minio:9000", "profile": "dev"}), "t.yaml")
    raw = cfg.model_dump(mode="json")
    raw["storage"]["secret_access_key"] = PLANTED  # what a future key must never leak
    raw["model"]["notes"] = "x" * 7000
    raw["data"]["extra"] = f"s3://bucket/?token={PLANTED}"
    params = config_params(raw, env={"AWS_SECRET_ACCESS_KEY": PLANTED, "HOME": "/home/me"})
    assert params["optim.lr"] == "0.003" and params["model.layers"] == "1"
    assert params["optim.betas"] == "[0.9, 0.999]" and params["storage.endpoint_url"] == "http://minio:9000"
    assert len(params["model.notes"]) == MAX_PARAM_VALUE
    assert "storage.secret_access_key" not in params and "data.extra" not in params
    assert not any(PLANTED in v for v in params.values())
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}


@pytest.mark.parametrize("name, secret", [
    ("AWS_SECRET_ACCESS_KEY", True), ("MLFLOW_TRACKING_TOKEN", True), ("storage.apiKey", True),
    ("db_password", True), ("GOOGLE_APPLICATION_CREDENTIALS", True), ("optim.lr", False),
    ("data.tokenizer", False), ("model.max_len", False), ("run.checkpoint_every", False)])
def test_secret_names(name, secret):
    assert is_secret_key(name) is secret


def test_metric_names_are_what_mlflow_accepts():
    assert metric_name("val/loss") == "val/loss"
    assert metric_name("val/f1/c++ tools") == "val/f1/c__ tools"
    assert metric_name("val/recall/../x//y") == "val/recall/_/x/y"
    assert epoch_metrics({"epoch": 1, "train/loss": 0.5, "finished": True, "val/confusion": [[1]],
                          "global_step": 8}) == {"train/loss": 0.5, "global_step": 8.0}
    assert [ended_status(e) for e in (None, RuntimeError(), KeyboardInterrupt())] == ["FINISHED", "FAILED", "KILLED"]


def test_without_the_package_one_line_before_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # exactly what `import mlflow` meets when it is absent
    with pytest.raises(ConfigError) as err:
        require_mlflow()
    assert str(err.value) == "run.mlflow: needs the mlflow package: pip install 'raydeep[mlflow]'" == INSTALL_HINT
    assert err.value.exit_code == 2


def test_an_unreachable_server_is_one_line_and_any_answer_is_a_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
    with pytest.raises(ConfigError, match=rf"^run.mlflow.tracking_uri = 'http://127.0.0.1:{port}': no MLflow server"):
        probe(f"http://127.0.0.1:{port}", timeout_s=2)

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe(f"http://127.0.0.1:{server.server_port}")  # answered: not this check's business
    finally:
        server.shutdown()
    probe("sqlite:///nowhere.db")  # not a server


def test_a_run_in_a_real_file_store_resumes_the_same_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED)
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("optim: {lr: 0.003}\n")
    (run_dir / "curves.png").write_bytes(b"\x89PNG")
    store = tmp_path / "store"
    target = resolve(MlflowSection(tracking_uri=str(store), tags={"team": "nlp"}), run_dir, "tiny")
    config = validate(tiny_config(), "t.yaml").model_dump(mode="json")
    run = open_run(target, config, run_dir, resume=False, tags={})
    run.epoch({"epoch": 0, "val/loss": 1.5, "val/f1/c++": 0.25})
    run.epoch({"epoch": 1, "val/loss": 1.0, "val/f1/c++": 0.5})
    run.artifacts(run_artifacts(run_dir))
    run.end(ended_status(KeyboardInterrupt()))

    client = MlflowClient(tracking_uri=target.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "KILLED" and got.info.run_name == "r1"
    assert got.data.params["optim.lr"] == "0.003" and got.data.tags["team"] == "nlp"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val/loss")] == [(0, 1.5), (1, 1.0)]
    assert "val/f1/c__" in got.data.metrics
    assert sorted(a.path for a in client.list_artifacts(run.run_id)) == ["config.yaml", "curves.png"]

    config["run"]["epochs"] = 3  # --resume --set run.epochs=3
    again = open_run(target, config, run_dir, resume=True, tags={})
    assert again.run_id == run.run_id
    again.epoch({"epoch": 2, "val/loss": 0.5})
    again.end("FINISHED")
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params["run.epochs"] == "1"  # params are immutable
    assert got.data.tags["raydeep.resumed_changes"] == "run.epochs: 1 -> 3"
    assert [m.step for m in client.get_metric_history(run.run_id, "val/loss")] == [0, 1, 2]
    assert open_run(target, config, run_dir, resume=False, tags={}).run_id != run.run_id  # a new run dir's own

    leaked = [p for p in store.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert leaked == []
    assert mlflow.__version__


def test_a_sweep_logs_one_nested_run_per_trial(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from raydeep.sweeps.mlflow_sweep import MlflowSweep, MlflowSweepCallback, end_sweep
    from raydeep.sweeps.plan import base_raw

    sweep_dir = tmp_path / "runs" / "s"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "leaderboard.csv").write_text("rank,trial_id\n1,t_a\n")
    target = resolve(MlflowSection(tracking_uri=str(tmp_path / "store")), sweep_dir, "tiny")
    cfg = validate({**tiny_config(), "tune": {"space": {"optim.lr": {"choice": [1e-3, 1e-2]}}}}, "sweep.yaml")
    parent = open_run(target, cfg.model_dump(mode="json"), sweep_dir, resume=False, tags={})
    callback = MlflowSweepCallback(MlflowSweep(target, parent.run_id, base_raw(cfg)))
    a = SimpleNamespace(trial_id="t_a", config={"params": {"optim.lr": 1e-2}})
    b = SimpleNamespace(trial_id="t_b", config={"params": {"optim.lr": 1e-3}})
    for t in (a, b):
        callback.on_trial_start(0, [], t)
        callback.on_trial_result(0, [], t, {"epoch": 0, "val/macro_f1": 0.5, "training_iteration": 1})
    callback.on_trial_complete(0, [], a)
    callback = pickle.loads(pickle.dumps(callback))  # Tune saves its callbacks with the experiment state
    callback.on_trial_result(0, [], b, {"epoch": 1, "val/macro_f1": 0.75})
    end_sweep(parent, callback, sweep_dir, {"metric": "val/macro_f1", "interrupted": True,
                                            "best": {"trial_id": "t_b", "value": 0.75}})

    client = MlflowClient(tracking_uri=target.tracking_uri)
    children = {r.data.tags["raydeep.trial_id"]: r for r in client.search_runs(
        [client.get_run(parent.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")}
    assert set(children) == {"t_a", "t_b"}
    assert children["t_a"].data.params == {"optim.lr": "0.01"} and children["t_a"].info.run_name == "t_a,lr=0.01"
    assert (children["t_a"].info.status, children["t_b"].info.status) == ("FINISHED", "KILLED")
    history = client.get_metric_history(children["t_b"].info.run_id, "val/macro_f1")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.75)]
    assert "training_iteration" not in children["t_b"].data.metrics
    got = client.get_run(parent.run_id)
    assert got.info.status == "KILLED" and got.data.metrics["best/val/macro_f1"] == 0.75
    assert got.data.tags["raydeep.best_trial"] == "t_b"
    assert [x.path for x in client.list_artifacts(parent.run_id)] == ["leaderboard.csv"]
    assert json.loads((sweep_dir / "mlflow.json").read_text())["run_id"] == parent.run_id
