"""Model-state bytes per worker under ZeRO 0-3, counted from the tensors each engine holds.

    .venv/bin/python benchmarks/memory.py [--precisions fp32,bf16] [--buckets raydeep|deepspeed]

One Ray Train job, 2 workers (0.5 CPU each), builds raydeep's Transformer (about 23M
parameters at the default size) and wraps it with raydeep's ``create_engine`` under each ZeRO
stage in turn, runs one training step on a random batch, and counts, on every rank, the
bytes of every distinct tensor storage that the model and the DeepSpeed optimizer hold right
after ``backward`` and right after ``step`` (so gradients and Adam state are both live):

- ``parameters``: what the module's parameters point at (under ZeRO-3 the local partition,
  ``p.ds_tensor``, since the full parameters are released outside forward/backward);
- ``gradients``: gradient tensors and partitions (``.grad``, ``averaged_gradients``,
  ``grad_partitions_flat_buffer``, ...);
- ``optimizer``: Adam's ``exp_avg``/``exp_avg_sq`` and the fp32 master copy of the
  parameters DeepSpeed's ZeRO optimizers keep (a clone even when training in fp32);
- ``reduce_buckets``: pre-allocated gradient-reduction buckets (``ipg_buckets``), shown apart
  because their size is a config knob (``reduce_bucket_size``), not a function of the model.
  ``--buckets raydeep`` (default) sizes it as ``raydeep train`` does (``bounded_buckets`` in
  the driver); ``--buckets deepspeed`` keeps DeepSpeed's default of 5e8 elements.

A storage is counted once, however many views point into it. Next to the counts: DeepSpeed's
own estimators (``estimate_zero2/3_model_states_mem_needs_all_live``; they assume mixed
precision on GPUs: 16-bit weights and gradients, fp32 master and Adam state) and the ZeRO
paper's formulas, and each worker's RSS growth as a cross-check (on CPU, pages of a buffer
never written are not resident, so RSS can be below the counted bytes).

Prints one JSON object; a table goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import tempfile
import time
from typing import Any

STAGES = (0, 1, 2, 3)
CATEGORIES = ("parameters", "gradients", "optimizer", "reduce_buckets")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32 (raydeep's CPU default), bf16")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--buckets", choices=["raydeep", "deepspeed"], default="raydeep",
                   help="reduce_bucket_size as raydeep's plan_run sizes it, or DeepSpeed's default (5e8)")
    p.add_argument("--address", help="a Ray cluster (default: start a local one)")
    args = p.parse_args(argv)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydeep.cluster.connect import connect

    t0 = time.time()
    connect(args.address)
    model_cfg = {"kind": "transformer", "num_classes": 4, "d_model": args.d_model, "layers": args.layers,
                 "heads": max(1, args.d_model // 64), "max_len": 64, "vocab_size": args.vocab, "dropout": 0.0}
    job = {"model": model_cfg, "precisions": args.precisions.split(","), "stages": list(STAGES),
           "buckets": args.buckets}
    trainer = TorchTrainer(
        measure_worker, train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name=f"memory-{int(t0)}", storage_path=tempfile.mkdtemp(prefix="raydeep-mem-")),
    )
    rows = trainer.fit().return_value
    ray.shutdown()
    n = rows[0]["num_params"]
    result = {"what": "memory", "buckets": args.buckets, "world_size": 2, "num_params": n, "model": model_cfg,
              "estimates": estimates(rows[0]["estimator_text"], n, world=2), "measured": rows,
              "ratio_zero3_to_zero0": {
                  prec: round(_total(rows, prec, 3) / _total(rows, prec, 0), 3)
                  for prec in job["precisions"]},
              "ratio_zero3_to_zero0_without_buckets": {
                  prec: round(_total(rows, prec, 3, buckets=False) / _total(rows, prec, 0, buckets=False), 3)
                  for prec in job["precisions"]},
              "wall_time_s": round(time.time() - t0, 1)}
    print_table(result, file=sys.stderr)
    print(json.dumps(result))
    return result


def measure_worker(job: dict[str, Any]) -> list[dict] | None:
    """Each worker: for each precision and stage, build, wrap, step once, count."""
    import psutil
    import ray.train
    import torch
    import torch.distributed as dist

    from raydeep.config import validate
    from raydeep.datasets.schema import FeatureSpec
    from raydeep.trainers.plan import bounded_buckets
    from raydeep.trainers.engine import create_engine, deepspeed_config
    from raydeep.trainers.models import build_model, count_parameters

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed's first import here
    rank = ray.train.get_context().get_world_rank()
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=64, vocab_size=job["model"]["vocab_size"], pad_id=0)
    rows, text = [], ""
    for prec in job["precisions"]:
        for stage in job["stages"]:
            cfg = validate({"data": {"train": "-", "val": "-", "batch_size": 2}, "model": job["model"],
                            "deepspeed": {"zero_stage": stage, "precision": prec}}, "memory.py")
            gc.collect()
            rss0 = psutil.Process().memory_info().rss
            torch.manual_seed(0)
            model = build_model(cfg.model, feature)
            n = count_parameters(model)
            if rank == 0 and not text:
                text = estimator_text(model, world=dist.get_world_size())
            ds_config = deepspeed_config(cfg, world_size=2, device="cpu")
            if job["buckets"] == "raydeep":  # what plan_run ships to the workers
                ds_config = bounded_buckets(ds_config, cfg, feature)
            engine = create_engine(cfg, model, ds_config, "cpu")
            x = torch.randint(1, feature.vocab_size, (2, 64))
            y = torch.randint(0, 4, (2,))
            engine.backward(torch.nn.functional.cross_entropy(engine(x).float(), y))
            held = tensors_held(engine)
            engine.step()
            held += tensors_held(engine)
            counted = count_bytes(held, param_storages(engine.module))
            rows.append({"rank": rank, "precision": prec, "zero_stage": stage, "num_params": n,
                         **counted, "total": sum(counted.values()),
                         "rss_growth": psutil.Process().memory_info().rss - rss0})
            del engine, model, held
            gc.collect()
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, rows)
    if rank == 0:
        out = [r for rank_rows in everyone for r in rank_rows]
        out[0]["estimator_text"] = text
        return out
    return None


# ---------------------------------------------------------------------------------------------
# Counting


def tensors_held(engine) -> list[tuple[str, Any]]:
    """(path, tensor) for every tensor reachable from the module's parameters and the optimizer."""
    found: list[tuple[str, Any]] = []
    for name, p in engine.module.named_parameters():
        found.append((f"param:{name}", p.data))
        if getattr(p, "ds_tensor", None) is not None:  # ZeRO-3: the local partition
            found.append((f"param:{name}.ds_tensor", p.ds_tensor))
        if p.grad is not None:
            found.append((f"param:{name}.grad", p.grad))
    walk(engine.optimizer, "optimizer", found, set())
    return found


