"""Does a training worker's memory stay flat as the data grows? Peak RSS for N and 10×N rows.

    .venv/bin/python benchmarks/ingest_memory.py                          # 1M and 10M rows x 128 tokens (~5 min)
    .venv/bin/python benchmarks/ingest_memory.py --rows 20000 --modes 0    # smoke test (a minute)

The guarantee under test (issue 3): no worker ever materializes the data set; a worker's peak
RSS for 10× more rows stays within 1.2×. Both sizes must be larger than what Ray Data reads
ahead into the object store (~1.8 GB on a 7 GB store here), else the pair measures the
read-ahead: the default pair is 1M and 10M rows (0.5 and 5 GB in memory; the 10M-row set is
generated shard by shard into ``--dir``, 2 GB of parquet). The private memory (USS, RssAnon)
is the worker's own; RssShmem is object-store pages it maps, shared with the whole node.

For each size (``--rows`` and ``--factor`` × that, in shards of ``--shard-rows`` rows, the way
``raydeep data prepare --shard-rows`` grows a data set: more shards, not bigger ones) and each
``data.materialize_max_mb`` setting in ``--modes``, the driver builds the training set exactly as
``raydeep train`` does (``to_ray_dataset(open_split(...), shuffle_seed=, materialize_max_bytes=)``,
its own DataContext with the execution options raydeep gives DataConfig (``ingest_options``:
``data.read_ahead_mb``, ``--read-ahead-mb``; ``data.block_mb``, ``--block-mb``), ``streaming_split(1, equal=True)`` as Ray Train's
DataConfig splits it) and
a fresh Ray actor, standing in for a Train worker, consumes one epoch with the worker loop's
``datasets.batches.torch_batches(it, batch_size=, shuffle_buffer=, seed=)`` (Ray's
``iter_torch_batches`` until 2026-11-29). In that
actor: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the kernel's peak RSS) before and after
the epoch, and psutil samples every ``--sample-s`` of RSS, USS (private memory) and shared
(object-store pages mapped into the process count as shared RSS). On the driver: the object
store's bytes in use, polled from the raylet, and its spill counters.

Modes: ``0`` = always stream (what a data set larger than ``materialize_max_mb`` gets);
``default`` = raydeep's default ``data.materialize_max_mb`` (256 MiB), which reads a split up to
that size into the object store once, on the driver side, and then hands the worker its blocks.

Prints (and with ``--out`` writes) one JSON object: per mode and size the figures, and the
ratio of peak RSS (and USS) at 10×N over N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MiB = 2**20


class Consumer:
    """A Train worker's ingest, nothing else: one epoch of its shard, memory watched throughout."""

    def __init__(self, sample_s: float) -> None:
        import resource

        import psutil

        self.proc = psutil.Process()
        self.sample_s = sample_s
        self.start_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def epoch(self, it, batch_size: int, shuffle_buffer: int, seed: int) -> dict:
        import resource

        peaks = {"rss": 0, "uss": 0, "anon": 0, "shmem": 0}
        samples = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal samples
            while not stop.is_set():
                m = self.proc.memory_full_info()
                s = status()
                peaks["rss"] = max(peaks["rss"], m.rss)
                peaks["uss"] = max(peaks["uss"], m.uss)
                peaks["anon"] = max(peaks["anon"], s["RssAnon"])
                peaks["shmem"] = max(peaks["shmem"], s["RssShmem"])
                samples += 1
                stop.wait(self.sample_s)

        before = self.proc.memory_full_info()
        before_status = status()
        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        rows = 0
        t0 = time.perf_counter()
        from raydeep.datasets.batches import torch_batches

        # The worker loop's call (raydeep/trainers/loop.py), device=cpu.
        for batch in torch_batches(it, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed):
            rows += int(batch["label"].shape[0])
        seconds = time.perf_counter() - t0
        stop.set()
        watcher.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {
            "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "rss_before_mib": round(before.rss / MiB, 1), "uss_before_mib": round(before.uss / MiB, 1),
            "peak_rss_mib": round(maxrss / 1024, 1),  # the kernel's high-water mark (ru_maxrss)
            "peak_rss_sampled_mib": round(peaks["rss"] / MiB, 1),
            "peak_uss_mib": round(peaks["uss"] / MiB, 1),
            # /proc/self/status: RssAnon = the process's own heap; RssShmem = object-store
            # (/dev/shm) pages mapped into it, which the kernel counts in RSS too.
            "anon_before_mib": round(before_status["RssAnon"] / MiB, 1),
            "peak_anon_mib": round(peaks["anon"] / MiB, 1),
            "peak_shmem_mib": round(peaks["shmem"] / MiB, 1),
            "samples": samples,
        }


