"""What a worker killed late in a long epoch costs: ``run.checkpoint_every: {epochs: 1}`` against
``{steps: N}`` (issue 20).

    .venv/bin/python benchmarks/kill_resume.py [--steps 50,250] [--rows 40000] [--rounds 1] [--kill-at 0.9]

Starts its own Ray head (as tests/conftest.py does: free loopback ports, the dashboard on, token
auth with a throwaway token, 4 logical CPUs so 2 workers leave Ray Data some) and stops exactly
that head at the end. Per arm, per round: one clean ``raydeep train`` (the console script, 2
DeepSpeed CPU workers, ZeRO-1, the tests' tiny Transformer on synthetic text, one epoch,
``run.max_failures: 1``) and one where a Ray Train worker is SIGKILLed once rank 0 has trained
``--kill-at`` of the epoch's steps; arms and runs interleave so a loaded machine slows all alike.
The kill point is read from ``RAYDEEP_SAMPLE_LOG`` (each rank appends one line per optimizer step,
``epoch global_step loss ids...``), on in every run alike. Ray Train then restarts the group from
the latest registered checkpoint: with ``{epochs: 1}`` there is none in epoch 0, so from scratch.

Per run: the wall time of the ``raydeep train`` process, ``metrics.jsonl``'s ``epoch_time_s``,
``summary.json``'s final ``global_step`` and ``resumed_from_step``, the console's ``resumed at ...``
line, the step the kill landed at, and the steps trained twice (steps rank 0's sample log holds
twice). Lost wall time = killed run's wall - the same arm's clean run's wall (median over rounds).
Writes benchmarks/results/kill-resume-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# tests.conftest sets token auth with its own throwaway token (env vars the head, the CLI and
# the state API calls here all inherit) and RAY_DATA_LOG_LEVEL=WARNING.
from tests.conftest import BIN, isolated_port_flags, start_head, stop_head  # noqa: E402
from tests.helpers import SYNTH, exactly_once_but_redone, read_sample_log, tiny_config, write_config  # noqa: E402

RESUMED = re.compile(r"resumed at epoch (\d+), step (\d+), sample (\d+) of (\d+) \(global step (\d+)\)"
                     r"; at least (\d+) step\(s\) past it redone")


def worker_pids(dashboard_url: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard_url,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors]


def last_step(path: Path) -> int:
    """The global step of the last complete line of a rank's sample log (0 before any)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    end = data.rfind(b"\n")
    if end < 0:
        return 0
    line = data[data.rfind(b"\n", 0, end) + 1:end].split()
    return int(line[1]) if len(line) > 1 else 0