def walk(obj: Any, path: str, out: list, seen: set, depth: int = 0) -> None:
    """Tensors inside DeepSpeed's and torch's optimizer objects (lists, dicts, attributes)."""
    import torch

    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
        if obj.grad is not None:
            out.append((path + ".grad", obj.grad))
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            walk(x, f"{path}[{i}]", out, seen, depth + 1)
    elif isinstance(obj, dict):
        for k, x in obj.items():
            walk(x, f"{path}[{str(k)[:40]}]", out, seen, depth + 1)
    elif isinstance(obj, torch.nn.Module):
        return  # the module's tensors are counted from its parameters
    elif type(obj).__module__.startswith(("deepspeed", "torch.optim")) and hasattr(obj, "__dict__"):
        for k, x in vars(obj).items():
            walk(x, f"{path}.{k}", out, seen, depth + 1)


def storage_key(t) -> tuple[int, int] | None:
    if t.device.type == "meta":
        return None
    s = t.untyped_storage()
    return (s.data_ptr(), s.nbytes()) if s.nbytes() else None


def param_storages(module) -> set:
    keys = set()
    for p in module.parameters():
        for t in (p.data, getattr(p, "ds_tensor", None)):
            if t is not None and (k := storage_key(t)) is not None:
                keys.add(k)
    return keys


