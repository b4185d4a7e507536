"""What a PBT trial does to its storage between segments, on a local filesystem (S3:
tests/integration/test_s3.py)."""

from __future__ import annotations

import json

from raydeep.sweeps.trial import TrialStorage


def test_trial_storage_segment_folders_copy_move_on_a_local_filesystem(tmp_path):
    # What a PBT trial does between segments, through the same pyarrow calls it makes on S3.
    store = TrialStorage(str(tmp_path / "trials"))
    assert store.segment_folders("t_a") == []  # the folder does not exist yet
    donor = tmp_path / "tune" / "t_b" / "checkpoint_000000"
    (donor / "checkpoint_000000").mkdir(parents=True)
    (donor / "checkpoint_000000" / "rank0.pt").write_bytes(b"x" * 100)
    (donor / "segment.json").write_text('{"trial_id": "t_b", "epochs_done": 1}')
    carry = store.path("t_a-e001")
    store.copy_in(str(donor), store.filesystem, carry)
    store.move(carry, store.path("t_a-e002"))
    store.write_json(store.path("t_a-e002") + "/extra.json", {"k": 1})
    (tmp_path / "trials" / "t_ab-e001").mkdir()  # another trial whose id starts alike
    (tmp_path / "trials" / "t_a.yaml").write_text("")
    assert store.segment_folders("t_a") == [store.path("t_a-e002")]
    got = tmp_path / "trials" / "t_a-e002"
    assert (got / "checkpoint_000000" / "rank0.pt").read_bytes() == b"x" * 100
    assert json.loads((got / "extra.json").read_text()) == {"k": 1} and not (tmp_path / "trials" / "t_a-e001").exists()
    store.remove(store.path("t_a-e002"))
    assert store.segment_folders("t_a") == [] and donor.is_dir()
