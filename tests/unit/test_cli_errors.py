"""Bad input through the real console script: one line, non-zero exit, nothing half-written.

None of these start Ray: every check runs on the driver before Ray would start.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tests.helpers import tiny_config, write_config


def assert_one_line_error(proc, *needles: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [x for x in err.splitlines() if x.startswith("raydeep: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def config_file(tmp_path):
    return write_config(tmp_path / "run.yaml", tiny_config())


@pytest.mark.parametrize(
    "override, needles",
    [
        ("model.layrs=3", ["model.layrs", "unknown key", "did you mean 'layers'"]),
        ("model.layers=abc", ["model.layers = 'abc'", "(from --set)", "integer"]),
        ("optim.lr=-1", ["optim.lr = -1", "greater than 0"]),
        ("deepspeed.zero_stage=4", ["deepspeed.zero_stage = 4", "less than or equal to 3"]),
        ("scaling.num_workers=0", ["scaling.num_workers = 0", "must be >= 1 or 'auto'"]),
        ("scaling.gpus_per_worker=0.5", ["scaling.gpus_per_worker = 0.5", "whole GPUs", "two NCCL ranks"]),
        ("schedule.name=cosinus", ["schedule.name", "cosine"]),
        ("optim.name=lamb", ["optim.name = 'lamb'", "'adamw'"]),
        ("imbalance.loss=mse", ["imbalance.loss = 'mse' is the regression loss", "model.task: regression"]),
        # a classification run ranking by a loss in mode max would keep its worst epoch as "best"
        ("run.early_stopping={metric: val/loss, mode: max}",
         ["run.early_stopping.metric = 'val/loss' with mode: max would favour the worst values", "use mode: min"]),
    ],
)
def test_config_errors_name_file_key_value(config_file, tmp_path, override, needles):
    run_dir = tmp_path / "out"
    proc = run_cli("train", str(config_file), "--set", override, "--run-dir", str(run_dir))
    line = assert_one_line_error(proc, str(config_file), *needles)
    assert "Traceback" not in line
    assert not run_dir.exists()


@pytest.mark.parametrize("deepspeed, needles", [
    ("{precision: fp16}", ["deepspeed.precision = 'fp16' with scaling.use_gpu: false", "bf16 or fp32"]),
    ("{zero_stage: 2, offload: cpu}", ["deepspeed.offload = 'cpu' with scaling.use_gpu: false", "remove it"]),
])
def test_what_cpu_workers_cannot_do_is_refused_at_load(config_file, tmp_path, deepspeed, needles):
    run_dir = tmp_path / "out"
    proc = run_cli("train", str(config_file), "--set", "scaling.use_gpu=false", "--set", f"deepspeed={deepspeed}",
                   "--run-dir", str(run_dir))
    assert_one_line_error(proc, str(config_file), *needles)
    assert not run_dir.exists()


def test_missing_config_and_bad_yaml(tmp_path):
    assert_one_line_error(run_cli("train", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train: [\n")
    assert_one_line_error(run_cli("config", "show", str(bad)), "bad.yaml", "line", "not valid YAML")


def test_bad_set_syntax(config_file):
    assert_one_line_error(run_cli("config", "show", str(config_file), "--set", "model.layers"), "KEY=VALUE")


def test_config_show_prints_resolved_config(config_file):
    proc = run_cli("config", "show", str(config_file), "--set", "model.layers=3", "--set", "run.epochs=7",
                   check=True)
    import yaml

    shown = yaml.safe_load(proc.stdout)
    assert shown["model"]["layers"] == 3 and shown["run"]["epochs"] == 7
    assert shown["optim"]["name"] == "adamw"  # defaults are filled in
    assert shown["schedule"] == {"name": "constant", "warmup": 0}


def _table(labels, n=8):
    return pa.table({"input_ids": pa.array([[1, 2, 3, 0]] * n, type=pa.list_(pa.int32())),
                     "label": pa.array(labels, type=pa.int64())})


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing", ["data.train", "does not exist"]),
        ("no_label", ["data.train", "label"]),
        ("label_range", ["data.train", "label 7 outside [0, 4)"]),
        ("corrupt", ["data.train", "part-00000.parquet"]),
    ],
)
def test_data_errors_name_what_and_where(tmp_path, case, needles):
    data = tmp_path / "train"
    data.mkdir()
    shard = data / "part-00000.parquet"
    if case == "no_label":
        pq.write_table(_table([0] * 8).drop(["label"]), shard)
    elif case == "label_range":
        pq.write_table(_table([0, 1, 2, 3, 7, 0, 1, 2]), shard)
    elif case == "corrupt":
        shard.write_bytes(b"PAR1 this is not a parquet file")
    target = str(tmp_path / "nowhere") if case == "missing" else str(data)
    cfg = tiny_config(data={"train": target})
    cfg["model"]["vocab_size"] = 64
    run_dir = tmp_path / "out"
    proc = run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)), "--run-dir", str(run_dir))
    assert_one_line_error(proc, *needles)
    assert not run_dir.exists()


def test_train_help():
    proc = run_cli("train", "--help", check=True)
    assert "--set" in proc.stdout and "--resume" in proc.stdout and "--address" in proc.stdout


def test_schedules_plot_draws_the_run_and_comparisons(config_file, tmp_path):
    out = tmp_path / "lr.png"
    run_cli("schedules", "plot", str(config_file), "--out", str(out), "--compare", "cosine",
            "--compare", "{name: step, step_size: 4, per: step}", check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli("schedules", "plot", str(config_file), "--out", str(out), "--compare", "{name: step}")
    assert_one_line_error(bad, "--compare", "step_size")
