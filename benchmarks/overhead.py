"""What raydeep costs on top of the model: the reference loop vs ``raydeep train``, A/B, in one run.

    .venv/bin/python benchmarks/overhead.py [--pairs 3] [--rows 1280] [--epochs 4] [--alt-env K=V]
                                            [--checkout DIR] [--no-deepspeed]

A = ``benchmarks/reference_loop.py``: one process, all cores as torch threads.
D = ``benchmarks/reference_loop.py --deepspeed 2``: the same loop in 2 gloo processes, each in
raydeep's DeepSpeed engine, 1 thread each, no Ray: data-parallel DeepSpeed on its own.
B = ``raydeep train``: the whole machine, 2 workers, ``cpus_per_worker: auto`` (an embedded
local Ray started by the command, as a user runs it).
B/A is the figure the target is set on; D/A is what DeepSpeed's data parallelism costs on this
machine and B/D what Ray (Train, Data, its processes) adds on top.
Both train ``benchmarks/text-small.yaml`` (2 layers, d=128, 128 tokens, batch 32 per
process) on the same synthetic-text parquet for the same epochs. Throughput is samples/s over
the steady-state epochs (every epoch after the first; raydeep's from ``metrics.jsonl``:
all workers' samples / rank 0's training time, validation and reports excluded, as the
reference excludes nothing it does not have). Each round runs every arm once and the rounds
rotate which arm goes first (ADB, DBA, BAD; more with ``--alt-env``/``--checkout``), so a drift in
machine load does not favour one side; ratios are taken within a round.

Step times are the intervals between consecutive optimizer steps on one process (rank 0 for
raydeep), waiting for data included. raydeep records per-epoch p50/p99; reported here are
the median of the steady epochs' p50s and the largest of their p99s.

Prints one JSON object; a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ("datasets://synthetic-text/{split}?rows={rows}&num_classes=4&seq_len=128&vocab_size=1024"
        "&imbalance_ratio=1&seed=0")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(HERE / "text-small.yaml"))
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--rows", type=int, default=1280, help="training rows per epoch (validation: rows // 5)")
    p.add_argument("--epochs", type=int, default=4, help="the first is excluded from samples/s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides for both sides, e.g. deepspeed.zero_stage=2")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the raydeep side only, e.g. RAY_worker_niceness=15")
    p.add_argument("--alt-env", action="append", default=[], metavar="KEY=VALUE",
                   help="add a third arm, raydeep with this environment (e.g. RAY_worker_niceness=15: Ray's "
                        "default worker priority, which raydeep's driver overrides)")
    p.add_argument("--checkout", metavar="DIR",
                   help="add an arm: raydeep train from another checkout of raydeep (e.g. `git worktree add "
                        "/tmp/old REV`), run in that directory with it first on PYTHONPATH, so its workers "
                        "import its code: an A/B of two versions in one run")
    p.add_argument("--no-deepspeed", action="store_true", help="leave out the DeepSpeed-without-Ray arm")
    args = p.parse_args(argv)

    common = [f"data.train={DATA.format(split='train', rows=args.rows)}",
              f"data.val={DATA.format(split='val', rows=max(args.rows // 5, 64))}",
              f"run.epochs={args.epochs}", *args.overrides]
    envs = {"raydeep": dict(e.split("=", 1) for e in args.env)}
    if args.alt_env:
        envs["raydeep_alt"] = {**envs["raydeep"], **dict(e.split("=", 1) for e in args.alt_env)}
    roots = {arm: ROOT for arm in envs}
    if args.checkout:
        other = Path(args.checkout).resolve()
        envs["raydeep_checkout"] = {**envs["raydeep"], "PYTHONPATH": str(other)}
        roots["raydeep_checkout"] = other
    arms = ["reference", *([] if args.no_deepspeed else ["deepspeed"]), *envs]
    work = Path(tempfile.mkdtemp(prefix="raydeep-overhead-"))
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for i, arm, load in rotated_rounds(arms, args.pairs):
        if arm == "reference":
            r = run_reference(args.config, common)
        elif arm == "deepspeed":
            r = run_reference(args.config, common, ["--deepspeed", "2"])
        else:
            r = run_raydeep(args.config, common, work / f"{arm}{i}", envs[arm], roots[arm])
        r.update(round=i, load_avg_1m_before=round(load, 2))
        runs[arm].append(r)
        print(f"round {i} {arm:11}: {r['samples_per_s']:7.1f} samples/s, step p50 {r['step_time_p50_ms']:.1f} ms "
              f"p99 {r['step_time_p99_ms']:.1f} ms, wall {r['wall_s']:.0f} s (load {load:.1f})"
              + (f", data wait {r['data_wait_share']:.1%}" if "data_wait_share" in r else ""), file=sys.stderr)

    result = {"what": "overhead", "config": args.config, "overrides": common, "checkout": args.checkout,
              "env": {arm: env for arm, env in envs.items()}, "cpu_count": os.cpu_count()}
    for arm in arms:
        result[f"{arm}_samples_per_s"] = round(statistics.median(r["samples_per_s"] for r in runs[arm]), 1)
    for arm in arms[1:]:
        ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(runs["reference"], runs[arm])]
        result[f"{arm}_ratio_per_round"] = [round(x, 3) for x in ratios]
        result[f"{arm}_ratio_median"] = round(statistics.median(ratios), 3)
        print(f"{arm}: median {result[f'{arm}_samples_per_s']} samples/s vs reference "
              f"{result['reference_samples_per_s']}; ratio per round {result[f'{arm}_ratio_per_round']}, "
              f"median {result[f'{arm}_ratio_median']}", file=sys.stderr)
    for arm in envs if "deepspeed" in runs else []:  # what Ray adds: raydeep against DeepSpeed alone
        ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(runs["deepspeed"], runs[arm])]
        result[f"{arm}_vs_deepspeed_per_round"] = [round(x, 3) for x in ratios]
        result[f"{arm}_vs_deepspeed_median"] = round(statistics.median(ratios), 3)
        print(f"{arm} vs deepspeed without Ray: per round {result[f'{arm}_vs_deepspeed_per_round']}, "
              f"median {result[f'{arm}_vs_deepspeed_median']}", file=sys.stderr)
    result["runs"] = runs
    print(json.dumps(result))
    return result


def run_reference(config: str, overrides: list[str], extra: list[str] = ()) -> dict:
    cmd = [sys.executable, str(HERE / "reference_loop.py"), config, *extra]
    cmd += [a for o in overrides for a in ("--set", o)]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"samples_per_s": r["samples_per_s"], "step_time_p50_ms": r["step_time_p50_ms"],
            "step_time_p99_ms": r["step_time_p99_ms"], "threads": r["threads"], "processes": r["processes"],
            "wall_s": time.time() - t0,
            "per_epoch": [{k: e[k] for k in ("epoch", "samples_per_s", "step_time_p50_ms", "step_time_p99_ms")}
                          for e in r["per_epoch"]]}


def rotated_rounds(arms: list[str], rounds: int):
    """``(round, arm, 1-min load before it)`` for every arm of every round; each round starts one
    arm later, so each arm leads in turn and a drift in machine load favours none."""
    for i in range(rounds):
        for arm in arms[i % len(arms):] + arms[:i % len(arms)]:
            yield i, arm, os.getloadavg()[0]


def run_raydeep(config: str, overrides: list[str], run_dir: Path, env: dict[str, str], root: Path = ROOT) -> dict:
    # python -m raydeep.cli, not the venv's console script: that one imports the installed checkout
    # even when PYTHONPATH names another (--checkout).
    cmd = [sys.executable, "-m", "raydeep.cli", "train", config, "--run-dir", str(run_dir)]
    cmd += [a for o in overrides for a in ("--set", o)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode:
        raise SystemExit(f"raydeep train failed ({proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-3000:]}")
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [e for e in epochs if e["epoch"] > 0] or epochs
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "samples_per_s": sum(e["train/samples"] for e in steady) / sum(e["epoch_time_s"] for e in steady),
        "step_time_p50_ms": statistics.median(e["step_time_p50_ms"] for e in steady),
        "step_time_p99_ms": max(e["step_time_p99_ms"] for e in steady),
        "wall_s": time.time() - t0, "wall_time_s_summary": summary["wall_time_s"],
        "to_first_step_s": summary.get("startup", {}).get("to_first_step_s"),
        # rank 0's time getting batches (Ray Data's stream, the batcher), of the steady epochs' time
        "data_wait_share": sum(e.get("data_wait_s") or 0 for e in steady) / sum(e["epoch_time_s"] for e in steady),
        "per_epoch": [{k: e.get(k) for k in ("epoch", "samples_per_s", "epoch_time_s", "data_wait_s", "first_batch_s",
                                             "step_time_p50_ms", "step_time_p99_ms")} for e in epochs],
    }


if __name__ == "__main__":
    main(sys.argv[1:])
