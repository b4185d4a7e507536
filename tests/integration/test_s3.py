"""S3 against a real S3-protocol server on 127.0.0.1 (moto, IAM auth on; see tests/s3.py).

Most tests need no Ray: reading splits, the one-line errors (no bucket, no or wrong credentials,
an unreachable endpoint), run storage, an interrupted S3 commit. The slow one is the user's
path end to end on a Ray head of its own, whose environment holds the credentials the way a
cluster node's would: ``data prepare`` to S3, ``train`` from S3 with checkpoints on S3, resume.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time

import pyarrow.fs as pafs
import pytest

from raydeep.datasets import label_histogram, open_split, write_synthetic_text
from raydeep.datasets.inspect import inspect_path
from raydeep.datasets.manifest import PREPARED_NAME
from raydeep.datasets.prepare.pipeline import Location, _commit
from raydeep.datasets.storage import StorageConfig, resolve_storage
from raydeep.errors import DataError
from tests.conftest import BIN, ROOT, free_port, run_cli, start_head, stop_head
from tests.helpers import tiny_config, write_config
from tests.s3 import s3_server  # noqa: F401 - the fixture

SECRET_WORDS = ("AKIAWRONGWRONGWRONG1", "wrong-secret-value")


def one_line(info: pytest.ExceptionInfo) -> str:
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def synthetic_on_s3(s3_server, tmp_path_factory) -> str:  # noqa: F811
    local = tmp_path_factory.mktemp("syn") / "train"
    write_synthetic_text(local, split="train", rows=200, num_classes=4, seq_len=8, vocab_size=64,
                         imbalance_ratio=2, seed=0)
    fs = s3_server.filesystem()
    fs.mkdir("data")
    fs.put(str(local) + "/", "data/syn/train/", recursive=True)
    return "s3://data/syn/train"


def test_open_split_histogram_and_inspect_from_s3(s3_server, synthetic_on_s3, monkeypatch) -> None:  # noqa: F811
    s3_server.apply(monkeypatch, endpoint=False)
    storage = StorageConfig(endpoint_url=s3_server.endpoint)
    split = open_split(synthetic_on_s3, key="data.train", storage=storage)
    assert split.num_rows == sum(s["rows"] for s in split.manifest["shards"]) and split.num_classes == 4
    assert split.files[0] == f"{synthetic_on_s3}/part-00000.parquet"
    assert label_histogram(split, 4) == split.manifest["label_histogram"]
    subset = open_split(f"{synthetic_on_s3}/part-0000[01].parquet", key="k", storage=storage)
    assert len(subset.files) == 2 and subset.manifest is None and subset.feature == split.feature
    assert open_split(f"{synthetic_on_s3}/part-00001.parquet", key="k", storage=storage).num_rows == 50
    assert "labels (4, from the manifest)" in inspect_path(synthetic_on_s3, storage=storage)
    # The standard variable works too, with no storage section at all.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    assert open_split(synthetic_on_s3, key="data.train").num_rows == split.num_rows


def test_missing_bucket_and_prefix(s3_server, synthetic_on_s3, monkeypatch) -> None:  # noqa: F811
    s3_server.apply(monkeypatch)
    with pytest.raises(DataError) as info:
        open_split("s3://no-such-bucket/x/train", key="data.val")
    assert one_line(info) == (f"data.val: s3://no-such-bucket/x/train: bucket 'no-such-bucket' does not exist "
                              f"(at {s3_server.endpoint})")
    with pytest.raises(DataError, match="nothing at this S3 path"):
        open_split("s3://data/syn/nope", key="data.val")
    with pytest.raises(DataError, match="not a bare bucket"):
        open_split("s3://data", key="data.val")


def test_missing_credentials_name_what_was_looked_at(s3_server, synthetic_on_s3, monkeypatch) -> None:  # noqa: F811
    s3_server.apply(monkeypatch, credentials=False)
    with pytest.raises(DataError) as info:
        open_split(synthetic_on_s3, key="data.train")
    msg = one_line(info)
    assert msg.startswith(f"data.train: {synthetic_on_s3}: no AWS credentials found")
    for looked in ("AWS_ACCESS_KEY_ID (unset)", "AWS_SECRET_ACCESS_KEY (unset)", "AWS_PROFILE (unset)",
                   f"{s3_server.home / 'credentials'} (missing)", "profile 'default'"):
        assert looked in msg, looked


def test_wrong_credentials_are_rejected_without_printing_them(s3_server, synthetic_on_s3, monkeypatch) -> None:  # noqa: F811
    s3_server.apply(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SECRET_WORDS[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_WORDS[1])
    with pytest.raises(DataError) as info:
        open_split(synthetic_on_s3, key="data.train")
    msg = one_line(info)
    assert "S3 rejected the credentials (InvalidAccessKeyId); they came from the environment variables" in msg
    assert "AWS_ACCESS_KEY_ID (set)" in msg
    assert not any(w in msg for w in SECRET_WORDS)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)  # a real key with the wrong secret
    with pytest.raises(DataError, match=r"rejected the credentials \(SignatureDoesNotMatch\)") as info:
        open_split(synthetic_on_s3, key="data.train")
    assert SECRET_WORDS[1] not in str(info.value) and s3_server.secret not in str(info.value)


def test_unreachable_endpoint_fails_fast(s3_server, monkeypatch) -> None:  # noqa: F811
    s3_server.apply(monkeypatch, endpoint=False)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    storage = StorageConfig(endpoint_url=url, connect_timeout=1, max_attempts=2)
    t0 = time.time()
    with pytest.raises(DataError) as info:
        open_split("s3://data/syn/train", key="data.train", storage=storage)
    assert time.time() - t0 < 15
    assert one_line(info).startswith(f"data.train: s3://data/syn/train: cannot reach S3 at {url} "
                                     "(EndpointConnectionError; gave up after 2 attempt(s), 1 s connect timeout)")
    with pytest.raises(DataError, match="cannot reach S3"):
        resolve_storage("s3://data/runs", storage)


def test_resolve_storage(s3_server, synthetic_on_s3, monkeypatch, tmp_path) -> None:  # noqa: F811
    s3_server.apply(monkeypatch, endpoint=False)
    storage = StorageConfig(endpoint_url=s3_server.endpoint)
    path, fs = resolve_storage("s3://data/runs/", storage)
    assert path == "data/runs" and isinstance(fs, pafs.PyFileSystem)
    with fs.open_output_stream("data/runs/probe.txt") as f:
        f.write(b"ok")
    assert s3_server.filesystem().cat_file("data/runs/probe.txt") == b"ok"
    assert resolve_storage(str(tmp_path / "runs")) == (str(tmp_path / "runs"), None)
    with pytest.raises(DataError, match="run.storage: s3://nope-bucket/runs: bucket 'nope-bucket' does not exist"):
        resolve_storage("s3://nope-bucket/runs", storage)
    with pytest.raises(DataError, match=r"gs:// is not supported"):
        resolve_storage("gs://b/runs")


def test_interrupted_s3_commit_is_never_read_as_complete(s3_server, synthetic_on_s3, monkeypatch) -> None:  # noqa: F811
    s3_server.apply(monkeypatch)
    fs = s3_server.filesystem()
    tmp = "data/.half.tmp-1"
    src = [p for p in fs.ls("data/syn/train") if p.endswith(".parquet")]
    for i, p in enumerate(src):
        fs.copy(p, f"{tmp}/_parts/split=train/{i}.parquet")
    out = Location("s3://data/half", None, "data/half", True)
    from raydeep.datasets.storage import s3_filesystem

    out.fs = s3_filesystem()
    moves = [(f"{tmp}/_parts/split=train/{i}.parquet", f"part-{i:05d}.parquet") for i in range(len(src))]
    calls = []

    def copy_then_die(a, b, **kw):
        if calls:
            raise ConnectionResetError("connection lost")
        calls.append(a)
        fs.copy(a, b)

    monkeypatch.setattr(out.fs, "copy", copy_then_die)
    with pytest.raises(ConnectionResetError):
        _commit(out, tmp, f"{tmp}/_parts", {"train": (moves, {"format": "raydeep/1"})}, b"{}", {}, overwrite=False)
    assert fs.exists("data/half/train/part-00000.parquet")  # one shard made it ...
    with pytest.raises(DataError, match="did not finish writing this split"):  # ... and is not read as a split
        open_split("s3://data/half/train", key="data.train")
    assert not fs.exists(f"data/half/{PREPARED_NAME}")


def test_cli_errors_are_one_line(s3_server, synthetic_on_s3, tmp_path) -> None:  # noqa: F811
    env = s3_server.env()
    proc = run_cli("data", "inspect", "s3://no-such-bucket/x/train", env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "raydeep: error: inspect: s3://no-such-bucket/x/train: bucket 'no-such-bucket' does not exist "
        f"(at {s3_server.endpoint})"), proc.stderr
    env.update(AWS_ACCESS_KEY_ID=SECRET_WORDS[0], AWS_SECRET_ACCESS_KEY=SECRET_WORDS[1])
    proc = run_cli("data", "prepare", "--input", str(tmp_path), "--format", "text-dirs", "--output",
                   "s3://data/out", "--train-tokenizer", "bpe", env=env, timeout=120)
    assert proc.returncode == 2 and "no subdirectories" in proc.stderr  # input is checked first
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_text("x")
    proc = run_cli("data", "prepare", "--input", str(tmp_path), "--format", "text-dirs", "--output",
                   "s3://data/out", "--train-tokenizer", "bpe", env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--output: s3://data/out: S3 rejected the credentials" in lines[0]
    assert not any(w in proc.stderr + proc.stdout for w in SECRET_WORDS)


def test_evaluate_errors_are_one_line(s3_server, synthetic_on_s3, monkeypatch, tmp_path) -> None:  # noqa: F811
    from raydeep.trainers.evaluate import evaluate_command

    s3_server.apply(monkeypatch)
    with pytest.raises(DataError) as info:
        evaluate_command("s3://data/runs/nope", synthetic_on_s3)
    assert one_line(info) == ("evaluate: s3://data/runs/nope: no raydeep checkpoint there "
                              "(no raydeep.json, no checkpoint_*/raydeep.json)")
    with pytest.raises(DataError, match="^evaluate: s3://nobucket/runs/x: bucket 'nobucket' does not exist"):
        evaluate_command("s3://nobucket/runs/x", synthetic_on_s3)
    s3_server.apply(monkeypatch, credentials=False)  # the CLI inherits this process's environment
    proc = run_cli("evaluate", "s3://data/runs/x", "--data", synthetic_on_s3, env={"TMPDIR": str(tmp_path)},
                   timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("raydeep: error: evaluate: s3://data/runs/x: no AWS credentials found"), proc.stderr
    assert not list(tmp_path.glob("raydeep-eval-*"))  # the temporary download dir is gone


@pytest.mark.slow
@pytest.mark.ray
def test_prepare_train_resume_on_s3(s3_server, tmp_path) -> None:  # noqa: F811
    from tests.integration.test_ingest import corpus

    fs = s3_server.filesystem()
    fs.mkdir("mlbkt")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in corpus(300)))
    # The head holds credentials but no endpoint: the endpoint travels with the config and the
    # filesystem objects raydeep ships to the workers.
    head = start_head(tmp_path, num_cpus=4, env=s3_server.env(endpoint=False))
    try:
        proc = run_cli("data", "prepare", "--input", str(tmp_path / "in.jsonl"), "--format", "jsonl", "--output",
                       "s3://mlbkt/prepared", "--train-tokenizer", "bpe", "--vocab-size", "300", "--max-len", "16",
                       "--val-fraction", "0.25", "--shard-rows", "64", "--address", head.address,
                       env=s3_server.env(), timeout=600, check=True)
        assert "wrote s3://mlbkt/prepared" in proc.stdout
        assert not [p for p in fs.ls("mlbkt") if ".tmp-" in p]
        proc = run_cli("data", "inspect", "s3://mlbkt/prepared", env=s3_server.env(), check=True, timeout=120)
        assert "s3://mlbkt/prepared/train" in proc.stdout and "sport" in proc.stdout

        cfg = tiny_config(
            name="s3run",
            data={"train": "s3://mlbkt/prepared/train", "val": "s3://mlbkt/prepared/val", "batch_size": 16,
                  "shuffle_buffer": 64},
            model={"kind": "transformer", "num_classes": 3, "d_model": 32, "layers": 1, "heads": 2, "max_len": 16,
                   "dropout": 0.0},
            run={"epochs": 1, "seed": 0, "storage": "s3://mlbkt/runs"},
            storage={"endpoint_url": s3_server.endpoint},
        )
        run_dir = tmp_path / "run"
        train_env = s3_server.env(endpoint=False)  # only the config says where S3 is
        run_cli("train", str(write_config(tmp_path / "s3.yaml", cfg)), "--run-dir", str(run_dir), "--address",
                head.address, env=train_env, timeout=600, check=True)
        first = json.loads((run_dir / "summary.json").read_text())
        assert first["label_names"] == ["food", "sport", "tech"]  # from the manifest, into the run's outputs
        assert first["latest_checkpoint"] and "mlbkt/runs/" in first["latest_checkpoint"]
        assert [p for p in fs.find("mlbkt/runs") if "checkpoint" in p]  # checkpoints are on S3
        assert not (run_dir / "s3run").exists()
        # The whole run dir is in run.storage too, beside the checkpoints (issue 21 part 6).
        folder = "mlbkt/runs/" + json.loads((run_dir / "run.json").read_text())["storage_name"]
        held = {p[len(folder) + 1:] for p in fs.find(folder)}
        assert {"summary.json", "metrics.jsonl", "config.yaml", "run.json", "learning_curves.png"} <= held, held
        assert any(p.startswith("tensorboard/events.out.tfevents") for p in held) and any(
            p.startswith("checkpoint_") for p in held)

        run_cli("train", "--resume", str(run_dir), "--set", "run.epochs=2", "--address", head.address,
                env=train_env, timeout=600, check=True)
        second = json.loads((run_dir / "summary.json").read_text())
        assert second["final"]["resumed_from_step"] == first["final"]["global_step"]
        assert second["final"]["epoch"] == 1 and second["latest_checkpoint"] != first["latest_checkpoint"]
    finally:
        stop_head(head)

    # evaluate, no Ray: ZeRO shards downloaded from S3 to a temporary dir and consolidated there.
    # The S3 run folder -> its latest checkpoint, the one the final metrics came from; the
    # endpoint from the flag, as a user without a config at hand gives it.
    # The run's S3 folder has a unique suffix (two run dirs named "run" never share Ray's state);
    # run.json and summary.json name it.
    run_folder = second["run_storage"]
    # raydeep pull: the storage folder, after the resume, is the local run dir byte for byte (no checkpoints)
    from raydeep.trainers.outputs import output_files

    proc = run_cli("pull", run_folder, str(tmp_path / "pulled"), "--endpoint-url", s3_server.endpoint, env=train_env,
                   check=True, timeout=120)
    assert f"to {tmp_path / 'pulled'}" in proc.stdout
    local = output_files(run_dir)
    assert set(output_files(tmp_path / "pulled")) - set(local) == {"checkpoint_manager_snapshot.json"}  # Ray's
    assert "summary.json" in local
    assert all((tmp_path / "pulled" / rel).read_bytes() == (run_dir / rel).read_bytes() for rel in local)
    assert run_folder == "s3://mlbkt/runs/" + json.loads((run_dir / "run.json").read_text())["storage_name"]
    assert run_folder.startswith("s3://mlbkt/runs/run-") and run_folder == first["run_storage"]
    (tmp_path / "tmp").mkdir()
    run_cli("evaluate", run_folder, "--data", "s3://mlbkt/prepared/val", "--endpoint-url", s3_server.endpoint,
            "--out", str(tmp_path / "latest.json"), env={**train_env, "TMPDIR": str(tmp_path / "tmp")},
            check=True, timeout=300)
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["checkpoint"] == "s3://" + second["latest_checkpoint"]
    assert latest["confusion"] == second["confusion"]  # the same rows and the same predictions
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert latest[key] == pytest.approx(second["final"][f"val/{key}"], abs=1e-6), key
    assert not list((tmp_path / "tmp").glob("raydeep-eval-*"))  # the downloaded checkpoint is removed
    # The local run directory -> its best checkpoint on S3; the endpoint from the run's own
    # config, as training found it; evaluation.json beside summary.json.
    run_cli("evaluate", str(run_dir), "--data", "s3://mlbkt/prepared/val", env=train_env, check=True, timeout=300)
    best = json.loads((run_dir / "evaluation.json").read_text())
    assert best["checkpoint"] == "s3://" + second["best"]["checkpoint"]
    assert best["macro_f1"] == pytest.approx(second["best"]["value"], abs=1e-6)
    assert best["rows"] == latest["rows"] == sum(map(sum, second["confusion"]))


def test_trial_storage_on_s3_copies_moves_and_lists_segment_folders(s3_server, monkeypatch) -> None:  # noqa: F811
    # A PBT trial's file work between segments, on S3: what test_sweep_trial checks locally.
    from raydeep.sweeps.trial import TrialStorage

    s3_server.apply(monkeypatch)
    fs = s3_server.filesystem()
    fs.mkdir("segbkt")
    fs.pipe({"segbkt/tune/t_b/ck0/checkpoint_000000/rank0.pt": b"x" * 100,
             "segbkt/tune/t_b/ck0/segment.json": b'{"trial_id": "t_b", "epochs_done": 1}'})
    path, arrow = resolve_storage("s3://segbkt/sweep", key="run.storage")
    store = TrialStorage(f"{path}/trials", arrow)
    assert store.segment_folders("t_a") == []
    store.copy_in("segbkt/tune/t_b/ck0", arrow, store.path("t_a-e001"))
    store.move(store.path("t_a-e001"), store.path("t_a-e002"))
    store.write_json(store.path("t_a-e002") + "/segment.json", {"trial_id": "t_a", "epochs_done": 2})
    fs.pipe({"segbkt/sweep/trials/t_ab-e001/x": b"", "segbkt/sweep/trials/t_a.yaml": b""})
    assert store.segment_folders("t_a") == ["segbkt/sweep/trials/t_a-e002"]
    assert fs.cat("segbkt/sweep/trials/t_a-e002/checkpoint_000000/rank0.pt") == b"x" * 100
    assert json.loads(fs.cat("segbkt/sweep/trials/t_a-e002/segment.json")) == {"trial_id": "t_a", "epochs_done": 2}
    assert not fs.exists("segbkt/sweep/trials/t_a-e001/segment.json")
    store.remove(store.path("t_a-e002"))
    assert store.segment_folders("t_a") == [] and fs.exists("segbkt/tune/t_b/ck0/segment.json")


def test_a_sweep_on_a_missing_bucket_fails_before_ray_starts(s3_server, monkeypatch, tmp_path) -> None:  # noqa: F811
    from raydeep.config import validate
    from raydeep.sweeps.runner import run_sweep

    s3_server.apply(monkeypatch)
    raw = tiny_config(run={"epochs": 1, "seed": 0, "storage": "s3://no-such-bucket/sweeps"})
    raw["tune"] = {"space": {"optim.lr": {"grid": [1e-3, 1e-2]}}, "search": "grid", "scheduler": "none"}
    with pytest.raises(DataError) as info:
        run_sweep(validate(raw, "sweep.yaml"), source="sweep.yaml", run_dir=tmp_path / "sweep",
                  address="127.0.0.1:1")  # never reached: the bucket is checked first
    assert one_line(info).startswith("run.storage: s3://no-such-bucket/sweeps/sweep: bucket 'no-such-bucket' "
                                     "does not exist")
    assert not (tmp_path / "sweep").exists()


def sweep_events(sweep) -> list[dict]:
    path = sweep / "trials.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.ray
def test_pbt_sweep_on_s3_storage_clones_survives_a_killed_driver_and_resumes(s3_server, tmp_path) -> None:  # noqa: F811
    # Also the suite's PBT clone test: the clone's segment continues the donor's checkpoint (below).
    # Tune's state and every trial's Train runs and PBT segments on S3; the sweep dir (leaderboard,
    # best.yaml, trials.jsonl) local; the head has credentials, only the config says where S3 is.
    # The driver is killed once PBT has cloned a trial (mid-sweep, no clean shutdown); --resume
    # finds Tune's state on S3 from the local sweep dir and every trial continues from its last
    # segment (raydeep's ResumablePBT: Ray 2.60 restores PBT without its state).
    from tests.integration.test_tune import STEPS_PER_EPOCH, sweep_raw

    fs = s3_server.filesystem()
    fs.mkdir("sweepbkt")
    epochs = 3
    # A slow LR, not a diverging one: after one epoch both trials are near chance, so which one PBT
    # clones is a coin toss, and a trial continuing an absurd LR would end in a NaN error.
    raw = sweep_raw({"optim.lr": {"grid": [1.0e-2, 1.0e-5]}}, epochs=epochs,
                    scheduler={"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                               "resample_probability": 0.0, "synch": True})
    raw["run"]["storage"] = "s3://sweepbkt/sweeps"
    raw["storage"] = {"endpoint_url": s3_server.endpoint}
    cfg_path = write_config(tmp_path / "sweep.yaml", raw)
    sweep = tmp_path / "sweep"
    env = s3_server.env(endpoint=False)
    head = start_head(tmp_path, num_cpus=4, env=env)
    try:
        with open(tmp_path / "first.log", "wb") as out:
            proc = subprocess.Popen([str(BIN / "raydeep"), "tune", str(cfg_path), "--run-dir", str(sweep),
                                     "--address", head.address], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                    env={**os.environ, **env})
            try:
                deadline = time.time() + 480
                while not [e for e in sweep_events(sweep) if e["event"] == "clone"]:
                    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                    assert time.time() < deadline, "no PBT clone within 480 s"
                    time.sleep(0.5)
            finally:
                proc.kill()  # what a lost SSH session or an OOM kill does
                proc.wait()
        assert "storage: s3://sweepbkt/sweeps/sweep" in (tmp_path / "first.log").read_text()
        before = sweep_events(sweep)
        clone = next(e for e in before if e["event"] == "clone")
        assert clone["epochs_done"] == 1 and clone["global_step"] == STEPS_PER_EPOCH
        # One trial clones the other (after one epoch both are near chance, so which LR scored lower
        # varies between machines; Tune keeps no donor's first result to compare).
        first_lr = {e["trial_id"]: e["params"]["optim.lr"] for e in reversed(before) if e["event"] == "start"}
        assert {first_lr[clone["trial_id"]], first_lr[clone["donor"]]} == {1e-2, 1e-5}, before
        assert not any(e["event"] == "end" for e in before), before  # killed mid-sweep

        resumed = run_cli("tune", "--resume", str(sweep), "--address", head.address, env=env, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        stop_head(head)

    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["storage"] == "s3://sweepbkt/sweeps/sweep" and summary["trials"] == 2
    assert not summary["interrupted"] and summary["errors"] == 0
    assert (sweep / "best.yaml").is_file() and (sweep / "sweep.png").stat().st_size > 10_000
    assert not (sweep / "tune").exists() and not list((sweep / "trials").glob("*-e*"))  # nothing local
    with open(sweep / "leaderboard.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["finished", "finished"], rows

    remote = "sweepbkt/sweeps/sweep"
    assert fs.glob(f"{remote}/tune/experiment_state-*.json")
    killed_at = max(e["time"] for e in before)
    continued = []
    for trial_id in {e["trial_id"] for e in before}:
        results = [json.loads(x) for x in fs.cat(f"{remote}/tune/{trial_id}/result.json").splitlines()]
        assert results[-1]["epochs_done"] == epochs and results[-1]["global_step"] == epochs * STEPS_PER_EPOCH
        # Every segment, before and after the resume, continued exactly where its checkpoint ended.
        # (A first segment resumed from nothing: resumed_from_step is None there.)
        assert all((r["resumed_from_step"] or 0) == r["from_epochs"] * STEPS_PER_EPOCH for r in results), results
        after = [r for r in results if r["timestamp"] > killed_at]
        assert after, results
        continued.append(after[0]["from_epochs"])
        assert fs.glob(f"{remote}/trials/{trial_id}-e{epochs:03d}/checkpoint_*/*")  # its last segment, on S3
    # Tune saves its state to S3 every ~10 s: the trials' first segments were in it by the kill.
    assert max(continued) >= 1, continued
    # The clone's first segment after the exploit continued the donor's S3 segment.
    results = [json.loads(x) for x in fs.cat(f"{remote}/tune/{clone['trial_id']}/result.json").splitlines()]
    first = next(r for r in results if r.get("cloned_from") == clone["donor"])
    assert first["resumed_from_step"] == STEPS_PER_EPOCH and first["global_step"] == 2 * STEPS_PER_EPOCH
