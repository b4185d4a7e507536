"""Reading a checkpoint trusts nothing it does not have to: a pickle that would run code is
refused before DeepSpeed unpickles it, an object key cannot write outside the download folder,
and a folder missing a rank's shard is named as incomplete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest
import torch

from raydeep.errors import DataError, RaydeepError
from raydeep.trainers.checkpoints import ENGINE_TAG, STATE_FILE, check_complete, find_checkpoint, load_state_dict
from raydeep.trainers.evaluate import _download

MARKER = Path("/tmp/raydeep-test-pickle-ran")


def _touch_marker():  # what a malicious pickle would run instead
    MARKER.write_text("ran")


class Payload:
    def __reduce__(self):
        return (_touch_marker, ())


def checkpoint(tmp_path: Path, module: dict, stage: int = 0, world: int = 1) -> Path:
    ckpt = tmp_path / "checkpoint_000000"
    (ckpt / ENGINE_TAG).mkdir(parents=True)
    torch.save({"module": module}, ckpt / ENGINE_TAG / "mp_rank_00_model_states.pt")
    (ckpt / STATE_FILE).write_text(json.dumps({"zero_stage": stage, "world_size": world}))
    return ckpt


def test_plain_tensors_load_and_a_pickle_that_runs_code_is_refused_unrun(tmp_path):
    MARKER.unlink(missing_ok=True)
    good = checkpoint(tmp_path / "good", {"w": torch.ones(2)})
    assert torch.equal(load_state_dict(good, 0)["w"], torch.ones(2))

    bad = checkpoint(tmp_path / "bad", {"w": torch.ones(2), "x": Payload()})
    with pytest.raises(RaydeepError, match=r"mp_rank_00_model_states.pt: refused: .*_touch_marker"):
        load_state_dict(bad, 0)
    assert not MARKER.exists()


def test_a_missing_ranks_shard_is_named(tmp_path):
    ckpt = checkpoint(tmp_path, {"w": torch.ones(2)}, stage=2, world=2)
    for r in (0, 1):
        (ckpt / ENGINE_TAG / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    check_complete(ckpt, {"zero_stage": 2, "world_size": 2})  # bf16's prefixed names count
    (ckpt / ENGINE_TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(RaydeepError, match=r"incomplete checkpoint: rank 1's optimizer shard"):
        check_complete(ckpt, {"zero_stage": 2, "world_size": 2})
    with pytest.raises(RaydeepError, match=r"rank 0's parameter shard"):
        check_complete(ckpt, {"zero_stage": 3, "world_size": 1})


def test_a_run_dir_without_summary_takes_rays_latest_registered_checkpoint(tmp_path):
    run = tmp_path / "run"
    for name in ("checkpoint_a", "checkpoint_b", "checkpoint_c"):
        (run / name).mkdir(parents=True)
        (run / name / STATE_FILE).write_text("{}")
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}, {"checkpoint_dir_name": "checkpoint_b"}],
                "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_b"}}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert find_checkpoint(run) == (run / "checkpoint_b", run)  # checkpoint_c: never registered
    (run / "checkpoint_manager_snapshot.json").unlink()
    with pytest.raises(RaydeepError, match="never registered by Ray Train"):
        find_checkpoint(run)


def test_an_object_key_that_leaves_the_download_folder_is_refused(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe_file("bkt/ck/raydeep.json", b"{}")
    fs.pipe_file("bkt/ck/engine/../../../escaped.txt", b"x")
    with pytest.raises(DataError, match=r"escaped.txt: refused: the object key leaves the checkpoint folder"):
        _download(fs, "/bkt/ck", tmp_path / "dl" / "checkpoint")
    assert not list(tmp_path.rglob("escaped.txt"))
    fs.rm("bkt/ck/engine/../../../escaped.txt")
    _download(fs, "/bkt/ck", tmp_path / "dl" / "checkpoint")
    assert (tmp_path / "dl" / "checkpoint" / "raydeep.json").read_bytes() == b"{}"


def test_stale_checkpoint_dirs_of_dead_workers_are_removed_and_live_ones_kept(tmp_path):
    """A worker killed mid-save (SIGKILL, Ctrl-C) leaves its temporary checkpoint folder; the next
    worker on the node removes it, but never one whose process still lives (another run saving)."""
    import subprocess
    import sys

    from raydeep.trainers.reporting import CKPT_PREFIX, remove_stale_checkpoint_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: its pid is free (reuse within the test is vanishingly unlikely)
    stale = tmp_path / f"{CKPT_PREFIX}r1-p{dead_pid}-abc123"
    live = tmp_path / f"{CKPT_PREFIX}r0-p{os.getpid()}-def456"
    other = tmp_path / f"{CKPT_PREFIX}unrelated"  # not ours to judge
    for d in (stale, live, other):
        (d / "engine").mkdir(parents=True)
        (d / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"partial")
    assert remove_stale_checkpoint_dirs(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()