def run_one(work: Path, head, name: str, every, rows: int, kill_step: int, kill: bool, env: dict) -> dict:
    cfg = tiny_config(data={"train": SYNTH.format(split="train", rows=rows), "val": SYNTH.format(split="val", rows=400)},
                      run={"epochs": 1, "seed": 0, "max_failures": 1, "checkpoint_every": every, "num_to_keep": 1})
    run_dir, ids = work / name, work / f"{name}-ids"
    ids.mkdir()
    out_path = work / f"{name}.out"
    killed = reached = None
    with open(out_path, "w") as out_f:
        t0 = time.time()
        proc = subprocess.Popen([str(BIN / "raydeep"), "train", str(write_config(work / f"{name}.yaml", cfg)),
                                 "--address", head.address, "--run-dir", str(run_dir)],
                                stdout=out_f, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**env, "RAYDEEP_SAMPLE_LOG": str(ids)})
        try:
            # A clean run notes when rank 0 reaches kill_step too (its tail: the wall time after it).
            # The workers' pids are read once they train (a state API call can take many
            # seconds on a loaded machine: not at the kill), the kill is a bare os.kill.
            pids = None
            while proc.poll() is None:
                step = last_step(ids / "ids_r0.txt")
                if pids is None and step >= 1 and kill:
                    pids = worker_pids(head.dashboard_url)
                    if len(pids) != 2:
                        raise SystemExit(f"{name}: {len(pids)} live RayTrainWorker(s) at step {step}: {pids}")
                elif step >= kill_step and (pids is not None or not kill):
                    reached = time.time() - t0
                    if not kill:
                        break
                    os.kill(pids[1], signal.SIGKILL)
                    killed = {"at_step": step, "at_s": round(time.time() - t0, 2), "pid": pids[1]}
                    time.sleep(1.0)  # rank 0 may finish the step in flight; it is in the log then
                    killed["rank0_last_step_1s_later"] = last_step(ids / "ids_r0.txt")
                    break
                time.sleep(0.05)
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.time() - t0
    out = out_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{out[-3000:]}")
    if reached is None:
        raise SystemExit(f"{name}: the run ended before step {kill_step}")
    m = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    flat = " ".join(out.split())  # the console wraps long lines
    resumed = RESUMED.search(flat)
    log = read_sample_log(ids)
    twice = {rank: sum(1 for c in Counter(step for _, step, _, _ in lines).values() if c > 1)
             for rank, lines in log.items()}
    try:  # every sample once, counting each step once; a redone step the same samples and loss
        exactly_once_but_redone(log, [m["train/samples"]])
        exact = True
    except AssertionError as e:
        exact = f"no: {e}"
    return {"run": name, "every": every, "killed": killed, "wall_s": round(wall, 2),
            "reached_kill_step_s": round(reached, 2), "tail_s": round(wall - reached, 2),
            "epoch_time_s": round(m["epoch_time_s"], 3), "samples_per_s": round(m["samples_per_s"], 1),
            "global_step": summary["final"]["global_step"],
            "resumed_from_step": summary["final"].get("resumed_from_step"),
            "resumed_line": resumed.group(0) if resumed else None,
            "steps_trained_twice_r0": twice.get(0), "steps_trained_twice": twice,
            "samples_exactly_once": exact, "checkpoint_s": round(m.get("checkpoint_s") or 0.0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="50,250", help="the N of each {steps: N} arm")
    ap.add_argument("--rows", type=int, default=40000, help="training rows (one epoch; 2 workers x batch 16)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--kill-at", type=float, default=0.9, help="kill once rank 0 trained this share of the epoch")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    arms = [("epochs_1", {"epochs": 1})] + [(f"steps_{n}", {"steps": int(n)}) for n in args.steps.split(",")]
    work = Path(tempfile.mkdtemp(prefix="raydeep-kill-resume-"))
    env = {**os.environ, "RAYDEEP_CACHE": str(work / "cache"), "RAY_DATA_LOG_LEVEL": "WARNING"}
    load = {"before": os.getloadavg()}
    t0 = time.time()
    head = start_head(work, extra=isolated_port_flags())
    runs: list[dict] = []
    steps_per_epoch = math.ceil(args.rows / (2 * 16))  # 2 workers x batch 16, one epoch
    try:
        for r in range(args.rounds):
            for name, every in arms:
                for kill in (False, True):
                    kill_step = math.ceil(args.kill_at * steps_per_epoch - 1e-9)
                    run = run_one(work, head, f"{name}-{'killed' if kill else 'clean'}-r{r}", every, args.rows,
                                  kill_step, kill, env)
                    run.update(arm=name, round=r, kind="killed" if kill else "clean", loadavg_1m=os.getloadavg()[0])
                    if run["global_step"] != steps_per_epoch:
                        raise SystemExit(f"{run['run']}: {run['global_step']} steps, not {steps_per_epoch}")
                    runs.append(run)
                    print(json.dumps(run), flush=True)
    finally:
        stop_head(head)
    load["after"] = os.getloadavg()
    table = []
    for name, every in arms:
        clean = [x for x in runs if x["arm"] == name and x["kind"] == "clean"]
        killed = [x for x in runs if x["arm"] == name and x["kind"] == "killed"]
        cw, kw = statistics.median(x["wall_s"] for x in clean), statistics.median(x["wall_s"] for x in killed)
        table.append({"arm": name, "every": every, "clean_wall_s": round(cw, 2), "killed_wall_s": round(kw, 2),
                      "lost_s": round(kw - cw, 2),
                      "clean_tail_s": round(statistics.median(x["tail_s"] for x in clean), 2),
                      "killed_tail_s": round(statistics.median(x["tail_s"] for x in killed), 2),
                      "lost_tail_s": round(statistics.median(x["tail_s"] for x in killed)
                                           - statistics.median(x["tail_s"] for x in clean), 2),
                      "kill_step": [x["killed"]["at_step"] for x in killed],
                      "resumed_from_step": [x["resumed_from_step"] for x in killed],
                      "steps_redone": [x["steps_trained_twice_r0"] for x in killed],
                      "clean_epoch_time_s": round(statistics.median(x["epoch_time_s"] for x in clean), 2)})
    print(f"\n{'arm':10} {'clean s':>8} {'killed s':>9} {'lost s':>7} {'tails s':>13} {'lost tail':>9} {'kill at':>8} {'resumed':>8} {'redone':>7}")
    for row in table:
        print(f"{row['arm']:10} {row['clean_wall_s']:8.1f} {row['killed_wall_s']:9.1f} {row['lost_s']:7.1f} "
              f"{row['clean_tail_s']:6.1f}/{row['killed_tail_s']:6.1f} {row['lost_tail_s']:9.1f} "
              f"{','.join(map(str, row['kill_step'])):>8} {','.join(map(str, row['resumed_from_step'])):>8} "
              f"{','.join(map(str, row['steps_redone'])):>7}")
    out = Path(args.out or HERE / "results" / f"kill-resume-{datetime.date.today().isoformat()}.json")
    out.write_text(json.dumps({"what": "kill_resume", "rows": args.rows, "rounds": args.rounds,
                               "kill_at": args.kill_at, "steps_per_epoch": steps_per_epoch,
                               "cpu_count": os.cpu_count(), "head_logical_cpus": 4, "loadavg": load,
                               "summary": table, "runs": runs, "wall_time_s": round(time.time() - t0, 1)},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
