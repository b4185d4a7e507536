"""Config inheritance: ``base: other.yaml`` merged under the file, ``--set`` last, who set what,
and errors that name the file holding the bad key. Real files in a temp dir, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raydeep.config import (
    load_config,
    load_config_with_origins,
    to_yaml,
    to_yaml_with_origins,
    validate,
)
from raydeep.config_files import SET, load_raw, merge
from raydeep.errors import ConfigError
from tests.conftest import run_cli
from tests.helpers import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def base_file(tmp_path):
    """A complete run config in a sub-directory, for files elsewhere to name as their base."""
    (tmp_path / "shared").mkdir()
    return write_config(tmp_path / "shared" / "base.yaml",
                        tiny_config(schedule={"name": "cosine", "warmup": 0.1, "min_lr_ratio": 0.05}))


# ---------------------------------------------------------------------------------------------
# How two files merge


def test_mappings_merge_key_by_key_and_lists_and_scalars_replace():
    base = {"a": {"x": 1, "y": [1, 2], "deep": {"p": 1, "q": 2}}, "b": 1, "keep": "me"}
    over = {"a": {"y": [3], "deep": {"q": 9}}, "b": [1], "c": 2}
    assert merge(base, over) == {"a": {"x": 1, "y": [3], "deep": {"p": 1, "q": 9}}, "b": [1], "keep": "me", "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2], "deep": {"p": 1, "q": 2}}, "b": 1, "keep": "me"}  # not mutated


def test_null_replaces_the_bases_value():
    assert merge({"data": {"train": "t", "test": "x"}, "tune": {"metric": "m"}},
                 {"data": {"test": None}, "tune": None}) == {"data": {"train": "t", "test": None}, "tune": None}


def test_a_section_given_as_a_string_and_as_a_mapping_replace_each_other():
    assert merge({"deepspeed": "ds.json"}, {"deepspeed": {"zero_stage": 2}}) == {"deepspeed": {"zero_stage": 2}}
    assert merge({"deepspeed": {"zero_stage": 2, "precision": "bf16"}}, {"deepspeed": "ds.json"}) == \
        {"deepspeed": "ds.json"}


def test_a_section_whose_name_changes_replaces_the_bases_whole():
    cosine = {"schedule": {"name": "cosine", "warmup": 0.1, "min_lr_ratio": 0.05}}
    assert merge(cosine, {"schedule": {"name": "step", "step_size": 2}}) == \
        {"schedule": {"name": "step", "step_size": 2}}
    # the same name, or none: the parameters merge
    assert merge(cosine, {"schedule": {"name": "cosine", "warmup": 0.2}}) == \
        {"schedule": {"name": "cosine", "warmup": 0.2, "min_lr_ratio": 0.05}}
    assert merge(cosine, {"schedule": {"warmup": 0.2}}) == \
        {"schedule": {"name": "cosine", "warmup": 0.2, "min_lr_ratio": 0.05}}
    assert merge({"tune": {"scheduler": {"name": "asha", "grace_period": 4}}},
                 {"tune": {"scheduler": {"name": "pbt"}}}) == {"tune": {"scheduler": {"name": "pbt"}}}
    # the run's own name is a plain value: renaming a run keeps every section
    assert merge({"name": "a", "run": {"epochs": 3}}, {"name": "b"}) == {"name": "b", "run": {"epochs": 3}}


def test_a_search_space_replaces_the_bases_whole():
    base = {"tune": {"metric": "val/macro_f1", "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]},
                                                         "model.layers": {"choice": [1, 2]}}}}
    assert merge(base, {"tune": {"space": {"optim.lr": {"uniform": [1e-3, 2e-3]}}}}) == \
        {"tune": {"metric": "val/macro_f1", "space": {"optim.lr": {"uniform": [1e-3, 2e-3]}}}}


# ---------------------------------------------------------------------------------------------
# Loading a chain of files


def test_base_is_merged_under_the_file_relative_to_the_file(tmp_path, base_file):
    child = write(tmp_path / "exp" / "child.yaml",
                  "base: ../shared/base.yaml\nname: child\nmodel: {layers: 3}\nrun: {epochs: 4}\n")
    expected = tiny_config(name="child", schedule={"name": "cosine", "warmup": 0.1, "min_lr_ratio": 0.05},
                           model={"layers": 3}, run={"epochs": 4})
    assert load_config(child) == validate(expected, "expected")


def test_a_chain_of_bases_each_relative_to_the_file_that_names_it(tmp_path, base_file):
    write(tmp_path / "shared" / "mid" / "mid.yaml", "base: ../base.yaml\nmodel: {layers: 2, d_model: 64}\n")
    top = write(tmp_path / "top.yaml", "base: shared/mid/mid.yaml\nmodel: {layers: 3}\n")
    loaded = load_config_with_origins(top)
    assert (loaded.config.model.layers, loaded.config.model.d_model, loaded.config.model.heads) == (3, 64, 2)
    assert loaded.files == (str(top), str(tmp_path / "shared" / "mid" / "mid.yaml"), str(base_file))


def test_set_applies_after_every_file(tmp_path, base_file):
    child = write(tmp_path / "child.yaml", "base: shared/base.yaml\nmodel: {layers: 3}\n")
    cfg = load_config(child, ["model.layers=5", "optim.lr=0.01", "schedule={name: constant}"])
    assert (cfg.model.layers, cfg.optim.lr, cfg.schedule.name) == (5, 0.01, "constant")


def test_origins_name_the_file_or_set_that_gave_each_leaf(tmp_path, base_file):
    write(tmp_path / "mid.yaml", "base: shared/base.yaml\nmodel: {layers: 2}\ndeepspeed: ds.json\n")
    top = write(tmp_path / "top.yaml", "base: mid.yaml\nmodel: {d_model: 64}\ndeepspeed: {zero_stage: 2}\n"
                                       "schedule: {name: step, step_size: 2}\n")
    loaded = load_config_with_origins(top, ["run.epochs=9"])
    base, mid = str(base_file), str(tmp_path / "mid.yaml")
    assert loaded.origins == {
        ("name",): base,
        ("data", "train"): base, ("data", "val"): base, ("data", "batch_size"): base,
        ("data", "shuffle_buffer"): base,
        ("model", "kind"): base, ("model", "num_classes"): base, ("model", "d_model"): str(top),
        ("model", "layers"): mid, ("model", "heads"): base, ("model", "max_len"): base,
        ("model", "dropout"): base,
        ("optim", "lr"): base,
        ("schedule", "name"): str(top), ("schedule", "step_size"): str(top),  # cosine's keys are gone
        ("deepspeed", "zero_stage"): str(top),  # the base's mapping, then mid's ds.json, both replaced
        ("scaling", "num_workers"): base,
        ("run", "epochs"): SET, ("run", "seed"): base,
    }
    assert loaded.origin(("deepspeed", "precision")) == "default"
    assert loaded.origin(("model", "pooling")) == "default"


def test_a_string_section_owns_every_key_under_it(tmp_path, base_file):
    child = write(tmp_path / "child.yaml", "base: shared/base.yaml\ndeepspeed: ds.json\n")
    loaded = load_config_with_origins(child)
    assert loaded.config.deepspeed.config_file == "ds.json"
    assert loaded.origin(("deepspeed", "config_file")) == str(child)


def test_the_resolved_yaml_has_no_base_and_reads_back_equal(tmp_path, base_file):
    child = write(tmp_path / "child.yaml", "base: shared/base.yaml\nmodel: {layers: 3}\n")
    cfg = load_config(child)
    text = to_yaml(cfg)  # what a run's config.yaml and a sweep's best.yaml hold
    assert "base" not in yaml.safe_load(text)
    saved = write(tmp_path / "elsewhere" / "config.yaml", text)
    assert load_config(saved) == cfg


def test_the_origin_listing_is_the_same_yaml_with_comments(tmp_path, base_file):
    child = write(tmp_path / "child.yaml", "base: shared/base.yaml\nmodel: {layers: 3}\n")
    loaded = load_config_with_origins(child, ["run.epochs=2"])
    text = to_yaml_with_origins(loaded)
    assert yaml.safe_load(text) == yaml.safe_load(to_yaml(loaded.config))
    lines = {line.split(":")[0].strip(): line for line in text.splitlines()}
    assert lines["layers"].endswith(f"# {child}")
    assert lines["heads"].endswith(f"# {base_file}")
    assert lines["epochs"].endswith("# --set")
    assert lines["mlp_ratio"].endswith("# default")
    assert lines["model"] == "model:"  # a section line carries no origin


def test_a_config_without_base_loads_as_before(tmp_path):
    raw = tiny_config()
    path = write_config(tmp_path / "run.yaml", raw)
    loaded = load_config_with_origins(path)
    assert loaded.config == validate(raw, "run.yaml")
    assert loaded.files == (str(path),)
    assert set(loaded.origins.values()) == {str(path)}
    write_config(path, tiny_config(model={"layrs": 3}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: model.layrs: unknown key (did you mean 'layers'?)"


# ---------------------------------------------------------------------------------------------
# What is refused, in one line


def test_a_cycle_is_refused_naming_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "base: sub/b.yaml\nname: a\n")
    write(tmp_path / "sub" / "b.yaml", "base: ../a.yaml\nname: b\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "a.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "sub" / "b.yaml"
    assert str(err.value) == f"{b}: base: ../a.yaml makes a cycle: {a} -> {b} -> {a}"
    write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "self.yaml")
    me = tmp_path / "self.yaml"
    assert str(err.value) == f"{me}: base: self.yaml makes a cycle: {me} -> {me}"


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path, base_file):
    write(tmp_path / "mid.yaml", "base: nope/missing.yaml\n")
    top = write(tmp_path / "top.yaml", "base: mid.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert str(err.value) == (f"{tmp_path / 'mid.yaml'}: base: nope/missing.yaml: config file not found "
                              f"({tmp_path / 'nope' / 'missing.yaml'})")


@pytest.mark.parametrize("base, shown", [("[a.yaml]", "['a.yaml']"), ("7", "7"), ("''", "''")])
def test_base_must_be_a_path(tmp_path, base, shown):
    path = write(tmp_path / "run.yaml", f"base: {base}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: base = {shown}: expected the path of another config file, relative to this one"


def test_a_base_that_is_not_a_mapping_is_named(tmp_path):
    write(tmp_path / "list.yaml", "- a\n- b\n")
    path = write(tmp_path / "run.yaml", "base: list.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{tmp_path / 'list.yaml'}: expected a mapping of sections at the top level, "
                              f"got list (it is the base: of {path})")


def test_base_cannot_be_set_on_the_command_line(tmp_path, base_file):
    with pytest.raises(ConfigError, match=r"--set 'base=x.yaml': base: is read from a config file"):
        load_config(base_file, ["base=x.yaml"])


def test_validation_errors_name_the_file_that_holds_the_key(tmp_path, base_file):
    base_file.write_text(base_file.read_text() + "imbalance: {loss: focl}\n")
    child = write(tmp_path / "child.yaml", "base: shared/base.yaml\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    assert str(err.value).startswith(f"{child}: optim.lrr: unknown key (did you mean 'lr'?) (and 1 more: "
                                     f"{base_file}: imbalance.loss = 'focl': ")
    # a --set value is named as today: the file given, and (from --set)
    with pytest.raises(ConfigError) as err:
        load_config(child, ["optim={lr: 0.1}", "imbalance.loss=x"])
    assert str(err.value).startswith(f"{child}: imbalance.loss = 'x' (from --set): ")
    # a check across a section's keys, all from one file, names that file
    base_file.write_text(yaml.safe_dump(tiny_config(model={"d_model": 30, "heads": 4})))
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "plain.yaml", "base: shared/base.yaml\n"))
    assert str(err.value) == f"{base_file}: model: d_model (30) must be divisible by heads (4)"


def test_the_cli_refuses_a_bad_base_in_one_line_with_exit_2(tmp_path, base_file):
    base_file.write_text(base_file.read_text() + "deepspeed: {zero_stage: 4}\n")
    child = write(tmp_path / "child.yaml", "base: shared/base.yaml\nname: child\n")
    proc = run_cli("config", "show", str(child))  # train, tune, submit and plot load it the same way
    assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"raydeep: error: {base_file}: deepspeed.zero_stage = 4: Input should be less than or equal to 3"]
    write(tmp_path / "loop.yaml", "base: child.yaml\n")
    child.write_text("base: loop.yaml\n")
    proc = run_cli("config", "show", str(child))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"raydeep: error: {tmp_path / 'loop.yaml'}: base: child.yaml makes a cycle: "
        f"{child} -> {tmp_path / 'loop.yaml'} -> {child}"]


# ---------------------------------------------------------------------------------------------
# The shipped sweep


def test_the_shipped_sweep_is_the_demo_plus_its_tune_section():
    sweep_raw = load_raw(ROOT / "configs" / "sweep-digits-lt.yaml")
    assert set(sweep_raw) == {"base", "tune"} and sweep_raw["base"] == "digits-lt.yaml"
    demo_raw = load_raw(ROOT / "configs" / "digits-lt.yaml")
    written_out = validate({**demo_raw, "tune": sweep_raw["tune"]}, "the sweep as one file")
    sweep = load_config(ROOT / "configs" / "sweep-digits-lt.yaml")
    assert sweep == written_out
    assert to_yaml(sweep) == to_yaml(written_out)
    assert sweep.tune.search.num_samples == 16 and sweep.run.epochs == 40
