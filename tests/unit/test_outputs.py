"""A run's outputs in run.storage (trainers/outputs.py) and the job line that says where they are
(cluster/job_outputs.py), on local folders; S3 and real jobs are in tests/integration."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from rich.console import Console

from raydeep.cluster.job_outputs import JOB_ENV, announce, find_outputs, outputs_line
from raydeep.errors import DataError
from raydeep.trainers.outputs import Mirror, NoMirror, mirror_once, output_files, pull, run_outputs


def make_run(run_dir: Path) -> None:
    files = {"config.yaml": "a: 1\n", "run.json": '{"storage_name": "r-1"}\n', "metrics.jsonl": '{"epoch": 0}\n',
             "tensorboard/events.out.tfevents.1": "ev", "learning_curves.png": "png", "summary.json": "{}\n",
             ".summary.json.x.tmp": "half", "checkpoint_000000/rank0.pt": "ckpt"}
    for rel, text in files.items():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_text(text)


def test_output_files_leave_out_temporaries_and_checkpoints_and_put_the_summary_last(tmp_path):
    make_run(tmp_path)
    assert output_files(tmp_path) == ["config.yaml", "learning_curves.png", "metrics.jsonl", "run.json",
                                      "tensorboard/events.out.tfevents.1", "summary.json"]


def test_mirror_copies_what_changed_whole_and_summary_last(tmp_path):
    run, dest = tmp_path / "run", tmp_path / "store"
    make_run(run)
    mirror = Mirror(run, str(dest / "r-1"), pafs.LocalFileSystem(), str(dest / "r-1"))
    order = []
    put = mirror._put
    mirror._put = lambda src, d: (order.append(d.rsplit("r-1/", 1)[1]), put(src, d))
    mirror.close()
    assert order[-1] == "summary.json" and len(order) == 6
    assert (dest / "r-1/tensorboard/events.out.tfevents.1").read_text() == "ev"
    assert not (dest / "r-1/checkpoint_000000").exists() and not list((dest / "r-1").glob(".*"))
    order.clear()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    mirror.close()  # again: only what changed
    assert order == ["metrics.jsonl"] and (dest / "r-1/metrics.jsonl").read_text().count("epoch") == 2


def test_mirror_follows_metrics_jsonl_while_the_run_goes(tmp_path):
    run, dest = tmp_path / "run", tmp_path / "store"
    run.mkdir()
    (run / "config.yaml").write_text("a: 1\n")
    mirror = Mirror(run, str(dest), pafs.LocalFileSystem(), str(dest), interval_s=0.05).start()
    try:
        (run / "tensorboard").mkdir()
        (run / "tensorboard/ev").write_text("1")
        (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
        deadline = time.time() + 10
        while not (dest / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (dest / "metrics.jsonl").read_text() == '{"epoch": 0}\n' and (dest / "tensorboard/ev").exists()
        assert not (dest / "config.yaml").exists()  # per epoch: metrics and events only
    finally:
        mirror.close()
    assert (dest / "config.yaml").exists()


def test_a_failing_copy_warns_once_and_never_raises(tmp_path):
    make_run(tmp_path / "run")

    out = io.StringIO()
    mirror = Mirror(tmp_path / "run", "/nonexistent-root/x", pafs.LocalFileSystem(), "s3://bkt/runs/r-1",
                    console=Console(file=out, width=300))
    mirror._put = lambda src, d: (_ for _ in ()).throw(PermissionError("denied"))
    mirror.close()
    mirror.close()
    text = out.getvalue()
    assert text.count("could not copy the run's outputs to s3://bkt/runs/r-1 (PermissionError: denied)") == 1


def test_run_outputs_without_storage_is_a_no_op_and_with_a_local_storage_mirrors(tmp_path, monkeypatch):
    monkeypatch.delenv(JOB_ENV, raising=False)
    make_run(tmp_path / "run")
    assert isinstance(run_outputs(tmp_path / "run", None, str(tmp_path), None, "run").start(), NoMirror)
    mirror = run_outputs(tmp_path / "run", str(tmp_path / "shared"), str(tmp_path / "shared"), None, "run-1a2b")
    mirror.close()
    assert (tmp_path / "shared/run-1a2b/summary.json").is_file()
    mirror_once(tmp_path / "run", None, "unused", None)  # a sweep without storage of its own: nothing
    mirror_once(tmp_path / "run", str(tmp_path / "sw"), str(tmp_path / "sw"), None)
    assert (tmp_path / "sw/metrics.jsonl").is_file()


def test_pull_copies_byte_for_byte_without_checkpoints_unless_asked(tmp_path):
    src = tmp_path / "store/r-1"
    make_run(src)
    (src / "plot.png").write_bytes(bytes(range(256)) * 100)
    got = pull(str(src), tmp_path / "here")
    assert "checkpoint_000000/rank0.pt" not in got and "summary.json" in got
    for rel in got:
        assert (tmp_path / "here" / rel).read_bytes() == (src / rel).read_bytes()
    assert not (tmp_path / "here/checkpoint_000000").exists()
    pull(str(src), tmp_path / "here", checkpoints=True)  # again, into the same copy: updated
    assert (tmp_path / "here/checkpoint_000000/rank0.pt").read_text() == "ckpt"


def test_pull_refuses_a_missing_folder_and_a_directory_holding_another_run(tmp_path):
    make_run(tmp_path / "a")
    with pytest.raises(DataError, match="no such folder"):
        pull(str(tmp_path / "nope"), tmp_path / "x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text('{"storage_name": "someone-else"}\n')
    with pytest.raises(DataError, match="holds another run"):
        pull(str(tmp_path / "a"), other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a copy of a run"):
        pull(str(tmp_path / "a"), tmp_path / "junk")


def test_the_job_line_round_trips_and_is_printed_only_by_a_job_driver():
    line = outputs_line("s3://b/runs/x-1", "/tmp/ray/w/runs/x", kind="train", endpoint_url="http://s3:9000",
                        node="10.0.0.1")
    logs = f"epoch 1/1 ...\n{line}\nraydeep-outputs {{broken\n"
    assert find_outputs(logs) == {"kind": "train", "uri": "s3://b/runs/x-1", "run_dir": "/tmp/ray/w/runs/x",
                                  "node": "10.0.0.1", "endpoint_url": "http://s3:9000"}
    assert find_outputs("no line here\n") is None
    out = io.StringIO()
    assert not announce(None, "/r", kind="train", out=out, environ={})
    assert announce(None, "/r", kind="train", out=out, environ={JOB_ENV: "{}"})
    assert json.loads(out.getvalue().split(" ", 1)[1])["uri"] is None


def test_submit_without_run_storage_is_refused_on_several_nodes_and_noted_on_one():
    from raydeep.cluster.jobs import storage_verdict
    from raydeep.errors import ConfigError

    assert storage_verdict("s3://b/runs", 5, True) is None
    for nodes, can_launch, shape in ((2, False, "2 nodes"), (1, True, "an autoscaler that adds nodes")):
        with pytest.raises(ConfigError) as info:
            storage_verdict(None, nodes, can_launch)
        assert str(info.value).startswith(f"run.storage is unset and the cluster has {shape}: ")
        assert "--set run.storage=s3://BUCKET/runs" in str(info.value) and "\n" not in str(info.value)
        assert info.value.exit_code == 2
    for nodes in (1, 0):  # one node, or a dashboard that does not say
        assert storage_verdict(None, nodes, False).startswith("note: run.storage is unset, so outputs and checkpoints "
                                                              "stay on the head node")
