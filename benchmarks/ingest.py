"""Ingest throughput: raw pyarrow against raydeep's training ingest path, as a Ray Train worker sees it.

    .venv/bin/python benchmarks/ingest.py                          # 1M rows x 128 tokens, 16 shards
    .venv/bin/python benchmarks/ingest.py --rows 20000 --shards 4  # smoke test (seconds)

Run it alone: it measures CPU-bound rates, so anything else on the machine skews them.

1. Data: ``--rows`` rows of ``input_ids`` (``list<int32>``, ``--seq-len`` long) + ``label`` + ``id``
   in ``--shards`` parquet files with a raydeep manifest, generated once under ``--dir``.
2. ``pyarrow``: every shard read with ``ParquetFile.iter_batches`` and turned into an
   ``[B, L]`` int32 numpy array plus labels, in this process: the upper bound for one reader.
3. ``ray_ingest``: ``to_ray_dataset(open_split(dir), shuffle_seed=0)`` split as Ray Train splits
   it (``streaming_split(1, equal=True)``), consumed in a Ray task with the worker loop's
   ``datasets.batches.torch_batches`` (and its shuffle window unless ``--shuffle-buffer 0``) for
   ``--epochs`` epochs, as a run does. Reported per epoch: rows/s over the epoch and after the
   first batch, latency to the first batch, and the p50/p99 time to fetch one batch; the first
   (cold) epoch's at the top level, with its ratio to pyarrow and the last epoch's.
4. ``--before`` adds ``ray_ingest_before``: the path raydeep took until 2026-11-29 --
   ``ray.data.read_parquet`` (with its per-epoch file shuffle) and Ray's ``iter_torch_batches``
   with its local shuffle buffer -- in the same Ray session, to compare the two in one run.
   ``--repeat`` runs every arm again, alternating, on the now-warm Ray (worker processes
   started: later epochs of a run).

Each figure carries the 1-minute load average before and after it: on a shared machine, read
the rates with it.

Prints one JSON object with the figures, the ratio ray_ingest / pyarrow, and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def make_data(root: Path, rows: int, seq_len: int, shards: int) -> Path:
    """A prepared split of random tokens, ``shards`` contiguous shards, written one shard at a time.

    Shard by shard, so that a 10M-row set (5 GB of tokens in memory) is generated in the memory
    of one shard; each shard has its own seeded generator, so a set is the same every time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raydeep.datasets import FeatureSpec
    from raydeep.datasets.manifest import FORMAT, publish_dir, shard_name, write_manifest
    from raydeep.datasets.schema import tokens_array

    final = root / f"rows{rows}-len{seq_len}-shards{shards}"
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=seq_len, vocab_size=8000)

    def build(tmp: Path) -> None:
        out = tmp / "train"
        out.mkdir()
        bounds = np.linspace(0, rows, shards + 1).astype(int)
        histogram = np.zeros(10, dtype=np.int64)
        shard_rows = []
        for i in range(shards):
            n = int(bounds[i + 1] - bounds[i])
            rng = np.random.default_rng([0, i])
            labels = rng.integers(0, 10, n)
            pq.write_table(pa.table({
                "input_ids": tokens_array(rng.integers(1, 8000, (n, seq_len), dtype=np.int32), seq_len),
                "label": pa.array(labels, pa.int64()),
                "id": pa.array(np.arange(bounds[i], bounds[i + 1], dtype=np.int64)),
            }), out / shard_name(i))
            histogram += np.bincount(labels, minlength=10)
            shard_rows.append({"file": shard_name(i), "rows": n})
        write_manifest(out, {
            "format": FORMAT, "name": "ingest-bench", "split": "train", "task": "text_classification",
            "feature": feature.to_dict(), "num_classes": 10, "label_names": [str(i) for i in range(10)],
            "num_rows": rows, "shards": shard_rows, "generator": {"seed": 0},
            "label_histogram": histogram.tolist(),
        })

    return publish_dir(final, build) / "train"


