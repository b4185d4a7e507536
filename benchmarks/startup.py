"""Time from ``raydeep train`` to its first optimizer step, phase by phase, and an 80-step run end to end.

    .venv/bin/python benchmarks/startup.py [--steps 80] [--skip-imports] [--checkout DIR [--rounds 3]]

1. Import costs, each in a fresh interpreter (cumulative, not additive: ``ray.train.torch``
   imports ``torch``): what the driver and every worker pay before doing anything.
2. One ``raydeep train benchmarks/text-small.yaml`` run of ``--steps`` optimizer steps (one
   epoch: 2 workers x 32 rows x steps), timed from the command's start to its exit, with the
   start-up timeline the run writes into ``summary.json`` (``startup``): the driver's marks
   (process start, data checked, Ray ready, fit start) and rank 0's (loop entry, engine
   ready, first batch, first step), all ``time.time()`` on this one machine.

With ``--checkout DIR`` (e.g. ``git worktree add /tmp/base 263931c``) the run is A/B: each round
runs this checkout's ``raydeep train`` and DIR's, alternating which goes first, and the
medians of both arms' wall and time-to-first-step are reported side by side (both arms in one
run, so machine load falls on both).

Whether DeepSpeed had to compile its shared-memory comm op (a g++ build on a machine's first
run, cached under ~/.cache/torch_extensions) is read off that cache's modification time.

Prints one JSON object; a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import glob
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
IMPORTS = ["raydeep.cli", "torch", "ray", "ray.data", "ray.train.torch", "deepspeed"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(HERE / "text-small.yaml"))
    p.add_argument("--steps", type=int, default=80, help="optimizer steps in the run (one epoch)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-imports", action="store_true")
    p.add_argument("--checkout", metavar="DIR", help="A/B against raydeep train from another checkout")
    p.add_argument("--rounds", type=int, default=3, help="with --checkout: rounds of both arms")
    args = p.parse_args(argv)

    result: dict = {"what": "startup", "cpu_count": os.cpu_count(), "load_avg_1m_before": os.getloadavg()[0]}
    if not args.skip_imports:
        result["import_s"] = {m: import_time(m) for m in ["(interpreter)"] + IMPORTS}
        print("imports (fresh interpreter each, s): " + ", ".join(f"{k} {v:.2f}" for k, v in result["import_s"].items()),
              file=sys.stderr)

    batch = 32
    rows = args.steps * batch * args.workers  # one epoch of exactly `steps` steps per worker
    run_dir = Path(tempfile.mkdtemp(prefix="raydeep-startup-")) / "run"
    # generate the data set first, so the timed run measures training, not the one-off generator
    from raydeep.datasets.splits import open_split

    open_split(DATA.format(split="train", rows=rows), key="data.train")
    overrides = (f"data.train={DATA.format(split='train', rows=rows)}", f"data.val={DATA.format(split='val', rows=rows)}",
                 f"data.batch_size={batch}", f"scaling.num_workers={args.workers}", "run.epochs=1")
    if args.checkout:
        result.update(ab(args, overrides))
        print(json.dumps(result))
        return result
    op_before = shm_op_mtime()
    one = timed_run(ROOT, args.config, overrides, run_dir)
    one["deepspeed_op_built"] = shm_op_mtime() != op_before
    one["load_avg_1m_after"] = os.getloadavg()[0]
    result.update(one)
    st = one
    print(f"{st['steps']} steps: wall {st['wall_s']:.1f} s, first step at {st['to_first_step_s']:.1f} s; phases "
          + ", ".join(f"{k} {v:.1f}" for k, v in st["phases_s"].items()), file=sys.stderr)
    print(json.dumps(result))
    return result


def timed_run(root: Path, config: str, overrides: tuple[str, ...], run_dir: Path) -> dict:
    """One ``raydeep train`` of the checkout at ``root``, timed, with its start-up timeline."""
    # python -m raydeep.cli, not the venv's console script: that one imports the installed checkout
    # even when PYTHONPATH names another (--checkout).
    cmd = [sys.executable, "-m", "raydeep.cli", "train", config,
           "--run-dir", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(root)}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"raydeep train failed ({proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    st = summary["startup"]
    marks = st["marks"]
    return {
        "command": " ".join(cmd),
        "steps": metrics["global_step"],
        "wall_s": round(wall, 2),  # command start to exit, as `time` would say
        "to_first_step_s": st["to_first_step_s"],
        "phases_s": st["phases_s"],
        "after_first_step_s": {
            "training": round(metrics["epoch_time_s"], 2),  # rank 0's epoch, first step included
            # validation, checkpoint, the last report, the worker group's teardown
            "validation_checkpoint_teardown": round(marks["fit_done"] - marks["first_step"] - metrics["epoch_time_s"], 2),
            "after_fit": round(t0 + wall - marks["fit_done"], 2),  # final table, plots, summary, Ray's shutdown
        },
        "samples_per_s": round(metrics["samples_per_s"], 1),
    }


def ab(args: argparse.Namespace, overrides: tuple[str, ...]) -> dict:
    """Both arms, ``args.rounds`` times, alternating which goes first; medians per arm."""
    arms = {"this": ROOT, "checkout": Path(args.checkout).resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(arms)[::-1]
        for name in order:
            run = timed_run(arms[name], args.config, overrides, Path(tempfile.mkdtemp(prefix=f"raydeep-startup-{name}-")) / "run")
            runs[name].append(run)
            print(f"round {r} {name}: wall {run['wall_s']:.1f} s, first step at {run['to_first_step_s']:.1f} s",
                  file=sys.stderr)
    med = {name: {k: statistics.median(x[k] for x in rs) for k in ("wall_s", "to_first_step_s", "samples_per_s")}
           for name, rs in runs.items()}
    ratio = {k: round(med["this"][k] / med["checkout"][k], 3) for k in med["this"]}
    print(f"median this/checkout: wall {ratio['wall_s']}, to first step {ratio['to_first_step_s']}, "
          f"samples/s {ratio['samples_per_s']}", file=sys.stderr)
    return {"checkout": str(arms["checkout"]), "rounds": args.rounds, "median": med, "this_over_checkout": ratio,
            "runs": runs}


def import_time(module: str) -> float:
    """Seconds to import ``module`` in a fresh interpreter (the interpreter's own start for '(interpreter)')."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    if module == "(interpreter)":
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)
        return round(time.perf_counter() - t0, 3)
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True, cwd=ROOT)
    return round(float(out.stdout.strip().splitlines()[-1]), 3)


def shm_op_mtime() -> float | None:
    # raydeep builds into <cache>/raydeep-<environment hash>/ (engine.isolate_extension_builds)
    # unless TORCH_EXTENSIONS_DIR names the folder itself.
    root = os.path.expanduser("~/.cache/torch_extensions")
    found = glob.glob(os.path.join(root, "*", "deepspeed_shm_comm", "*.so"))
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        found += glob.glob(os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "deepspeed_shm_comm", "*.so"))
    return max((os.path.getmtime(f) for f in found), default=None)


if __name__ == "__main__":
    main(sys.argv[1:])
