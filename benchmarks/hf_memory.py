"""Per-worker memory of a ~100M-parameter Hugging Face decoder under ZeRO 0-3, measured from ``raydeep train`` runs.

    .venv/bin/python benchmarks/hf_memory.py [--stages 0,1,2,3] [--n-embd 768] [--layers 12] [--vocab 16384]
                                             [--docs 7] [--block-size 64] [--batch-size 4]

The model: a GPT-2-style ``AutoModelForCausalLM`` (``GPT2Config``: ``--n-embd``, ``--layers``,
``--n-embd // 64`` heads, ``--vocab``, ``--positions``, tied embeddings), its config.json written
to a temporary directory and trained from random init (``pretrained: false``), fp32. The data:
the first ``--docs`` ``.txt`` files of ``--corpus`` prepared as in ``hf_overhead.py``
(``data prepare --task lm``), a few steps per worker. For each ZeRO stage, one ``raydeep train``
of ``configs/causal-lm.yaml`` with 2 workers (``cpus_per_worker: auto``), one epoch; the last
epoch always checkpoints, so each run also saves one.

Measured, per stage:
- ``param_bytes`` from the run's ``metrics.jsonl``: the parameter bytes rank 0 holds (its
  partition under ZeRO-3);
- each worker's peak RSS, sampled from outside every ``--interval`` s with psutil on the
  ``ray::RayTrainWorker`` processes descended from the ``raydeep train`` process (raydeep reports
  neither optimizer-state bytes nor RSS per worker). The peak covers the whole run on the
  worker: model build, engine, training, validation and the checkpoint save. Beside it the first
  RSS seen once the process is a train worker (torch, Ray and transformers imported, before the
  model is built, unless the first sample came late).

Beside them: DeepSpeed's own estimators for this parameter count on 2 devices
(``estimate_zero2_model_states_mem_needs_all_cold``, ``estimate_zero3_model_states_mem_needs_all_cold``;
they assume mixed precision on GPUs: 16-bit weights and gradients, fp32 master copy and Adam
state) and the fp32 accounting ``benchmarks/memory.py`` uses (``estimates``). The ``_all_live``
variants count ``p.data_ptr()``, which is 0 for every parameter of a model built on the meta
device, so the counts here are taken from the meta model by hand and passed to the ``_all_cold``
ones. Figures: BENCHMARKS.md, "HF memory by ZeRO stage".

Prints one JSON object; a table goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_overhead import lm_rows, prepare_lm
from memory import estimates

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MIB = 2**20


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/causal-lm.yaml"))
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--corpus", default="/usr/share/doc/git")
    p.add_argument("--docs", type=int, default=7, help="a small data set: a few steps per worker")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4, help="blocks per worker per step")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="raydeep-hf-memory-"))
    model_dir, shape = write_model(work / "model", args.n_embd, args.layers, args.vocab, args.positions)
    data = prepare_lm(args.corpus, args.docs, work / "data", block_size=args.block_size,
                      vocab_size=min(8000, args.vocab))
    common = [f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"data.batch_size={args.batch_size}",
              f"model.path={model_dir}", "model.pretrained=false", "model.task=causal_lm",
              "deepspeed.precision=fp32", "scaling.num_workers=2", "run.epochs=1",
              "run.early_stopping.patience=null", *args.overrides]
    runs = []
    for stage in [int(s) for s in args.stages.split(",")]:
        load = os.getloadavg()[0]
        r = measure_run(args.config, [*common, f"deepspeed.zero_stage={stage}"], work / f"zero{stage}", args.interval)
        r.update(zero_stage=stage, load_avg_1m_before=round(load, 2))
        runs.append(r)
        peaks = ", ".join(f"{w['peak_rss'] / MIB:.0f}" for w in r["workers"])
        print(f"ZeRO-{stage}: param_bytes {r['param_bytes'] / MIB:7.1f} MiB, peak RSS per worker {peaks} MiB, "
              f"wall {r['wall_s']:.0f} s (load {load:.1f})", file=sys.stderr)

    n = shape["num_params"]
    result = {"what": "hf_memory", "world_size": 2, "model": shape, "config": args.config, "overrides": common,
              "data": lm_rows(data), "estimates": deepspeed_estimates(n, shape["largest_layer_params"], world=2),
              "runs": runs, "wall_time_s": round(time.time() - t0, 1)}
    print_table(result, file=sys.stderr)
    print(json.dumps(result))
    return result


def write_model(out: Path, n_embd: int, layers: int, vocab: int, positions: int) -> tuple[Path, dict]:
    """config.json of a GPT-2-style decoder in ``out``, and its exact parameter counts (built on meta)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(n_embd=n_embd, n_layer=layers, n_head=max(1, n_embd // 64), vocab_size=vocab,
                        n_positions=positions, bos_token_id=1, eos_token_id=1)
    config.save_pretrained(out)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    num = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return out, {"n_embd": n_embd, "layers": layers, "heads": config.n_head, "vocab_size": vocab,
                 "positions": positions, "tied_embeddings": bool(config.tie_word_embeddings),
                 "num_params": num, "largest_layer_params": largest}


def measure_run(config: str, overrides: list[str], run_dir: Path, interval: float) -> dict:
    """One ``raydeep train``, its train workers' RSS sampled from outside until it exits."""
    import psutil

    cmd = [sys.executable, "-m", "raydeep.cli", "train", config, "--run-dir", str(run_dir)]
    cmd += [a for o in overrides for a in ("--set", o)]
    t0 = time.time()
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    driver = psutil.Process(proc.pid)
    workers: dict[int, dict] = {}
    while proc.poll() is None:
        try:
            children = driver.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            try:
                if "RayTrainWorker" not in " ".join(child.cmdline()):
                    continue
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            w = workers.setdefault(child.pid, {"pid": child.pid, "first_rss": rss, "first_seen_s": time.time() - t0,
                                               "peak_rss": 0, "samples": 0})
            if rss > w["peak_rss"]:
                w.update(peak_rss=rss, peak_at_s=round(time.time() - t0, 1))
            w["samples"] += 1
        time.sleep(interval)
    log.close()
    if proc.returncode:
        raise SystemExit(f"raydeep train failed ({proc.returncode}); see {log.name}")
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    e = epochs[-1]
    return {"param_bytes": e["param_bytes"], "steps": e["global_step"], "samples": e["train/samples"],
            "step_time_p50_ms": round(e.get("step_time_p50_ms", 0), 1), "epoch_time_s": round(e["epoch_time_s"], 1),
            "wall_s": round(time.time() - t0, 1),
            "workers": [{**w, "first_seen_s": round(w["first_seen_s"], 1)} for _, w in sorted(workers.items())]}


def deepspeed_estimates(n: int, largest: int, world: int) -> dict:
    """DeepSpeed's ``_all_cold`` estimators (their printed tables and per-device figures without
    offload) and ``memory.py``'s accountings, for ``n`` parameters on ``world`` devices of one node."""
    from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                               estimate_zero3_model_states_mem_needs_all_cold)
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero2_model_states_mem_needs_all_cold(n, num_gpus_per_node=world, num_nodes=1)
        estimate_zero3_model_states_mem_needs_all_cold(n, largest, num_gpus_per_node=world, num_nodes=1)
    _, zero3_device, _ = estimate_zero3_model_states_mem_needs(n, largest, num_gpus_per_node=world, num_nodes=1,
                                                               cpu_offload=False, cpu_offload_params=False)
    return {**estimates(buf.getvalue(), n, world), "deepspeed_zero3_per_device": zero3_device}


def print_table(result: dict, file) -> None:
    est = result["estimates"]
    fp32 = est["fp32_as_deepspeed_does_it"]
    print(f"{result['model']['num_params']:,} parameters, 2 workers, fp32; MiB", file=file)
    print(f"{'ZeRO':>4} {'param_bytes':>11} {'peak RSS w0':>11} {'peak RSS w1':>11} {'first RSS':>9} "
          f"{'fp32 model states':>17} {'DS estimate':>11}", file=file)
    for r in result["runs"]:
        s = r["zero_stage"]
        ds = est["deepspeed_zero3_per_device"] if s == 3 else est["deepspeed_zero2_per_device"] if s in (1, 2) else None
        peaks = [w["peak_rss"] / MIB for w in r["workers"]] + [float("nan")] * 2
        print(f"{s:>4} {r['param_bytes'] / MIB:11.1f} {peaks[0]:11.0f} {peaks[1]:11.0f} "
              f"{min(w['first_rss'] for w in r['workers']) / MIB:9.0f} {fp32[s] / MIB:17.1f} "
              f"{'' if ds is None else f'{ds / MIB:.1f}':>11}", file=file)


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main(sys.argv[1:])
