"""The command line's front door: ``--version``, the top-level help, and ``config show``
(with ``--origin``) through the real console script. No Ray."""

from __future__ import annotations

import importlib.metadata
import shlex
from pathlib import Path

import pytest
import yaml

import raydeep
from raydeep import cli
from tests.conftest import run_cli
from tests.helpers import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # run_cli passes os.environ on


def test_version_prints_the_installed_version_and_exits_0():
    proc = run_cli("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"raydeep {importlib.metadata.version('raydeep')}\n", "")


def test_version_falls_back_to_the_modules_version(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(raydeep, "__version__", "9.8.7", raising=False)
    assert cli.version() == "9.8.7"
    monkeypatch.delattr(raydeep, "__version__")
    assert cli.version() == "unknown"


def test_help_opens_with_what_raydeep_is_and_ends_with_three_examples():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "raydeep trains models on Ray with DeepSpeed, from one YAML config, on a laptop or a cluster."
    assert lines[1] == "" and lines[2].startswith("usage: raydeep ")
    assert "`" not in proc.stdout  # no reStructuredText (or Markdown) markup
    assert lines[-4] == "examples:"
    examples = [line.split("#")[0].split() for line in lines[-3:]]
    assert [e[:3] for e in examples] == [["raydeep", "train", "configs/digits-lt.yaml"],
                                         ["raydeep", "tune", "configs/sweep-digits-lt.yaml"],
                                         ["raydeep", "submit", "configs/digits-lt.yaml"]]
    assert examples[2][3:] == ["--address", "http://HEAD:8265"]
    for words in examples:
        assert (ROOT / words[2]).is_file()
        args = cli.build_parser().parse_args(words[1:])  # each example is a command the parser takes
        assert args.config == words[2]


def test_subcommand_help_does_not_repeat_the_top_level_line():
    proc = run_cli("config", "show", "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: raydeep config show ")
    assert "--origin" in proc.stdout


def test_config_show_prints_the_merged_validated_yaml(tmp_path):
    (tmp_path / "shared").mkdir()
    write_config(tmp_path / "shared" / "base.yaml", tiny_config())
    child = tmp_path / "child.yaml"
    child.write_text("base: shared/base.yaml\nname: child\nmodel: {layers: 3}\n")
    proc = run_cli("config", "show", str(child), "--set", "run.epochs=7")
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert "base" not in shown
    assert (shown["name"], shown["model"]["layers"], shown["model"]["d_model"], shown["run"]["epochs"]) == \
        ("child", 3, 32, 7)
    assert shown["optim"]["name"] == "adamw"  # defaults filled in


def test_config_show_origin_names_who_set_each_value(tmp_path):
    (tmp_path / "shared").mkdir()
    base = write_config(tmp_path / "shared" / "base.yaml", tiny_config())
    child = tmp_path / "child.yaml"
    child.write_text("base: shared/base.yaml\nmodel: {layers: 3}\n")
    proc = run_cli("config", "show", str(child), "--set", "run.epochs=7", "--origin")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == yaml.safe_load(run_cli("config", "show", str(child), "--set",
                                                                  "run.epochs=7", check=True).stdout)
    comment = {}
    section = None
    for line in proc.stdout.splitlines():
        if not line.startswith(" "):
            section = line.split(":")[0]
        if "#" in line:
            key = line.split(":")[0].strip()
            comment[f"{section}.{key}" if line.startswith(" ") else key] = line.rsplit("# ", 1)[1]
    assert comment["model.layers"] == str(child)
    assert comment["model.d_model"] == str(base)
    assert comment["name"] == str(base)
    assert comment["run.epochs"] == "--set"
    assert comment["model.mlp_ratio"] == "default"
    assert set(comment.values()) == {str(child), str(base), "--set", "default"}


def test_config_show_origin_on_the_shipped_sweep():
    proc = run_cli("config", "show", "configs/sweep-digits-lt.yaml", "--origin")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name:", "digits-lt", "#", "configs/digits-lt.yaml"]
    tune = lines.index("tune:")
    assert all(line.endswith(("# configs/sweep-digits-lt.yaml", "# default")) for line in lines[tune + 1:]
               if "#" in line)
    assert all(not line.endswith("# configs/sweep-digits-lt.yaml") for line in lines[:tune])


@pytest.mark.parametrize("argv", [shlex.split("config show configs/nope.yaml"),
                                  shlex.split("config show configs/digits-lt.yaml --set model.layers")])
def test_config_show_errors_are_one_line_with_exit_2(argv):
    proc = run_cli(*argv)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("raydeep: error: ")
