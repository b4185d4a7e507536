"""``raydeep evaluate``: a checkpoint's metrics on a data set, in this process, without Ray.

The checkpoint may be local or on S3: a checkpoint directory, a run's folder (``s3://BUCKET/
runs/NAME``: its latest ``checkpoint_*``), or a local run directory whose ``summary.json``
points at checkpoints that ``run.storage: s3://...`` put on S3. A remote checkpoint is
downloaded into a temporary directory (removed afterwards) through the same storage resolution
as training: ``--endpoint-url/--region/--profile``, else the run's ``storage:`` section, else
the standard AWS variables; credentials only ever from the AWS environment.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from raydeep.config import Config, load_config
from raydeep.datasets.batches import block_arrays
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.reader import read_shard
from raydeep.datasets.splits import open_split
from raydeep.datasets.storage import StorageConfig, check_bucket, is_s3, s3_errors, s3_filesystem, strip_s3
from raydeep.errors import DataError, RaydeepError
from raydeep.fileio import atomic_write_text
from raydeep.progress_bar import Meter, progress_console, step
from raydeep.trainers.checkpoints import SNAPSHOT, STATE_FILE, find_checkpoint, load_state_dict, registered
from raydeep.trainers.models import build_model
from raydeep.trainers.tasks import task_of

KEY = "evaluate"  # names the argument in one-line errors


def load_model(ckpt: Path):
    state = json.loads((ckpt / STATE_FILE).read_text())
    cfg = Config.model_validate(state["config"])
    feature = FeatureSpec.from_dict(state["feature"])
    # the checkpoint holds every weight: a hf model is built from its config, not loaded twice
    model = build_model(cfg.model.model_copy(update={"pretrained": False}), feature)
    model.load_state_dict(load_state_dict(ckpt, state["zero_stage"]))
    model.eval()
    return model, cfg, feature, state


def consolidated(model: torch.nn.Module, state: dict[str, Any]) -> str:
    """What a consolidation produced, in words: ``148 tensors, 1,234,567 parameters (ZeRO-3, 2 ranks)``."""
    tensors = len(model.state_dict())
    params = sum(p.numel() for p in model.parameters())
    ranks = state.get("world_size")
    return (f"{tensors:,} tensors, {params:,} parameters (ZeRO-{state['zero_stage']}"
            f"{f', {ranks} rank' + ('s' if ranks != 1 else '') if ranks else ''})")


def batches(split, columns: list[str], batch_size: int):
    """Batches of tensors straight from the parquet files (one machine, no Ray), read and
    converted as a training worker reads them (``read_shard``, ``block_arrays``)."""
    for f in split.files:
        for table in read_shard(f, split.filesystem, columns, batch_size):
            # copies: the arrays map Arrow's read-only buffers
            yield {k: torch.tensor(v) for k, v in block_arrays(table).items()}


# ---------------------------------------------------------------------------------------------
# Finding the checkpoint, locally or on S3


@dataclass
class Located:
    """A checkpoint ready to load: ``local`` (maybe a temporary copy), and what to call it."""

    local: Path
    uri: str  # the checkpoint as the user knows it: a local path or s3://...
    out: str  # where evaluation.json goes by default: a local path or s3://...
    storage: StorageConfig | None  # how S3 was reached, when it was


def _remote_checkpoint_of_run(run_dir: Path) -> tuple[str, StorageConfig] | None:
    """``(s3://... checkpoint, the run's storage section)`` when ``run_dir`` is a local run directory
    whose summary names checkpoints that are not on this disk because ``run.storage`` is S3."""
    summary = run_dir / "summary.json"
    config = run_dir / "config.yaml"
    if (run_dir / STATE_FILE).is_file() or not summary.is_file() or not config.is_file():
        return None
    cfg = load_config(config)
    if not is_s3(cfg.run.storage):
        return None
    s = json.loads(summary.read_text())
    for ckpt in (s.get("best", {}).get("checkpoint"), s.get("latest_checkpoint")):
        if ckpt and not Path(ckpt).is_dir():
            # Ray Train reports paths inside its storage filesystem: "bucket/prefix/...", no scheme.
            return (ckpt if is_s3(ckpt) else "s3://" + ckpt.lstrip("/")), cfg.storage
    return None


def _find_s3_checkpoint(fs: Any, uri: str) -> str:
    """The bucket/key prefix of the checkpoint at ``uri``: that directory if it holds a raydeep
    checkpoint, else the newest ``checkpoint_*`` under it (a Ray Train run folder)."""
    base = strip_s3(uri)
    if "/" not in base:
        raise DataError(f"{KEY}: {uri}: expected s3://BUCKET/PREFIX of a checkpoint or run, not a bare bucket")
    check_bucket(fs, uri)  # a missing bucket or bad credentials: raised here, turned into one line
    if fs.isfile(f"{base}/{STATE_FILE}"):
        return base
    # A run folder: Ray's latest *registered* checkpoint (every rank uploaded); a checkpoint_*
    # folder it never registered is what a crash mid-upload left.
    if fs.isfile(f"{base}/{SNAPSHOT}"):
        _, latest = registered(fs.cat_file(f"{base}/{SNAPSHOT}").decode())
        if latest and fs.isfile(f"{base}/{latest}/{STATE_FILE}"):
            return f"{base}/{latest}"
    if fs.glob(f"{base}/checkpoint_*/{STATE_FILE}"):
        raise DataError(f"{KEY}: {uri}: its checkpoint_* folders were never registered by Ray Train (a crash during "
                        f"their upload: some ranks' shards may be missing); pass one folder explicitly to try it")
    raise DataError(f"{KEY}: {uri}: no raydeep checkpoint there (no {STATE_FILE}, no checkpoint_*/{STATE_FILE})")


def _download(fs: Any, base: str, dest: Path) -> None:
    """Copy every object under ``base`` into ``dest``, refusing a key that would land outside it
    (``..`` in an object key: a shared bucket's contents are not trusted)."""
    remote = [p for p in fs.find(base) if not p.endswith("/")]
    local = []
    root = dest.resolve()
    for p in remote:
        target = (dest / p[len(base):].lstrip("/")).resolve()
        if not target.is_relative_to(root):
            raise DataError(f"{KEY}: s3://{p}: refused: the object key leaves the checkpoint folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        local.append(str(target))
    fs.get(remote, local)


@contextlib.contextmanager
def located_checkpoint(path: str, storage: StorageConfig | None = None) -> Iterator[Located]:
    """The checkpoint ``path`` names, on local disk for as long as the block runs.

    ``storage``: how to reach S3 as the user gave it on the command line (None: the run's
    ``storage:`` section when there is one, else the standard AWS variables)."""
    remote: str | None = None
    out: str | None = None
    if is_s3(path):
        remote = path
    else:
        found = _remote_checkpoint_of_run(Path(path))
        if found is None:
            ckpt, run_dir = find_checkpoint(path)
            yield Located(ckpt, str(ckpt), str(run_dir / "evaluation.json"), storage)
            return
        remote, run_storage = found
        storage = storage or run_storage
        out = str(Path(path) / "evaluation.json")
    fs = s3_filesystem(storage)
    with tempfile.TemporaryDirectory(prefix="raydeep-eval-") as tmp:
        with s3_errors(path, key=KEY, storage=storage):
            base = _find_s3_checkpoint(fs, remote)
            _download(fs, base, Path(tmp) / "checkpoint")
        if not (Path(tmp) / "checkpoint" / STATE_FILE).is_file():  # deleted between listing and copy
            raise DataError(f"{KEY}: s3://{base}: the checkpoint disappeared while it was being downloaded")
        uri = "s3://" + base
        yield Located(Path(tmp) / "checkpoint", uri, out or uri.rsplit("/", 1)[0] + "/evaluation.json", storage)


def write_result(out: str, text: str, storage: StorageConfig | None) -> None:
    if is_s3(out):
        fs = s3_filesystem(storage)
        with s3_errors(out, key="--out", storage=storage):
            fs.pipe_file(strip_s3(out), text.encode())  # one PUT: readers see all of it or none
    else:
        atomic_write_text(out, text)


# ---------------------------------------------------------------------------------------------


def evaluate_command(path: str, data: str, *, out: str | None = None, batch_size: int = 256,
                     storage: StorageConfig | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint ``path`` (local or ``s3://``) on the split ``data`` with the metrics of
    its task.

    ``storage``: S3 settings from the command line; None takes the run's ``storage:`` section,
    else the standard AWS variables, for both the checkpoint and ``--data``."""
    progress = progress_console()  # stderr: stdout holds the tables
    with located_checkpoint(path, storage) as where:
        with step(f"consolidating {where.uri.rstrip('/').rsplit('/', 1)[-1]}", console=progress) as s:
            model, cfg, feature, state = load_model(where.local)
            s.result = consolidated(model, state)
    storage = storage or where.storage or cfg.storage
    task = task_of(cfg)
    split = open_split(data, key="--data", storage=storage, label_kind=task.label_kind)
    if split.feature.column != feature.column:
        raise RaydeepError(f"--data {data}: has column {split.feature.column!r}; the model reads {feature.column!r}")
    task.check_split(cfg, split)  # bad labels fail before any compute
    acc = task.accumulator(cfg)
    with torch.no_grad(), Meter("evaluating", "rows", total=split.num_rows, console=progress) as meter:
        for i, batch in enumerate(batches(split, [feature.column, *task.label_columns], batch_size), start=1):
            x = batch[feature.column]
            acc.update(model(x.float() if x.is_floating_point() else x.long()), task.targets(batch, feature))
            meter.extra = f"batches {i:,}"
            meter.advance(len(x))
    names = state.get("label_names") or ([str(i) for i in range(cfg.model.output_dim)] if cfg.model.num_classes else None)
    report = acc.report(names)
    console = Console()
    name = where.uri.rstrip("/").rsplit("/", 1)[-1]
    for table in task.evaluation_tables(report, names, f"{data} — checkpoint {name} (epoch {state['epoch'] + 1})"):
        console.print(table)
    result = {"checkpoint": where.uri, "data": data, **report}
    out_path = out or where.out
    write_result(out_path, json.dumps(result, indent=2) + "\n", storage)
    console.print(f"wrote {out_path}")
    return result