def category(path: str, key, params: set) -> str:
    if key in params:
        return "parameters"
    if "ipg_bucket" in path or "ipg_buffer" in path:
        return "reduce_buckets"
    leaf = path.rsplit(".", 1)[-1]
    if leaf == "grad" or ("grad" in path and "norm" not in path):
        return "gradients"
    return "optimizer"  # Adam's moments and the fp32 master copies


def count_bytes(held: list[tuple[str, Any]], params: set) -> dict[str, int]:
    first: dict[tuple[int, int], str] = {}
    for path, t in held:
        key = storage_key(t)
        if key is not None and key not in first:
            first[key] = path
    totals = dict.fromkeys(CATEGORIES, 0)
    for key, path in first.items():
        totals[category(path, key, params)] += key[1]
    return totals


# ---------------------------------------------------------------------------------------------
# Estimates


def estimator_text(model, world: int) -> str:
    """What DeepSpeed's own estimators print for this model on ``world`` devices of one node."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_live
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_live

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero2_model_states_mem_needs_all_live(model, num_gpus_per_node=world, num_nodes=1)
        estimate_zero3_model_states_mem_needs_all_live(model, num_gpus_per_node=world, num_nodes=1)
    return buf.getvalue()


def estimates(text: str, n: int, world: int) -> dict:
    """Per-device bytes: DeepSpeed's estimators (no offload) and the ZeRO paper's formulas."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, ds_zero2 = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=world, cpu_offload=False)
    # estimate_zero3_model_states_mem_needs adds 4 bytes x the largest layer's parameters for
    # the gathered layer; the printed text above has it. Its no-offload figure is 18 bytes/param/N.
    return {
        "deepspeed_zero2_per_device": ds_zero2,  # 2N + 18N/world
        "deepspeed_zero3_per_device_excl_largest_layer": int(18 * n / world),
        "deepspeed_printed": text,
        # ZeRO paper (Rajbhandari et al. 2019), mixed-precision Adam: 2 + 2 + 12 bytes per parameter
        "paper_mixed_precision": {0: 16 * n, 1: 4 * n + 12 * n // world, 2: 2 * n + 14 * n // world,
                                  3: 16 * n // world},
        # fp32 training as DeepSpeed does it: fp32 weights (4) and grads (4), fp32 master copy
        # of each partition (4, a clone even in fp32, not under ZeRO-0) and Adam (8)
        "fp32_as_deepspeed_does_it": {0: 16 * n, 1: 4 * n + 16 * n // world, 2: 4 * n + 16 * n // world,
                                      3: 20 * n // world},
    }


def _total(rows: list[dict], prec: str, stage: int, buckets: bool = True) -> float:
    mine = [r for r in rows if r["precision"] == prec and r["zero_stage"] == stage]
    return max(r["total"] - (0 if buckets else r["reduce_buckets"]) for r in mine)


def print_table(result: dict, file) -> None:
    mib = 2**20
    print(f"{result['num_params'] / 1e6:.1f}M parameters, 2 workers, {result['buckets']} reduce buckets; "
          "MiB per worker (rank 0)", file=file)
    print(f"{'prec':5} {'ZeRO':>4} " + " ".join(f"{c:>14}" for c in CATEGORIES) + f" {'total':>9} {'RSS+':>8}",
          file=file)
    for r in result["measured"]:
        if r["rank"] != 0:
            continue
        print(f"{r['precision']:5} {r['zero_stage']:>4} " + " ".join(f"{r[c] / mib:14.1f}" for c in CATEGORIES)
              + f" {r['total'] / mib:9.1f} {r['rss_growth'] / mib:8.1f}", file=file)
    print(f"ZeRO-3 / ZeRO-0: {result['ratio_zero3_to_zero0']} "
          f"(without reduce buckets: {result['ratio_zero3_to_zero0_without_buckets']})", file=file)


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main(sys.argv[1:])
