"""Where DeepSpeed's run-time C++ builds go (``isolate_extension_builds``)."""

from __future__ import annotations

import os
import sys

from torch.utils.cpp_extension import get_default_build_root

from raydeep.trainers.engine import isolate_extension_builds


def test_each_environment_gets_its_own_extension_folder(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    here = isolate_extension_builds()
    assert os.path.dirname(here) == get_default_build_root()
    assert os.path.basename(here).startswith("raydeep-") and len(os.path.basename(here)) == len("raydeep-") + 12
    assert os.environ["TORCH_EXTENSIONS_DIR"] == here

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert isolate_extension_builds() == here  # the same environment: the same folder, every time

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr(sys, "prefix", "/some/other/venv")
    other = isolate_extension_builds()
    assert other != here and os.path.dirname(other) == get_default_build_root()


def test_a_users_extension_folder_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert isolate_extension_builds() == str(tmp_path)
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
