"""Does ASHA find what a full search finds, for a fraction of the training? And what does a trial cost to start?

    .venv/bin/python benchmarks/sweep_efficiency.py [--trials 16] [--address HOST:PORT] [--set KEY=VALUE ...]

Runs the sweep in ``configs/sweep-digits-lt.yaml`` (bundled long-tailed digits) twice over the
same trials -- the random search lists its trials from a seed before anything runs, and the
scheduler does not change that list, so both sweeps train exactly the same configs:

1. ``scheduler: none``: every trial runs all of ``run.epochs`` (the full budget);
2. ``scheduler: asha``: the same trials, the weak ones stopped at ASHA's rungs.

For each it reports the best validation macro-F1 (any trial, any epoch), the total optimizer
steps trained (the sum of every trial's last ``global_step``), the wall time, and the per-trial
start overhead: from the trial function's start to its first report, minus that first epoch's
training time (so: planning, the Train controller and worker group, DeepSpeed's engine,
Ray Data's first blocks, and one validation pass). The target (issue 5): ASHA's best within
0.01 of the full search's, with at most a third of its steps.

Prints one JSON object (also written to benchmarks/results/) and, on stderr, the lines to
paste into benchmarks/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "sweep-digits-lt.yaml"))
    p.add_argument("--trials", type=int, default=16, help="trials in each sweep (tune.search.num_samples)")
    p.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both sweeps, e.g. --set scaling.cpus_per_worker=1")
    p.add_argument("--out-dir", help="where the two sweep directories go (default: a temp dir)")
    p.add_argument("--asha-set", dest="asha_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for the ASHA sweep only, e.g. --asha-set tune.scheduler.grace_period=4")
    p.add_argument("--full-from", metavar="SWEEP_DIR",
                   help="take the full-budget sweep from this finished sweep dir (same config and trials) "
                        "instead of running it again")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    args = p.parse_args(argv)

    from rich.console import Console

    from raydeep.cluster.connect import prepare_auth_env
    from raydeep.config import load_config

    prepare_auth_env(args.address)  # before Ray is first imported (the runner imports it)
    from raydeep.sweeps.runner import run_sweep
    root = Path(args.out_dir or tempfile.mkdtemp(prefix="raydeep-sweep-efficiency-"))
    console = Console(stderr=True)
    result: dict = {"what": "sweep_efficiency", "date": date.today().isoformat(), "config": args.config,
                    "trials": args.trials, "overrides": args.overrides, "cpu_count": os.cpu_count(),
                    "load_avg_1m_before": os.getloadavg()[0], "sweeps": {}}
    trial_lists = {}
    for scheduler in ("none", "asha"):
        sweep_dir = root / scheduler
        t0 = time.time()
        if scheduler == "none" and args.full_from:
            sweep_dir = Path(args.full_from)
            summary = json.loads((sweep_dir / "summary.json").read_text())
            wall = summary.get("wall_time_s")
        else:
            extra = args.asha_overrides if scheduler == "asha" else []
            cfg = load_config(args.config, [f"tune.search.num_samples={args.trials}", f"tune.scheduler={scheduler}",
                                            *args.overrides, *extra])
            summary = run_sweep(cfg, source=args.config, run_dir=sweep_dir, address=args.address, console=console)
            wall = time.time() - t0
        measured = measure(sweep_dir)
        trial_lists[scheduler] = measured.pop("params")
        result["sweeps"][scheduler] = {"wall_s": round(wall, 1) if wall else None, "dir": str(sweep_dir),
                                       "best_val_macro_f1": summary["best"]["value"],
                                       "best_trial": summary["best"]["params"], **measured}
    result["asha_overrides"] = args.asha_overrides
    assert sorted(map(json.dumps, trial_lists["none"])) == sorted(map(json.dumps, trial_lists["asha"])), \
        "the two sweeps did not train the same trials"
    full, asha = result["sweeps"]["none"], result["sweeps"]["asha"]
    result["f1_gap"] = round(full["best_val_macro_f1"] - asha["best_val_macro_f1"], 4)
    result["step_ratio"] = round(asha["total_steps"] / full["total_steps"], 3)
    result["target_met"] = result["f1_gap"] <= 0.01 and result["step_ratio"] <= 1 / 3

    out = HERE / "results" / f"sweep-efficiency-{result['date']}{args.tag}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(markdown(result, argv if argv is not None else sys.argv[1:]), file=sys.stderr)
    return result


def measure(sweep: Path) -> dict:
    """Steps, epochs and start overhead of every trial, from Tune's per-trial result.json."""
    steps, epochs, overhead, params = 0, 0, [], []
    for result_file in sorted((sweep / "tune").glob("*/result.json")):
        rows = [json.loads(x) for x in result_file.read_text().splitlines() if x.strip()]
        reports = [r for r in rows if "global_step" in r]
        if not reports:
            continue
        steps += reports[-1]["global_step"]
        epochs += len(reports)
        first = reports[0]
        overhead.append(first["time_total_s"] - first["epoch_time_s"])
        params.append((reports[-1].get("config") or {}).get("params"))
    return {"total_steps": steps, "total_epochs": epochs,
            "trial_start_overhead_s": {"median": round(statistics.median(overhead), 1),
                                       "max": round(max(overhead), 1)} if overhead else None,
            "params": params}


def markdown(r: dict, argv: list[str]) -> str:
    full, asha = r["sweeps"]["none"], r["sweeps"]["asha"]
    return "\n".join([
        f"### Sweep efficiency ({r['date']}, {r['cpu_count']} CPUs, load {r['load_avg_1m_before']:.1f})",
        "",
        f"`.venv/bin/python benchmarks/sweep_efficiency.py {' '.join(argv)}`".replace(" `", "`"),
        "",
        "| | best val macro-F1 | optimizer steps | epochs | wall | trial start overhead (median / max) |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {s['best_val_macro_f1']:.4f} | {s['total_steps']} | {s['total_epochs']} | {s['wall_s']:.0f} s | "
          f"{s['trial_start_overhead_s']['median']} s / {s['trial_start_overhead_s']['max']} s |"
          for name, s in (("full budget (random, no early stopping)", full), ("ASHA", asha))),
        "",
        f"ASHA: {r['f1_gap']:+.4f} macro-F1 below the full search with {r['step_ratio']:.0%} of its steps "
        f"(target: within 0.01 with at most 33%): {'met' if r['target_met'] else 'NOT met'}.",
    ])


if __name__ == "__main__":
    main()