def pyarrow_rate(files: list[str], batch_size: int, seq_len: int) -> dict:
    import pyarrow.parquet as pq

    rows = 0
    t0 = time.perf_counter()
    for path in files:
        for b in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["input_ids", "label"]):
            ids = b.column(0).flatten().to_numpy(zero_copy_only=False).reshape(-1, seq_len)
            labels = b.column(1).to_numpy()
            rows += len(labels) + 0 * ids.shape[0]
    dt = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(dt, 3), "rows_per_s": round(rows / dt)}


def consume(it, batch_size: int, shuffle_buffer: int, prefetch: int, epochs: int = 1, batcher: str = "raydeep") -> dict:
    """What a Ray Train worker does with its shard, epoch after epoch: raydeep's ``torch_batches``,
    or (``batcher="ray"``) Ray's ``iter_torch_batches`` with its local shuffle buffer.

    The first epoch's figures at the top level (a cold start: the split coordinator and the
    read tasks' worker processes start); every epoch's under ``per_epoch``.
    """
    per_epoch = [consume_epoch(it, batch_size, shuffle_buffer, prefetch, e, batcher) for e in range(epochs)]
    return {**per_epoch[0], "per_epoch": per_epoch}


def consume_epoch(it, batch_size: int, shuffle_buffer: int, prefetch: int, epoch: int, batcher: str) -> dict:
    from raydeep.datasets.batches import torch_batches

    times = []
    rows = 0
    t0 = time.perf_counter()
    last = t0
    if batcher == "ray":
        batches = it.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=shuffle_buffer or None,
                                        local_shuffle_seed=epoch if shuffle_buffer else None,
                                        prefetch_batches=prefetch)
    else:  # prefetch counts blocks here, not batches
        batches = torch_batches(it, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=epoch,
                                prefetch_blocks=prefetch)
    for batch in batches:
        now = time.perf_counter()
        times.append(now - last)
        last = now
        rows += int(batch["label"].shape[0])
    total = time.perf_counter() - t0
    t = np.array(times[1:]) if len(times) > 1 else np.array(times)
    steady = total - (times[0] if times else 0.0)
    return {"rows": rows, "seconds": round(total, 3), "rows_per_s": round(rows / total),
            # Without the start-up (split coordinator, first read tasks): the streaming rate.
            "rows_per_s_after_first_batch": round((rows - batch_size) / steady) if steady > 0 and times else None,
            "first_batch_s": round(times[0], 3) if times else None,
            "fetch_p50_ms": round(float(np.percentile(t, 50)) * 1e3, 3) if t.size else None,
            "fetch_p99_ms": round(float(np.percentile(t, 99)) * 1e3, 3) if t.size else None,
            "batches": len(times)}


def before_dataset(split, shuffle_seed: int, block_bytes: int | None):
    """``to_ray_dataset(split, shuffle_seed=, block_bytes=)``'s streaming path until 2026-11-29."""
    import ray.data

    ds = ray.data.read_parquet(split.files, filesystem=split.filesystem, partitioning=None,
                               shuffle=ray.data.FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True))
    ds = ds.select_columns([split.feature.column, "label"])
    if block_bytes:
        ds = ds.copy(ds, _deep_copy=True)
        ds.context.target_max_block_size = int(block_bytes)
    return ds


