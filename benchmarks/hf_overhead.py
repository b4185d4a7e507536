"""A Hugging Face causal LM in raydeep vs a bare PyTorch loop over the same model and data, A/B in one run.

    .venv/bin/python benchmarks/hf_overhead.py [--pairs 3] [--epochs 4] [--docs 60] [--no-deepspeed] [--threads-arm 1]
                                               [--model configs/models/gpt2-mini] [--set KEY=VALUE ...]

The data: the first ``--docs`` ``.txt`` files (by name) under ``--corpus``, prepared once by
``raydeep data prepare --task lm --train-tokenizer bpe`` into packed blocks (``--block-size``
tokens) in a temporary directory; both arms read those parquet blocks. The model:
``AutoModelForCausalLM`` from ``--model``'s config.json (``pretrained: false``, the same seed, so
the same initial weights), fp32, ``configs/causal-lm.yaml``'s optimizer (AdamW, grad clip 1.0),
schedule and batch (16 blocks per process per step), early stopping off.

A = ``benchmarks/reference_loop.py`` on that config: one process, all cores as torch threads,
raydeep's ``build_model`` (the ``AutoModelForCausalLM`` behind raydeep's thin forward adapter)
and the task's next-token loss, data read with plain pyarrow.
D = ``reference_loop.py --deepspeed 2``: the same loop in 2 gloo processes in raydeep's
DeepSpeed engine (ZeRO-1), 1 thread each, no Ray.
B = ``raydeep train`` (2 workers, ZeRO-1, ``cpus_per_worker: auto``, an embedded local Ray).
``--threads-arm N`` adds A with N torch threads (``reference_Nt``): on a shared machine a
2-thread process whose threads wait for each other at every op can be the slowest arm.

Throughput is over the steady-state epochs (every epoch after the first): samples/s and
tokens/s (target tokens: ``block_size - 1`` per block, as raydeep's ``train/tokens_per_s``
counts them), raydeep's from ``metrics.jsonl`` (all workers' samples over rank 0's training time,
validation and reports excluded). Rounds rotate which arm goes first (``overhead.py``'s scheme,
whose raydeep runner this reuses); ratios are taken within a round. Figures: BENCHMARKS.md,
"HF throughput".

Prints one JSON object; a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import rotated_rounds, run_raydeep

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs/causal-lm.yaml"))
    p.add_argument("--model", default=str(ROOT / "configs/models/gpt2-mini"), help="a directory with config.json")
    p.add_argument("--corpus", default="/usr/share/doc/git", help="a folder holding .txt files (searched recursively)")
    p.add_argument("--docs", type=int, default=60, help="how many of its .txt files (the first by name)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--pairs", type=int, default=3, help="rounds")
    p.add_argument("--epochs", type=int, default=4, help="the first is excluded from the throughput")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra overrides for every arm, e.g. data.batch_size=8")
    p.add_argument("--no-deepspeed", action="store_true", help="leave out the DeepSpeed-without-Ray arm")
    p.add_argument("--threads-arm", type=int, metavar="N", help="add the reference loop with N torch threads")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="raydeep-hf-overhead-"))
    t0 = time.time()
    data = prepare_lm(args.corpus, args.docs, work / "data", block_size=args.block_size, vocab_size=args.vocab_size)
    prepare_s = time.time() - t0
    common = [f"data.train={data / 'train'}", f"data.val={data / 'val'}", f"model.path={Path(args.model).resolve()}",
              "model.pretrained=false", "model.task=causal_lm", "deepspeed.precision=fp32",
              "deepspeed.zero_stage=1", "scaling.num_workers=2", "run.early_stopping.patience=null",
              f"run.epochs={args.epochs}", "run.checkpoint_every=1000", *args.overrides]
    threads_arm = f"reference_{args.threads_arm}t" if args.threads_arm else None
    arms = ["reference", *([threads_arm] if threads_arm else []), *([] if args.no_deepspeed else ["deepspeed"]),
            "raydeep"]
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for i, arm, load in rotated_rounds(arms, args.pairs):
        if arm == "raydeep":
            run_dir = work / f"raydeep{i}"
            r = run_raydeep(args.config, common, run_dir, {})
            r.update(raydeep_tokens(run_dir))
        else:
            extra = {"deepspeed": ["--deepspeed", "2"], threads_arm: ["--threads", str(args.threads_arm)]}
            r = run_reference(args.config, common, extra.get(arm, []))
        r.update(round=i, load_avg_1m_before=round(load, 2))
        runs[arm].append(r)
        print(f"round {i} {arm:9}: {r['samples_per_s']:6.1f} samples/s {r['tokens_per_s']:8.0f} tokens/s, "
              f"step p50 {r['step_time_p50_ms']:.0f} ms p99 {r['step_time_p99_ms']:.0f} ms, wall {r['wall_s']:.0f} s "
              f"(load {load:.1f})" + (f", data wait {r['data_wait_share']:.1%}" if "data_wait_share" in r else ""),
              file=sys.stderr)

    result = {"what": "hf_overhead", "config": args.config, "model": args.model, "overrides": common,
              "data": {"corpus": args.corpus, "docs": args.docs, "block_size": args.block_size,
                       **lm_rows(data), "prepare_s": round(prepare_s, 1)},
              "cpu_count": os.cpu_count()}
    for arm in arms:
        for key in ("samples_per_s", "tokens_per_s"):
            result[f"{arm}_{key}"] = round(statistics.median(r[key] for r in runs[arm]), 1)
    for arm in arms[1:]:
        ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(runs["reference"], runs[arm])]
        result[f"{arm}_ratio_per_round"] = [round(x, 3) for x in ratios]
        result[f"{arm}_ratio_median"] = round(statistics.median(ratios), 3)
        print(f"{arm}: median {result[f'{arm}_tokens_per_s']} tokens/s vs reference {result['reference_tokens_per_s']}; "
              f"ratio per round {result[f'{arm}_ratio_per_round']}, median {result[f'{arm}_ratio_median']}",
              file=sys.stderr)
    if "deepspeed" in runs:  # what Ray adds: raydeep against DeepSpeed alone
        ratios = [b["tokens_per_s"] / a["tokens_per_s"] for a, b in zip(runs["deepspeed"], runs["raydeep"])]
        result["raydeep_vs_deepspeed_per_round"] = [round(x, 3) for x in ratios]
        result["raydeep_vs_deepspeed_median"] = round(statistics.median(ratios), 3)
    result["runs"] = runs
    result["wall_time_s"] = round(time.time() - t0, 1)
    print(json.dumps(result))
    return result


def prepare_lm(corpus: str, docs: int, out: Path, *, block_size: int, vocab_size: int) -> Path:
    """The first ``docs`` .txt files under ``corpus`` (by file name; names seen twice kept once), copied
    flat and prepared by ``raydeep data prepare --task lm`` into ``out``."""
    files: dict[str, Path] = {}
    for path in sorted(Path(corpus).rglob("*.txt"), key=lambda q: (q.name, str(q))):
        files.setdefault(path.name, path)
    chosen = sorted(files)[:docs]
    if len(chosen) < docs:
        raise SystemExit(f"{corpus} holds {len(chosen)} .txt files, fewer than --docs {docs}")
    flat = out.parent / f"{out.name}-corpus"
    flat.mkdir(parents=True)
    for name in chosen:
        shutil.copyfile(files[name], flat / name)
    cmd = [sys.executable, "-m", "raydeep.cli", "data", "prepare", "--input", str(flat), "--format", "text-dirs",
           "--task", "lm", "--block-size", str(block_size), "--train-tokenizer", "bpe",
           "--vocab-size", str(vocab_size), "--output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"data prepare failed ({proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-3000:]}")
    return out


def lm_rows(data: Path) -> dict:
    """Blocks and vocabulary of a prepared split, from its manifests."""
    train = json.loads((data / "train" / "_raydeep.json").read_text())
    val = json.loads((data / "val" / "_raydeep.json").read_text())
    return {"train_blocks": train["num_rows"], "val_blocks": val["num_rows"],
            "vocab_size": train["feature"]["vocab_size"]}


def run_reference(config: str, overrides: list[str], extra: list[str]) -> dict:
    cmd = [sys.executable, str(HERE / "reference_loop.py"), config, *extra]
    cmd += [a for o in overrides for a in ("--set", o)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"reference_loop failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = ("epoch", "samples_per_s", "tokens_per_s", "epoch_time_s", "step_time_p50_ms", "step_time_p99_ms")
    return {**{k: r[k] for k in ("samples_per_s", "tokens_per_s", "step_time_p50_ms", "step_time_p99_ms",
                                 "threads", "processes", "parameters")},
            "wall_s": time.time() - t0, "per_epoch": [{k: e.get(k) for k in keys} for e in r["per_epoch"]]}


def raydeep_tokens(run_dir: Path) -> dict:
    """tokens/s over the steady epochs, and per epoch, from the run's metrics.jsonl."""
    epochs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [e for e in epochs if e["epoch"] > 0] or epochs
    tokens = sum(e["train/tokens_per_s"] * e["epoch_time_s"] for e in steady)
    return {"tokens_per_s": tokens / sum(e["epoch_time_s"] for e in steady),
            "param_bytes": epochs[0].get("param_bytes"),
            "tokens_per_s_per_epoch": [round(e["train/tokens_per_s"], 1) for e in epochs]}


if __name__ == "__main__":
    main(sys.argv[1:])
