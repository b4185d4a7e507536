"""What mid-epoch checkpoints cost: ``run.checkpoint_every: {steps: N}`` at a few N against
epoch-only checkpoints, both arms in one invocation (issue 20).

    .venv/bin/python benchmarks/step_checkpoints.py [--steps 25,100,400] [--rows 24000] [--rounds 2] [--epochs 2]

Each arm is a real ``raydeep train`` (the console script, embedded local Ray, 2 DeepSpeed CPU
workers, ZeRO-1, the tests' tiny Transformer on synthetic text) of ``--epochs`` epochs; arms run
interleaved, round by round, so a loaded machine slows all alike. The baseline saves only the
last epoch's checkpoint, as every arm does at its end. Per arm it records the epoch's training
time and rate (``metrics.jsonl``: the mid-epoch saves happen inside the epoch, so they are in
it), the checkpoints saved and their size, rank 0's time inside the mid-epoch saves (the epoch's
``checkpoint_s``: the direct measure; on a shared 2-core machine the epoch times of the arms vary
by more than a small model's saves cost), and the cost per checkpoint both ways: measured, and
(epoch time - the baseline's) / mid-epoch checkpoints. The figures are the LAST epoch's (a fresh
run's first epoch also holds its warm-up); every epoch's time is in the results too. Writes
benchmarks/results/step-checkpoints-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
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
sys.path.insert(0, str(ROOT))

from tests.helpers import SYNTH, tiny_config, write_config  # noqa: E402

BIN = Path(sys.executable).parent


def run_arm(work: Path, name: str, every, rows: int, env: dict, epochs: int) -> dict:
    cfg = tiny_config(data={"train": SYNTH.format(split="train", rows=rows), "val": SYNTH.format(split="val", rows=400)},
                      run={"epochs": epochs, "seed": 0, "checkpoint_every": every, "num_to_keep": 1})
    run_dir = work / name
    t0 = time.time()
    proc = subprocess.run([str(BIN / "raydeep"), "train", str(write_config(work / f"{name}.yaml", cfg)),
                           "--run-dir", str(run_dir)], capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    m = lines[-1]
    ckpt = Path(json.loads((run_dir / "summary.json").read_text())["latest_checkpoint"])
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    steps = int(m["global_step"]) - (int(lines[-2]["global_step"]) if len(lines) > 1 else 0)  # the last epoch's
    first = int(m["global_step"]) - steps
    mid = 0 if isinstance(every, int) else sum(1 for s in range(first + 1, first + steps + 1) if s % every["steps"] == 0)
    return {"arm": name, "every": every, "wall_s": round(wall, 2), "epoch_time_s": round(m["epoch_time_s"], 3),
            "epoch_times_s": [round(x["epoch_time_s"], 3) for x in lines],
            "samples_per_s": round(m["samples_per_s"], 1), "steps": steps, "mid_epoch_checkpoints": mid,
            "checkpoint_s": round(m.get("checkpoint_s") or 0.0, 3),
            "checkpoint_bytes": size, "step_time_p50_ms": round(m.get("step_time_p50_ms", 0), 2),
            "step_time_p99_ms": round(m.get("step_time_p99_ms", 0), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="25,100,400", help="the N of each {steps: N} arm")
    ap.add_argument("--rows", type=int, default=24000, help="training rows (one epoch)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch's figures count (see the module doc)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    arms = [("epoch_only", 1)] + [(f"steps_{n}", {"steps": int(n)}) for n in args.steps.split(",")]
    work = Path(tempfile.mkdtemp(prefix="raydeep-step-ckpt-"))
    env = {**os.environ, "RAYDEEP_CACHE": str(work / "cache"), "RAY_DATA_LOG_LEVEL": "WARNING"}
    runs: list[dict] = []
    t0 = time.time()
    for r in range(args.rounds):
        for name, every in arms:
            run = run_arm(work, f"{name}-r{r}", every, args.rows, env, args.epochs)
            run["round"] = r
            runs.append(run)
            print(json.dumps(run), flush=True)
    base = statistics.median(x["epoch_time_s"] for x in runs if x["arm"].startswith("epoch_only"))
    table = []
    for name, every in arms:
        mine = [x for x in runs if x["arm"].startswith(name + "-")]
        t = statistics.median(x["epoch_time_s"] for x in mine)
        mid = mine[0]["mid_epoch_checkpoints"]
        table.append({"arm": name, "every": every, "epoch_time_s_median": round(t, 3),
                      "samples_per_s_median": round(statistics.median(x["samples_per_s"] for x in mine), 1),
                      "mid_epoch_checkpoints": mid, "overhead_vs_epoch_only": round(t / base - 1, 4),
                      "s_per_checkpoint": round((t - base) / mid, 3) if mid else None,
                      "checkpoint_s_median": round(statistics.median(x["checkpoint_s"] for x in mine), 3),
                      "measured_s_per_checkpoint": round(statistics.median(x["checkpoint_s"] for x in mine) / mid, 4)
                      if mid else None,
                      "checkpoint_share_of_epoch": round(statistics.median(x["checkpoint_s"] for x in mine) / t, 4),
                      "checkpoint_bytes": mine[0]["checkpoint_bytes"]})
    for row in table:
        print(row)
    out = Path(args.out or HERE / "results" / f"step-checkpoints-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps({"what": "step_checkpoints", "rows": args.rows, "rounds": args.rounds, "epochs": args.epochs,
                               "cpu_count": os.cpu_count(), "summary": table, "runs": runs,
                               "wall_time_s": round(time.time() - t0, 1)}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