def run_arm(ds, remote, args, batcher: str = "raydeep") -> dict:
    import ray

    from raydeep.trainers.launch import ingest_options

    ds = ds.copy(ds, _deep_copy=True)  # its own context, as Ray Train's DataConfig gives it
    options = ingest_options(args.read_ahead_mb or None)  # what raydeep hands DataConfig
    if options is not None:
        ds.context.execution_options = options
    ds.context.execution_options.preserve_order = args.preserve_order
    (it,) = ds.streaming_split(1, equal=True)
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    out = ray.get(remote.remote(it, args.batch_size, args.shuffle_buffer, args.prefetch, args.epochs, batcher))
    out["wall_s_from_driver"] = round(time.perf_counter() - t, 3)
    out["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out


def main(argv: list[str] | None = None) -> int:
    from raydeep.config import DataConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shuffle-buffer", type=int, default=1024, help="the worker loop's local buffer; 0 = off")
    p.add_argument("--prefetch", type=int, default=1, help="blocks (raydeep) or batches (--before's Ray batcher) to prefetch")
    p.add_argument("--read-ahead-mb", type=float, default=DataConfig(train="x", val="x").read_ahead_mb or 0,
                   help="data.read_ahead_mb (default: the config's); 0 = Ray Data's own budget")
    p.add_argument("--block-mb", type=float, default=DataConfig(train="x", val="x").block_mb or 0,
                   help="data.block_mb (default: the config's); 0 = Ray Data's own block size")
    p.add_argument("--preserve-order", action="store_true",
                   help="ExecutionOptions(preserve_order=True): reproducible per-worker order, at what cost?")
    p.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "raydeep-ingest-bench"))
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--address", default=None, help="an existing Ray cluster instead of a local one")
    p.add_argument("--before", action="store_true",
                   help="also measure the streaming path before 2026-11-29 (see 4. above)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per arm over one split (a run's epoch 2+ is warm)")
    p.add_argument("--repeat", type=int, default=1, help="rounds of every arm (the first on a cold Ray)")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")

    t = time.perf_counter()
    split_dir = make_data(Path(args.dir), args.rows, args.seq_len, args.shards)
    gen_s = time.perf_counter() - t

    from raydeep.datasets import open_split
    from raydeep.datasets.streaming import to_ray_dataset

    split = open_split(str(split_dir), key="bench")
    load = os.getloadavg()[0]
    raw = pyarrow_rate(split.files, args.batch_size, args.seq_len)
    raw["load_avg_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]

    import ray

    ray.init(address=args.address, num_cpus=None if args.address else args.num_cpus, logging_level="WARNING",
             include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    remote = ray.remote(num_cpus=1)(consume)
    block = int(args.block_mb * 2**20) if args.block_mb else None  # data.block_mb, as the driver passes it
    arms = {"ray_ingest": (lambda: to_ray_dataset(split, shuffle_seed=0, block_bytes=block), "raydeep")}
    if args.before:
        arms["ray_ingest_before"] = (lambda: before_dataset(split, 0, block), "ray")
    rounds = []
    for r in range(args.repeat):
        # Alternate which arm goes first, so neither always gets the cold start.
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        rounds.append({name: run_arm(arms[name][0](), remote, args, arms[name][1]) for name in order})
    ray.shutdown()

    ingest = rounds[0]["ray_ingest"]
    result = {
        "pyarrow": raw,
        "ray_ingest": ingest,
        "ratio_ingest_over_pyarrow": round(ingest["rows_per_s"] / raw["rows_per_s"], 3),
        "ratio_ingest_after_first_batch_over_pyarrow": round((ingest["rows_per_s_after_first_batch"] or 0)
                                                             / raw["rows_per_s"], 3),
        # A run's epoch 2 onwards: the coordinator and the read workers are already up.
        "ratio_ingest_last_epoch_over_pyarrow": round(ingest["per_epoch"][-1]["rows_per_s"] / raw["rows_per_s"], 3),
        **({"ray_ingest_before": rounds[0]["ray_ingest_before"],
            "ratio_before_over_pyarrow": round(rounds[0]["ray_ingest_before"]["rows_per_s"] / raw["rows_per_s"], 3),
            "ratio_before_last_epoch_over_pyarrow": round(
                rounds[0]["ray_ingest_before"]["per_epoch"][-1]["rows_per_s"] / raw["rows_per_s"], 3)}
           if args.before else {}),
        **({"rounds": rounds} if len(rounds) > 1 else {}),
        "settings": {**vars(args), "data": str(split_dir), "generate_s": round(gen_s, 1),
                     "files": len(split.files), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                     "date": time.strftime("%Y-%m-%d")},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
