"""model.task: regression: the seed's worked example, exact regression metrics, the linear model,
the seed-regression data set, and the config and data errors (one line each)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydeep.config import validate
from raydeep.sections import REGRESSION_METRICS
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.bundled.seed_regression import seed_regression_xy
from raydeep.datasets.scan import check_finite, target_summary
from raydeep.datasets.splits import open_split
from raydeep.errors import ConfigError, DataError
from raydeep.trainers.engine import build_optimizer, set_lr
from raydeep.trainers.losses import build_loss
from raydeep.trainers.metrics import (
    RegressionSums,
    flat_regression_metrics,
    mae,
    mse,
    r2,
    regression_metrics,
    rmse,
)
from raydeep.trainers.models import build_model
from raydeep.trainers.models.linear import LinearModel
from raydeep.trainers.schedules import Schedule

ONE_FEATURE = FeatureSpec(column="features", kind="numeric", num_features=1)
SEED = "datasets://seed-regression/{split}?rows=40&val_rows=10&noise=0.1&seed=0"


def regression_config(**sections) -> dict:
    cfg = {
        "name": "seed",
        "data": {"train": SEED.format(split="train"), "val": SEED.format(split="val"), "batch_size": 5},
        "model": {"kind": "linear", "task": "regression"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0, "grad_clip": 0.0},
        "scaling": {"num_workers": 1},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw, "seed.yaml")
    line = str(info.value)
    assert "\n" not in line and line.startswith("seed.yaml: "), line
    assert "{" not in line, line  # names keys; never echoes a whole section back
    return line


# ---------------------------------------------------------------------------------------------
# The seed's worked example


def test_seed_worked_example_converges_to_intercept_0_slope_2():
    """x = [1..5], y = 2x; raydeep's linear model, mse loss, SGD and constant schedule, built from a
    validated config the way the worker builds them (``create_engine`` hands the same model and
    optimizer to DeepSpeed; ``set_lr`` sets the schedule's LR before every step)."""
    cfg = validate(regression_config(), "seed.yaml")
    assert cfg.imbalance.loss == "mse" and cfg.model.output_dim == 1
    x, y = seed_regression_xy("train", rows=5)
    assert x.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and y.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    x, y = torch.tensor(x, dtype=torch.float32)[:, None], torch.tensor(y)  # y float64, as parquet gives it

    model = build_model(cfg.model, ONE_FEATURE)
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.0
    loss_fn = build_loss(cfg.imbalance, None, cfg.model.output_dim)
    steps = 500  # θ₀ within 1e-4 by then (the slow direction contracts by 1 - 0.05·0.34 per step)
    schedule = Schedule(cfg.schedule, cfg.optim.lr, steps, 1)
    engine = SimpleNamespace(optimizer=optimizer)
    # Full batch; the MSE Hessian's largest eigenvalue is 2(6 + √34) ≈ 23.7, so lr 0.05 < 2/23.7 is stable.
    for step in range(steps):
        set_lr(engine, schedule(step))
        optimizer.zero_grad()
        loss_fn(model(x), y, 0).backward()
        optimizer.step()
    theta0, theta1 = model.bias.item(), model.weight.item()
    assert abs(theta0 - 0.0) < 0.05, theta0  # y = 2x has intercept 0
    assert abs(theta1 - 2.0) < 0.02, theta1
    with torch.no_grad():
        assert float(loss_fn(model(x), y, 0)) < 1e-6


# ---------------------------------------------------------------------------------------------
# Metrics, against hand-computed values

P = [2.5, 0.0, 2.0, 8.0]
Y = [3.0, -0.5, 2.0, 7.0]
# errors p - y: -0.5, 0.5, 0, 1 -> squares 0.25, 0.25, 0, 1 (sum 1.5); abs 0.5, 0.5, 0, 1 (sum 2)
# mean y = 11.5 / 4 = 2.875; SST = 0.015625 + 11.390625 + 0.765625 + 17.015625 = 29.1875


def test_regression_metrics_by_hand():
    assert mse(P, Y) == 1.5 / 4 == 0.375
    assert rmse(P, Y) == math.sqrt(0.375)
    assert mae(P, Y) == 2 / 4 == 0.5
    assert r2(P, Y) == pytest.approx(1 - 1.5 / 29.1875, abs=1e-15)
    assert regression_metrics(torch.tensor(P)[:, None], torch.tensor(Y, dtype=torch.float64)) == pytest.approx(
        {"mse": 0.375, "rmse": math.sqrt(0.375), "mae": 0.5, "r2": 1 - 1.5 / 29.1875}, abs=1e-15)


def test_r2_edge_cases_follow_scikit_learn():
    assert r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert r2([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0  # predicting the mean
    assert r2([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) == 1 - 8 / 2 == -3.0  # worse than the mean: negative
    assert r2([4.0, 4.0], [4.0, 4.0]) == 1.0  # constant targets, perfect
    assert r2([4.0, 5.0], [4.0, 4.0]) == 0.0  # constant targets, imperfect (sklearn's force_finite)


def test_regression_sums_over_batches_equal_one_pass():
    rng = np.random.default_rng(0)
    y = 1e6 + rng.normal(0, 1e-2, 1000)  # a mean that dwarfs the spread: no cancellation allowed
    p = y + rng.normal(0, 3e-3, 1000)
    sums = RegressionSums()
    for lo in range(0, 1000, 64):
        sums.update(torch.tensor(p[lo:lo + 64])[:, None], torch.tensor(y[lo:lo + 64]))
    got = sums.metrics()
    want = {"mse": mse(p, y), "rmse": rmse(p, y), "mae": mae(p, y), "r2": r2(p, y)}
    assert got == pytest.approx(want, rel=1e-9)
    assert 0.9 < got["r2"] < 0.95  # 1 - (3e-3)² / (1e-2)² ≈ 0.91
    assert flat_regression_metrics(got) == {f"val/{k}": v for k, v in got.items()}
    assert set(flat_regression_metrics(got)) | {"val/loss", "train/loss"} == set(REGRESSION_METRICS)


def test_regression_metrics_refuse_mismatched_shapes_and_no_rows():
    with pytest.raises(ValueError, match=r"predictions \[N\] or \[N, 1\]"):
        mse(np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="zero rows"):
        RegressionSums().metrics()


# ---------------------------------------------------------------------------------------------
# Models


def test_linear_model_shapes_and_outputs():
    reg = build_model(validate(regression_config(), "x").model, FeatureSpec("features", "numeric", num_features=3))
    assert isinstance(reg, LinearModel) and reg.weight.shape == (1, 3) and reg.bias.shape == (1,)
    assert reg(torch.ones(4, 3)).shape == (4,)  # one value per row, like the targets
    clf = validate(regression_config(model={"task": "classification", "num_classes": 10}, imbalance={"loss": "focal"},
                                     run={"early_stopping": {"metric": "val/macro_f1"}}), "x")
    digits = FeatureSpec("pixels", "image", image_shape=(1, 8, 8))
    assert build_model(clf.model, digits)(torch.ones(2, 64)).shape == (2, 10)  # logistic regression on pixels
    with pytest.raises(ValueError, match="expected 3 features per row, got 2"):
        reg(torch.ones(4, 2))
    with pytest.raises(ValueError, match="token ids"):
        build_model(clf.model, FeatureSpec("input_ids", "tokens", seq_len=8, vocab_size=20))


def test_transformer_and_cnn_get_a_one_output_regression_head():
    cfg = validate(regression_config(model={"kind": "cnn"}), "x").model
    digits = FeatureSpec("pixels", "image", image_shape=(1, 8, 8))
    assert build_model(cfg, digits)(torch.ones(2, 64)).shape == (2, 1)
    cfg = validate(regression_config(model={"kind": "transformer", "d_model": 16, "heads": 2, "layers": 1,
                                            "max_len": 16}), "x").model
    tokens = FeatureSpec("input_ids", "tokens", seq_len=8, vocab_size=20)
    out = build_model(cfg, tokens)(torch.randint(1, 20, (3, 8)))
    assert out.shape == (3, 1)
    assert build_loss(validate(regression_config(), "x").imbalance, None, 1)(out, torch.zeros(3), 0).ndim == 0


# ---------------------------------------------------------------------------------------------
# The seed-regression data set and numeric features


def test_seed_regression_splits(tmp_path):
    x, y = seed_regression_xy("train", rows=9)
    assert x.tolist() == np.linspace(1, 5, 9).tolist() and np.array_equal(y, 2 * x)
    vx, vy = seed_regression_xy("val", rows=50, noise=0.1, seed=3)
    assert 1 <= vx.min() and vx.max() <= 5 and not np.array_equal(vy, 2 * vx)
    assert np.abs(vy - 2 * vx).max() < 0.5  # Gaussian noise of std 0.1
    assert np.array_equal(seed_regression_xy("val", rows=50, noise=0.1, seed=3)[0], vx)  # seeded

    split = open_split(SEED.format(split="train"), key="data.train", cache_dir=str(tmp_path), label_kind="value")
    assert split.feature == ONE_FEATURE and split.num_rows == 40 and split.num_classes is None
    assert split.manifest["task"] == "regression" and "label_histogram" not in split.manifest
    summary = target_summary(split)
    assert summary["rows"] == 40 and summary["min"] < 2.5 and summary["max"] > 9.5
    assert summary["mean"] == pytest.approx(6.0, abs=0.1)
    check_finite(split)
    with pytest.raises(DataError, match="unknown parameter 'slop'"):
        open_split("datasets://seed-regression/train?slop=3", key="data.train", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="rows must be in"):
        open_split("datasets://seed-regression/train?rows=1", key="data.train", cache_dir=str(tmp_path))


def test_numeric_features_without_manifest_and_bad_targets(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    features = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 3)
    pq.write_table(pa.table({"features": features, "label": pa.array([0.5, 1.5, float("nan"), 2.0])}),
                   d / "part-00000.parquet")
    split = open_split(str(d), key="data.train", label_kind="value")
    assert split.feature == FeatureSpec("features", "numeric", num_features=3)
    assert FeatureSpec.from_dict(split.feature.to_dict()) == split.feature
    with pytest.raises(DataError, match=r"row 2: target nan in 'label' is not finite"):
        target_summary(split)
    with pytest.raises(DataError, match="a numeric target needs model.task: regression"):
        open_split(str(d), key="data.train")  # class labels must be integers


# ---------------------------------------------------------------------------------------------
# Config and plan errors: one line each, naming the key


def test_regression_defaults_are_regression_metrics():
    cfg = validate(regression_config(), "seed.yaml")
    assert (cfg.run.early_stopping.metric, cfg.run.early_stopping.mode) == ("val/rmse", "min")
    cfg = validate(regression_config(run={"early_stopping": {"metric": "val/r2"}},
                                     tune={"space": {"optim.lr": "loguniform(1e-3, 1e-1)"}}), "seed.yaml")
    assert (cfg.run.early_stopping.metric, cfg.run.early_stopping.mode) == ("val/r2", "max")
    assert (cfg.tune.metric, cfg.tune.mode) == ("val/loss", "min")
    # What a worker re-validates from the dump is the same config.
    assert validate(cfg.model_dump(mode="json"), "job") == cfg


@pytest.mark.parametrize("change, needles", [
    ({"imbalance": {"loss": "focal"}}, ["imbalance.loss = 'focal'", "imbalance.loss: mse"]),
    ({"imbalance": {"weighting": "inverse"}}, ["imbalance", "class weighting"]),
    ({"imbalance": {"sampling": "oversample"}}, ["imbalance", "resampling"]),
    ({"model": {"num_classes": 3}}, ["model: num_classes = 3", "remove num_classes"]),
    ({"model": {"task": "classification"}}, ["model: num_classes is required"]),
    ({"model": {"task": "classification", "num_classes": 2}, "imbalance": {"loss": "mse"}},
     ["imbalance.loss = 'mse' is the regression loss"]),
    ({"model": {"task": "regresion"}}, ["model.task = 'regresion'", "'regression'"]),
    ({"run": {"early_stopping": {"metric": "val/macro_f1"}}},
     ["run.early_stopping.metric = 'val/macro_f1'", "val/rmse"]),
    ({"run": {"early_stopping": {"metric": "val/rmse", "mode": "max"}}}, ["mode: max", "use mode: min"]),
    ({"schedule": {"name": "plateau", "metric": "val/accuracy", "mode": "max"}},
     ["schedule.metric = 'val/accuracy'"]),
    ({"tune": {"metric": "val/macro_f1", "space": {"optim.lr": "loguniform(1e-3, 1e-1)"}}},
     ["tune.metric = 'val/macro_f1'"]),
])
def test_regression_config_errors_are_one_line(change, needles):
    raw = copy.deepcopy(regression_config())
    for section, value in change.items():
        raw[section] = {**raw.get(section, {}), **value}
    line = config_error(raw)
    for needle in needles:
        assert needle in line, (needle, line)


def test_classification_refuses_regression_metrics():
    raw = regression_config(model={"task": "classification", "num_classes": 2}, imbalance={"loss": "cross_entropy"},
                            run={"early_stopping": {"metric": "val/rmse", "mode": "min"}})
    assert "run.early_stopping.metric = 'val/rmse' is a regression metric" in config_error(raw)


SPACE = {"optim.lr": "loguniform(1e-3, 1e-1)"}
CLASSIFICATION = {"model": {"task": "classification", "num_classes": 2}, "imbalance": {"loss": "cross_entropy"},
                  "run": {"early_stopping": {"metric": "val/macro_f1", "mode": "max"}}}


@pytest.mark.parametrize("metric, mode", [("val/rmse", "min"), ("val/mae", "min"), ("val/mse", "min"),
                                          ("val/r2", "max"), ("val/loss", "min")])
def test_regression_sweeps_rank_by_regression_metrics(metric, mode):
    for tune in ({"metric": metric}, {"metric": metric, "mode": mode}):  # unset, the mode follows the metric
        cfg = validate(regression_config(tune={**tune, "space": SPACE}), "seed.yaml")
        assert (cfg.tune.metric, cfg.tune.mode) == (metric, mode)
        assert validate(cfg.model_dump(mode="json"), "job") == cfg  # what a trial re-validates
    wrong = "max" if mode == "min" else "min"
    assert config_error(regression_config(tune={"metric": metric, "mode": wrong, "space": SPACE})) == (
        f"seed.yaml: tune: metric {metric} with mode: {wrong} would favour the worst trials; use mode: {mode}")


@pytest.mark.parametrize("metric", ["val/mse", "val/rmse", "val/mae", "val/r2"])
@pytest.mark.parametrize("mode", [None, "min", "max"])
def test_classification_sweeps_refuse_regression_metrics(metric, mode):
    tune = {"metric": metric, "space": SPACE, **({"mode": mode} if mode else {})}
    raw = copy.deepcopy(regression_config(**CLASSIFICATION, tune=tune))
    # whatever the mode: the metric is what is wrong, not its direction
    assert config_error(raw) == (f"seed.yaml: tune.metric = {metric!r} is a regression metric; set model.task: "
                                 "regression, or pick a classification metric such as val/macro_f1")
    raw["tune"]["metric"] = "val/macro_f1"
    raw["tune"]["mode"] = "max"
    assert validate(raw, "seed.yaml").tune.metric == "val/macro_f1"


@pytest.mark.parametrize("metric, mode", [("val/macro_f1", None), ("val/accuracy", "min"), ("val/f1/3", "max"),
                                          ("val/recall/3", None)])
def test_regression_sweeps_refuse_classification_metrics(metric, mode):
    tune = {"metric": metric, "space": SPACE, **({"mode": mode} if mode else {})}
    assert config_error(regression_config(tune=tune)) == (
        f"seed.yaml: tune.metric = {metric!r}: a model.task: regression run reports val/loss, val/mse, val/rmse, "
        "val/mae, val/r2, train/loss")


def test_a_misspelt_regression_tune_metric_gets_a_suggestion():
    line = config_error(regression_config(tune={"metric": "val/rmes", "space": SPACE}))
    assert line.startswith("seed.yaml: tune.metric = 'val/rmes': did you mean 'val/rmse'?")


def test_plan_refuses_a_model_that_cannot_read_the_data(tmp_path, monkeypatch):
    from raydeep.trainers.plan import plan_data

    monkeypatch.setenv("RAYDEEP_CACHE", str(tmp_path))
    cfg = validate(regression_config(model={"kind": "transformer", "heads": 2, "d_model": 16}), "seed.yaml")
    with pytest.raises(ConfigError, match=r"model.kind = 'transformer' on data.train \(numeric in 'features'\): "
                                          r"the transformer takes tokens or images.*model.kind: linear"):
        plan_data(cfg)
    data = plan_data(validate(regression_config(), "seed.yaml"))
    assert data.class_counts is None and data.label_names is None and data.targets["rows"] == 40
