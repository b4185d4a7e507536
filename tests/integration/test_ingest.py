"""Ray Data on the shared local head: ``data prepare`` round trips, and the streaming guarantees
a Ray Train run relies on (exactly once per epoch, a new order each epoch, the same orders
for the same seed)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydeep.datasets import FeatureSpec, label_histogram, open_split, write_split
from raydeep.datasets.memory import InMemorySplit, read_table
from raydeep.datasets.prepare.pipeline import PrepareOptions, prepare
from raydeep.datasets.prepare.tokenizer import decode, load_tokenizer, plain, train_tokenizer
from raydeep.datasets.schema import tokens_array
from raydeep.datasets.streaming import to_ray_dataset
from raydeep.trainers.class_weights import expected_sampled_counts, sampling_rates
from raydeep.errors import DataError
from tests.conftest import run_cli

pytestmark = pytest.mark.ray

WORDS = {"sport": ["goal", "match", "team", "score"], "tech": ["code", "chip", "cloud", "data"],
         "food": ["bread", "soup", "salt", "rice"]}
FILLER = ["the", "a", "of", "and", "today", "very"]


def corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = ["sport"] * (n // 2) + ["tech"] * (n // 3) + ["food"] * (n - n // 2 - n // 3)
    rng.shuffle(labels)
    return [(" ".join(rng.choice(WORDS[lab] + FILLER) for _ in range(rng.randint(2, 24))), lab) for lab in labels]


def read_split(root: Path, split: str) -> pa.Table:
    return pq.read_table(root / split)


def check_prepared(root: Path, n_good: int, *, names: list[str], max_len: int, shard_rows: int) -> dict:
    """What every prepared set must satisfy; returns the root summary."""
    summary = json.loads((root / "_raydeep_prepare.json").read_text())
    tok_bytes = (root / "tokenizer.json").read_bytes()
    ids = []
    for split, info in summary["splits"].items():
        m = json.loads((root / split / "_raydeep.json").read_text())
        t = read_split(root, split)
        assert m["num_rows"] == t.num_rows == info["num_rows"]
        assert m["label_names"] == names and m["num_classes"] == len(names)
        assert m["label_histogram"] == np.bincount(t.column("label").to_numpy(), minlength=len(names)).tolist()
        assert m["tokenizer"]["sha256"] == hashlib.sha256(tok_bytes).hexdigest()
        assert m["feature"] == {"column": "input_ids", "kind": "tokens", "seq_len": max_len,
                                "vocab_size": m["tokenizer"]["vocab_size"], "pad_id": m["tokenizer"]["pad_id"]}
        assert m["truncated"] == int((t.column("num_tokens").to_numpy() > max_len).sum())
        assert all(1 <= s["rows"] <= shard_rows for s in m["shards"])
        assert sum(s["rows"] for s in m["shards"]) == m["num_rows"]
        opened = open_split(str(root / split), key=f"data.{split}")  # what training will do
        assert opened.label_names == names and opened.feature.seq_len == max_len
        assert label_histogram(opened, len(names)) == m["label_histogram"]
        ids += t.column("id").to_pylist()
    assert sorted(ids) == list(range(n_good))  # every good record once, ids unique across splits
    return summary


def test_jsonl_trained_bpe_round_trip_skip_and_determinism(ray_connected, tmp_path: Path, capsys) -> None:
    rows = corpus(400)
    lines = [json.dumps({"text": t, "label": lab}) for t, lab in rows]
    lines.insert(7, '{"text": "unterminated')
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    o = PrepareOptions(input=str(tmp_path / "in.jsonl"), format="jsonl", output=str(tmp_path / "ds"),
                       train_tokenizer="bpe", vocab_size=300, max_len=16, val_fraction=0.2, shard_rows=96,
                       on_bad_record="skip", seed=3)
    log: list[str] = []
    prepare(o, log=log.append)
    summary = check_prepared(tmp_path / "ds", 400, names=["food", "sport", "tech"], max_len=16, shard_rows=96)
    assert summary["skipped"] == 1 and "in.jsonl: line 8: not valid JSON" in summary["first_skipped"]
    assert any("skipped 1 bad record" in x for x in log)
    # progress on stderr (not a terminal here: plain lines, each phase's last one its totals and rate)
    err = capsys.readouterr().err.splitlines()
    size = (tmp_path / "in.jsonl").stat().st_size
    scan = [x for x in err if x.startswith("scanning: ")][-1]
    assert scan.startswith("scanning: records 400 in ") and " records/s; files 1/1, " in scan, err
    assert scan.endswith(f"{size / 1000:,.1f} kB, 1 bad"), scan
    n_train = summary["splits"]["train"]["num_rows"]
    assert any(x.startswith(f"reading the training records: records {n_train}/{n_train} in ") for x in err), err
    shards = sum(s["shards"] for s in summary["splits"].values())
    write = [x for x in err if x.startswith("tokenizing and writing: ")][-1]
    assert write.startswith("tokenizing and writing: records 400/400 in "), err
    assert write.endswith(f" records/s; {shards} shards written (400 rows)"), write
    # Stratified: each class gives round(20%) of its rows to val.
    counts = np.bincount([["food", "sport", "tech"].index(lab) for _, lab in rows], minlength=3)
    assert summary["splits"]["val"]["label_histogram"] == [int(np.floor(c * 0.2 + 0.5)) for c in counts]
    assert summary["splits"]["train"]["truncated"] > 0
    # A non-truncated row decodes back to its text with the saved tokenizer.
    tok = plain(load_tokenizer((tmp_path / "ds" / "tokenizer.json").read_text(), where="t"))
    t = read_split(tmp_path / "ds", "train").to_pylist()
    row = next(r for r in t if r["num_tokens"] <= 16)
    assert decode(tok, row["input_ids"], 0) == rows[row["id"]][0]
    # Same input and seed: the same records in the same splits, with the same tokens.
    first = {r["id"]: (r["input_ids"], "train") for r in t}
    o.overwrite, o.shuffle = True, False
    prepare(o, log=lambda s: None)
    again = {r["id"]: (r["input_ids"], "train") for r in read_split(tmp_path / "ds", "train").to_pylist()}
    assert again == first
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_csv_wordpiece_with_test_split(ray_connected, tmp_path: Path) -> None:
    rows = corpus(300, seed=1)
    ids = {"sport": 0, "tech": 1, "food": 2}
    with open(tmp_path / "in.csv", "w") as f:
        f.write("id,label,text\n")
        for i, (t, lab) in enumerate(rows):
            f.write(f'{i},{ids[lab]},"{t}, indeed"\n')
    o = PrepareOptions(input=str(tmp_path / "in.csv"), format="csv", output=str(tmp_path / "ds"),
                       train_tokenizer="wordpiece", vocab_size=200, max_len=32, val_fraction=0.1,
                       test_fraction=0.1, shard_rows=1000)
    prepare(o, log=lambda s: None)
    summary = check_prepared(tmp_path / "ds", 300, names=["0", "1", "2"], max_len=32, shard_rows=1000)
    assert set(summary["splits"]) == {"train", "val", "test"}
    assert summary["tokenizer"]["source"] == "trained wordpiece on the training split"


def test_text_dirs_with_a_loaded_tokenizer(ray_connected, tmp_path: Path) -> None:
    tok = train_tokenizer("bpe", iter(t for t, _ in corpus(100)), vocab_size=280)
    (tmp_path / "tok.json").write_text(tok.to_str())
    for i, (t, lab) in enumerate(corpus(120, seed=2)):
        d = tmp_path / "in" / lab
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.txt").write_text(t)
    o = PrepareOptions(input=str(tmp_path / "in"), format="text-dirs", output=str(tmp_path / "ds"),
                       tokenizer=str(tmp_path / "tok.json"), max_len=24, files_per_task=50)
    prepare(o, log=lambda s: None)
    summary = check_prepared(tmp_path / "ds", 120, names=["food", "sport", "tech"], max_len=24, shard_rows=100_000)
    assert (tmp_path / "ds" / "tokenizer.json").read_text() == (tmp_path / "tok.json").read_text()
    assert summary["tokenizer"]["source"] == f"loaded from {tmp_path / 'tok.json'}"


def test_interrupted_prepare_leaves_nothing(ray_connected, tmp_path: Path, monkeypatch) -> None:
    import raydeep.datasets.prepare.pipeline as mod

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in corpus(60)))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "_commit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(input=str(tmp_path / "in.jsonl"), format="jsonl", output=str(tmp_path / "ds"),
                               train_tokenizer="bpe", vocab_size=260), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no temp directory


def test_cli_corrupt_record_is_one_line(ray_head, tmp_path: Path) -> None:
    lines = [json.dumps({"text": t, "label": lab}) for t, lab in corpus(30)]
    lines[4] = '{"text": "x", "label": }'
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    proc = run_cli("data", "prepare", "--input", str(tmp_path / "in.jsonl"), "--format", "jsonl", "--output",
                   str(tmp_path / "ds"), "--train-tokenizer", "bpe", "--address", ray_head.address, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("raydeep: error:")]
    assert errors == [f"raydeep: error: {tmp_path / 'in.jsonl'}: line 5: not valid JSON (Expecting value at "
                      "column 24) (--on-bad-record skip drops bad records and counts them)"], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "ds").exists()


# ---------------------------------------------------------------------------------------------
# Streaming: what each Ray Train worker sees


N_ROWS = 1001  # odd: equalizing 2 shards must drop exactly one row per epoch


def write_ids(d: Path, labels: np.ndarray) -> str:
    """A token split whose row i holds token ids ``[i, i, i, i]``: the id travels in the feature."""
    n = len(labels)
    table = pa.table({"input_ids": tokens_array(np.repeat(np.arange(n)[:, None], 4, axis=1), 4),
                      "label": pa.array(labels, pa.int64())})
    write_split(d, table, name="ids", split="train", task="text_classification",
                feature=FeatureSpec(column="input_ids", kind="tokens", seq_len=4), num_classes=3,
                label_names=["a", "b", "c"], shards=8)
    return str(d)


@pytest.fixture(scope="module")
def id_split(tmp_path_factory) -> str:
    return write_ids(tmp_path_factory.mktemp("ids") / "train", np.arange(N_ROWS) % 3)


def epochs_seen(split_dir: str, seed: int, *, epochs: int = 2, preserve_order: bool = False,
                block_bytes: int | None = None, rates: list[float] | None = None) -> list[list[list[int]]]:
    """``[worker][epoch] -> ids in order``, split as Ray Train splits (``streaming_split(2, equal=True)``)."""
    import ray

    @ray.remote(num_cpus=0.25)
    def consume(it, n_epochs):
        return [[int(r[0]) for b in it.iter_batches(batch_size=64, batch_format="numpy") for r in b["input_ids"]]
                for _ in range(n_epochs)]

    ds = to_ray_dataset(open_split(split_dir, key="data.train"), shuffle_seed=seed, rates=rates,
                        block_bytes=block_bytes)
    ds = ds.copy(ds, _deep_copy=True)  # as DataConfig does, with options of its own
    ds.context.execution_options.preserve_order = preserve_order
    return ray.get([consume.remote(it, epochs) for it in ds.streaming_split(2, equal=True)])


def assert_exactly_once(seen: list[list[list[int]]]) -> None:
    for epoch in range(len(seen[0])):
        union = seen[0][epoch] + seen[1][epoch]
        assert len(seen[0][epoch]) == len(seen[1][epoch])  # equal shards
        assert len(union) == len(set(union)) == N_ROWS - N_ROWS % 2  # no duplicates; only the remainder dropped
        assert set(union) <= set(range(N_ROWS))


def test_exactly_once_new_order_each_epoch_and_reproducible(ray_connected, id_split) -> None:
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    a = epochs_seen(id_split, seed=7, preserve_order=True)
    assert_exactly_once(a)
    assert a[0][0] != a[0][1] and a[1][0] != a[1][1]  # each worker's order changes between epochs
    # A fresh dataset with the same seed repeats the same orders, per worker.
    assert epochs_seen(id_split, seed=7, preserve_order=True, epochs=1) == [[a[0][0]], [a[1][0]]]


def test_exactly_once_without_preserve_order(ray_connected, id_split) -> None:
    assert_exactly_once(epochs_seen(id_split, seed=7, epochs=1))  # the union holds whatever the timing


def test_data_block_mb_cuts_each_shard_into_blocks_and_keeps_exactly_once(ray_connected, id_split) -> None:
    # data.block_mb: a streamed split's blocks are at most that size (here 1 KiB: each ~4 KiB shard
    # becomes several blocks), set on the dataset's own context, not on the process's.
    import ray.data

    split = open_split(id_split, key="data.train")
    ds = to_ray_dataset(split, shuffle_seed=7, block_bytes=1024)
    assert ds.context.target_max_block_size == 1024
    assert ray.data.DataContext.get_current().target_max_block_size != 1024
    small = ds.materialize().num_blocks()
    assert small > 2 * len(split.files) and small > to_ray_dataset(split).materialize().num_blocks()
    assert_exactly_once(epochs_seen(id_split, seed=7, block_bytes=1024))


def test_worker_batches_are_whole_tensors_through_the_shuffle_window(ray_connected, id_split) -> None:
    # What the training loop iterates (datasets.batches.torch_batches): the feature column reaches
    # the worker as one [B, L] int32 tensor, streamed (a Ray Data shard) or held in memory (an
    # InMemoryShard), every row once across both workers, in a new order each epoch and the same
    # order again for the same seeds.
    import ray

    from raydeep.datasets.batches import torch_batches

    @ray.remote(num_cpus=0.25)
    def consume(it, rank):
        epochs = []
        for epoch in range(2):
            out = []
            for b in torch_batches(it, batch_size=64, shuffle_buffer=128, seed=epoch * 10 + rank):
                ids = b["input_ids"][:, 0]
                assert tuple(b["input_ids"].shape) == (len(ids), 4) and str(b["input_ids"].dtype) == "torch.int32"
                assert str(b["label"].dtype) == "torch.int64" and len(ids) <= 64
                assert (b["input_ids"] == ids[:, None]).all()
                assert (b["label"] == ids % 3).all()  # columns stay row-aligned through the shuffle
                out += ids.tolist()
            epochs.append(out)
        return epochs

    split = open_split(id_split, key="data.train")

    def seen(held):
        if held:
            shards = [InMemorySplit(read_table(split, ["input_ids", "label"]), seed=3).shard(r, 2) for r in range(2)]
        else:
            ds = to_ray_dataset(split, shuffle_seed=3)
            ds = ds.copy(ds, _deep_copy=True)
            ds.context.execution_options.preserve_order = True
            shards = ds.streaming_split(2, equal=True)
        return ray.get([consume.remote(it, r) for r, it in enumerate(shards)])

    for held in (False, True):
        a = seen(held)
        assert_exactly_once(a)
        assert a[0][0] != a[0][1] and a[1][0] != a[1][1]  # each worker's order changes between epochs
        assert a == seen(held)  # the same seeds, the same batches


def test_streamed_split_is_read_by_raydeeps_shard_reader(ray_connected, id_split) -> None:
    # Not ray.data.read_parquet, whose every execution starts FooterReader actors (datasets/streaming.py).
    split = open_split(id_split, key="data.train")
    ds = to_ray_dataset(split, shuffle_seed=1)
    assert set(ds.schema().names) == {"input_ids", "label"}  # only the columns training reads
    read = ds.materialize()
    assert "ReadParquetShards" in read.stats() and read.count() == N_ROWS


def test_streamed_resampling_draws_new_rows_every_epoch_with_the_expected_class_counts(ray_connected,
                                                                                         tmp_path) -> None:
    # The bug this guards: the draw was keyed on the seed and the block's labels, with no epoch,
    # so every epoch kept (or duplicated) exactly the same rows.
    tail = [600, 300, 100]
    labels = np.repeat(np.arange(3), tail)
    rates = sampling_rates(tail, "undersample")  # 1/6, 1/3, 1: class 0 keeps ~100 of its 600 rows
    expected = np.asarray(expected_sampled_counts(tail, "undersample"))
    seen = epochs_seen(write_ids(tmp_path / "tail", labels), seed=7, rates=rates)
    epochs = [sorted(seen[0][e] + seen[1][e]) for e in range(2)]
    for ids in epochs:
        assert len(ids) == len(set(ids))  # undersampling never repeats a row
        counts = np.bincount(labels[ids], minlength=3)
        assert np.all(np.abs(counts - expected) <= 8 + 1), counts  # within one row per block (8 shards), +1 dropped
    assert epochs[0] != epochs[1], "epoch 1 drew exactly epoch 0's rows"


def test_open_split_refuses_an_unfinished_prepare(tmp_path: Path) -> None:
    # The marker S3 prepares use, seen from the reader's side (no Ray needed, but it belongs here).
    (tmp_path / "_raydeep.incomplete").write_text("")
    with pytest.raises(DataError, match="did not finish"):
        open_split(str(tmp_path), key="data.train")


def test_each_rank_streams_its_own_ranges_of_the_epoch_and_resumes_them_by_count(ray_connected, id_split) -> None:
    # What replaced streaming_split for training (datasets/epoch_order.py, streaming.StreamedShard):
    # rank r of 2 reads its own ranges of the epoch's (seed, epoch)-permuted file order, as its own
    # Ray Data execution, in that order; every kept row once per epoch, equal shares; a rank told
    # to skip k rows (a mid-epoch resume) gets exactly the rest of its order, the files in the same
    # order, without reading what it skips.
    import ray

    from raydeep.datasets.epoch_order import SAMPLE_ID, assign_ranges
    from raydeep.datasets.streaming import StreamedShard, streamed_split

    split = open_split(id_split, key="data.train")
    streamed = streamed_split(split, seed=7, block_bytes=1024)  # several blocks per shard

    @ray.remote(num_cpus=0.25)
    def read(rank: int, epoch: int, skip: int) -> list[tuple[int, int, int]]:
        blocks = StreamedShard(streamed, rank, 2).epoch_blocks(epoch, skip, ids=True)
        return [(int(i) >> 32, int(i) & 0xFFFFFFFF, int(x[0])) for b in blocks
                for i, x in zip(b.column(SAMPLE_ID).to_pylist(), b.column("input_ids").to_pylist())]

    seen = {}
    for epoch in (0, 1):
        ranks = ray.get([read.remote(r, epoch, 0) for r in (0, 1)])
        seen[epoch] = ranks
        rows = [x for _, _, x in ranks[0] + ranks[1]]
        assert len(ranks[0]) == len(ranks[1]) == N_ROWS // 2 and len(set(rows)) == N_ROWS - 1  # one trimmed
        expected, _ = assign_ranges(streamed.rows, 7, epoch, 2)
        for rank, got in enumerate(ranks):
            files = [f for i, (f, _, _) in enumerate(got) if i == 0 or got[i - 1][0] != f]
            assert files == [r.file for r in expected[rank]]  # the epoch's file order, as assigned
        # the sample id names the file and row the feature came from (write_split: consecutive rows per shard)
        offsets = np.cumsum([0, *streamed.rows])
        assert all(x == offsets[f] + row for f, row, x in ranks[0] + ranks[1])
    assert seen[0] != seen[1]  # a new order every epoch
    assert ray.get(read.remote(1, 1, 137)) == seen[1][1][137:]  # mid-file: the rest of that file, then the others
