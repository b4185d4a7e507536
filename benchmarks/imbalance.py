"""Does class-imbalance weighting help on long-tailed digits? Every method x 3 seeds, one run.

    .venv/bin/python benchmarks/imbalance.py [--seeds 0 1 2] [--arms ce inverse ...] [--set KEY=VALUE ...]

Trains ``configs/digits-lt.yaml`` (bundled scikit-learn digits, training split long-tailed at
imbalance ratio 100, balanced validation and test splits; 2 DeepSpeed workers, 40 epochs) once
per method and seed, changing only the ``imbalance`` section and ``run.seed`` (the model's
initialization and the data order; the data split itself is fixed). The methods:

- ``ce``: plain cross-entropy;
- ``inverse``, ``sqrt_inverse``: class weights 1/n_c and 1/sqrt(n_c);
- ``en_0.99``, ``en_0.999``: effective-number weights (Cui et al. 2019) with beta 0.99 / 0.999;
- ``focal``: focal loss, gamma 2, no class weights (Lin et al. 2017);
- ``drw``: deferred re-weighting (Cao et al. 2019): plain CE, then effective-number weights
  (beta 0.999) from epoch 30 of 40 -- the 160-of-200 proportion of the paper's schedule;
- ``oversample``: plain CE on a training split resampled in Ray Data to balanced classes (an
  epoch then holds ~10x the most frequent class, so this arm trains for more steps).

Scored on the TEST split with the final checkpoint (no checkpoint selection, so validation is
not used to pick anything): macro-F1, balanced accuracy (= macro recall), and minority recall --
the mean recall of the three rarest training classes. Reported as mean +- sample std over seeds.

All runs share one local Ray started by the first. Writes benchmarks/results/imbalance-DATE.json
after every run (a stopped benchmark keeps what it measured) and prints the table for
benchmarks/BENCHMARKS.md on stderr at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

PLAIN = ["imbalance.weighting=none", "imbalance.loss=cross_entropy", "imbalance.sampling=none",
         "imbalance.drw_start_epoch=null"]
ARMS: dict[str, tuple[str, list[str]]] = {
    "ce": ("cross-entropy", PLAIN),
    "inverse": ("CE + inverse (1/n)", PLAIN + ["imbalance.weighting=inverse"]),
    "sqrt_inverse": ("CE + sqrt_inverse (1/sqrt n)", PLAIN + ["imbalance.weighting=sqrt_inverse"]),
    "en_0.99": ("CE + effective_number beta 0.99", PLAIN + ["imbalance.weighting=effective_number",
                                                           "imbalance.beta=0.99"]),
    "en_0.999": ("CE + effective_number beta 0.999", PLAIN + ["imbalance.weighting=effective_number",
                                                             "imbalance.beta=0.999"]),
    "focal": ("focal gamma 2 (no weights)", PLAIN + ["imbalance.loss=focal", "imbalance.gamma=2.0"]),
    "drw": ("DRW: CE, effective_number beta 0.999 from epoch 30", PLAIN + [
        "imbalance.weighting=effective_number", "imbalance.beta=0.999", "imbalance.drw_start_epoch=30"]),
    "oversample": ("CE + oversampling to balance", PLAIN + ["imbalance.sampling=oversample"]),
}
RAREST = 3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits-lt.yaml"))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every run, e.g. --set run.epochs=20")
    p.add_argument("--out-dir", help="where the runs go (default: a temp dir)")
    args = p.parse_args(argv)

    from rich.console import Console

    from raydeep.config import load_config
    from raydeep.trainers.driver import train
    from raydeep.trainers.evaluate import evaluate_command

    root = Path(args.out_dir or tempfile.mkdtemp(prefix="raydeep-imbalance-"))
    today = date.today().isoformat()
    out = HERE / "results" / f"imbalance-{today}.json"
    out.parent.mkdir(exist_ok=True)
    result: dict = {"what": "imbalance", "date": today, "config": os.path.relpath(args.config, ROOT),
                    "overrides": args.overrides, "seeds": args.seeds, "cpu_count": os.cpu_count(),
                    "load_avg_1m_before": os.getloadavg()[0], "runs": []}
    quiet = Console(file=io.StringIO())
    for arm in args.arms:
        for seed in args.seeds:
            cfg = load_config(args.config, [*ARMS[arm][1], f"run.seed={seed}", *args.overrides])
            t0 = time.time()
            summary = train(cfg, run_dir=root / arm / f"seed{seed}", console=quiet)
            with contextlib.redirect_stdout(io.StringIO()):
                test = evaluate_command(summary["latest_checkpoint"], cfg.data.test,
                                        out=str(root / arm / f"seed{seed}" / "test.json"))
            run = {"arm": arm, "seed": seed, "wall_s": round(time.time() - t0, 1),
                   "epochs": summary["final"].get("epoch", cfg.run.epochs - 1) + 1,
                   "steps": summary["final"].get("global_step"),
                   "val_macro_f1_final": summary["final"].get("val/macro_f1"),
                   **scores(test["confusion"], summary["class_counts"])}
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
            result["table"] = table(result["runs"])
            out.write_text(json.dumps(result, indent=2) + "\n")
    result["load_avg_1m_after"] = os.getloadavg()[0]
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["table"], indent=2))
    print(markdown(result, argv if argv is not None else sys.argv[1:]), file=sys.stderr)
    return result


def scores(confusion: list[list[int]], class_counts: list[int]) -> dict:
    """Test macro-F1, balanced accuracy and the rarest classes' recall from a confusion matrix."""
    from raydeep.trainers.metrics import classification_metrics

    m = classification_metrics(confusion)
    support = [sum(row) for row in confusion]
    recall = [confusion[c][c] / support[c] if support[c] else 0.0 for c in range(len(confusion))]
    rarest = sorted(range(len(class_counts)), key=lambda c: (class_counts[c], c))[:RAREST]
    return {"test_macro_f1": m["macro_f1"], "test_balanced_accuracy": m["balanced_accuracy"],
            "test_accuracy": m["accuracy"], "test_minority_recall": sum(recall[c] for c in rarest) / RAREST,
            "rarest_classes": rarest, "test_recall": recall}


def table(runs: list[dict]) -> dict:
    out: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        row = {"seeds": len(rs), "steps": rs[0]["steps"]}
        for key in ("test_macro_f1", "test_balanced_accuracy", "test_minority_recall"):
            vals = [r[key] for r in rs]
            row[key] = [round(statistics.mean(vals), 4), round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0]
        out[arm] = row
    return out


def markdown(r: dict, argv: list[str]) -> str:
    def pm(v: list[float]) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}"

    return "\n".join([
        f"### Imbalance weighting on long-tailed digits ({r['date']}, {r['cpu_count']} CPUs)",
        "",
        f"`.venv/bin/python benchmarks/imbalance.py {' '.join(argv)}`".replace(" `", "`"),
        "",
        f"Test split, final checkpoint, mean ± std over seeds {r['seeds']}; minority recall = mean recall "
        f"of the {RAREST} rarest training classes.",
        "",
        "| method | test macro-F1 | balanced accuracy | minority recall | steps |",
        "|---|---|---|---|---|",
        *(f"| {ARMS[arm][0]} | {pm(row['test_macro_f1'])} | {pm(row['test_balanced_accuracy'])} | "
          f"{pm(row['test_minority_recall'])} | {row['steps']} |" for arm, row in r["table"].items()),
    ])


if __name__ == "__main__":
    main()