def status() -> dict[str, int]:
    """RssAnon / RssFile / RssShmem / VmHWM of this process, in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class StoreWatcher:
    """Object-store bytes in use across the (one-node) cluster, polled from the raylet."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self.peak = 0
        self.stats = None
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self):
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return get_memory_info_reply(state).store_stats

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.stats = self.read()
                self.peak = max(self.peak, self.stats.object_store_bytes_used)
            except Exception as exc:  # noqa: BLE001 - a private API: report, don't fail the benchmark
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.period_s)

    def __enter__(self) -> StoreWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if self.error or self.stats is None:
            return {"error": self.error or "no sample"}
        s = self.stats
        return {"peak_used_mib": round(self.peak / MiB, 1),
                "capacity_mib": round((s.object_store_bytes_used + s.object_store_bytes_avail) / MiB, 1),
                "spilled_mib_total": round(s.spilled_bytes_total / MiB, 1),
                "created_mib_total": round(s.cumulative_created_bytes / MiB, 1)}


def measure(split_dir: Path, materialize_mb: float, args) -> dict:
    import ray

    from raydeep.datasets import open_split
    from raydeep.datasets.scan import fits_in_memory
    from raydeep.datasets.streaming import to_ray_dataset
    from raydeep.trainers.launch import ingest_options

    split = open_split(str(split_dir), key="bench")
    actor = ray.remote(num_cpus=args.worker_cpus)(Consumer).remote(args.sample_s)
    with StoreWatcher() as store:
        t = time.perf_counter()
        # Always the streamed path: a split under materialize_mb now skips Ray Data altogether
        # (datasets/memory.py), so "materialized" below says which path raydeep would take.
        ds = to_ray_dataset(split, shuffle_seed=args.seed,
                            block_bytes=int(args.block_mb * MiB) if args.block_mb else None)
        prepare_s = time.perf_counter() - t
        ds = ds.copy(ds, _deep_copy=True)  # its own context, as Ray Train's DataConfig gives it
        options = ingest_options(args.read_ahead_mb or None)  # what raydeep hands DataConfig
        if options is not None:
            ds.context.execution_options = options
        (it,) = ds.streaming_split(1, equal=True)
        out = ray.get(actor.epoch.remote(it, args.batch_size, args.shuffle_buffer, args.seed))
    out["materialized"] = fits_in_memory(split, [split.feature.column, "label"], int(materialize_mb * MiB))
    out["driver_prepare_s"] = round(prepare_s, 2)
    out["object_store"] = store.summary()
    out["files"] = len(split.files)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    ray.kill(actor)
    del ds, it
    return out


def main(argv: list[str] | None = None) -> int:
    from ingest import make_data
    from raydeep.config import DataConfig

    defaults = DataConfig(train="x", val="x")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="N; the large set has --factor x N rows")
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--shard-rows", type=int, default=62_500, help="rows per shard (1M rows -> 16 shards)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: data.batch_size's")
    p.add_argument("--shuffle-buffer", type=int, default=defaults.shuffle_buffer, help="default: data.shuffle_buffer's")
    p.add_argument("--modes", default=f"0,{defaults.materialize_max_mb:g}",
                   help="data.materialize_max_mb values to measure, comma-separated (0 = always stream)")
    p.add_argument("--read-ahead-mb", type=float, default=defaults.read_ahead_mb or 0,
                   help="data.read_ahead_mb (default: the config's); 0 = Ray Data's own budget")
    p.add_argument("--block-mb", type=float, default=defaults.block_mb or 0,
                   help="data.block_mb (default: the config's); 0 = Ray Data's own block size")
    p.add_argument("--worker-cpus", type=float, default=1.0)
    p.add_argument("--sample-s", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "raydeep-ingest-bench"))
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")

    sizes = [args.rows, args.rows * args.factor]
    dirs = {n: make_data(Path(args.dir), n, args.seq_len, max(1, math.ceil(n / args.shard_rows))) for n in sizes}
    modes = [float(m) for m in args.modes.split(",")]

    import ray

    ray.init(num_cpus=args.num_cpus, logging_level="WARNING", include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    load = [os.getloadavg()[0]]
    results = {}
    for mode in modes:
        per_size = {}
        for n in sizes:
            per_size[str(n)] = measure(dirs[n], mode, args)
            load.append(os.getloadavg()[0])
            print(f"materialize_max_mb={mode:g} rows={n}: {json.dumps(per_size[str(n)])}", file=sys.stderr)
        small, large = (per_size[str(n)] for n in sizes)
        results[f"materialize_max_mb={mode:g}"] = {
            **per_size,
            "peak_rss_ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
            "peak_uss_ratio": round(large["peak_uss_mib"] / small["peak_uss_mib"], 3),
            "peak_anon_ratio": round(large["peak_anon_mib"] / small["peak_anon_mib"], 3),
            "peak_shmem_ratio": round(large["peak_shmem_mib"] / max(small["peak_shmem_mib"], 1e-9), 3),
            "within_1_2x": large["peak_rss_mib"] <= 1.2 * small["peak_rss_mib"],
            "private_within_1_2x": large["peak_uss_mib"] <= 1.2 * small["peak_uss_mib"],
        }
    ray.shutdown()
    result = {
        "results": results,
        "settings": {**vars(args), "sizes": sizes, "data": {str(n): str(d) for n, d in dirs.items()},
                     "cpus": os.cpu_count(), "python": sys.version.split()[0],
                     "date": time.strftime("%Y-%m-%d"), "wall_s": round(time.perf_counter() - t0, 1),
                     "load_avg_1m_during": [round(x, 2) for x in load]},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
