"""The on-disk layout of a split: ``part-NNNNN.parquet`` shards plus a ``_raydeep.json`` manifest.

Also how a whole generated set is published: built in a hidden temp directory beside its final
place, then renamed into place, so a reader never sees half a set (a concurrent or interrupted
writer leaves only a ``.tmp-*`` directory that nothing reads).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydeep.datasets.schema import LABEL_COLUMN, FeatureSpec
from raydeep.errors import DataError

MANIFEST_NAME = "_raydeep.json"
# Written into an S3 split before its shards are copied in and removed after its manifest:
# S3 has no atomic rename, so a split that holds this marker is one a prepare did not finish.
INCOMPLETE_NAME = "_raydeep.incomplete"
# The summary ``raydeep data prepare`` writes last at the root of a prepared set (beside train/, val/...).
PREPARED_NAME = "_raydeep_prepare.json"
FORMAT = "raydeep/1"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def write_manifest(split_dir: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Write ``_raydeep.json`` via temp file + rename, so readers see the old or new one whole."""
    split_dir = Path(split_dir)
    fd, tmp = tempfile.mkstemp(prefix=".raydeep-", suffix=".json.tmp", dir=split_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        final = split_dir / MANIFEST_NAME
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(final)


def read_manifest(path: str | os.PathLike, *, key: str, filesystem: Any = None) -> dict[str, Any]:
    """Parse a manifest; anything but a ``raydeep/1`` JSON object is a DataError naming the file.

    ``filesystem``: a pyarrow filesystem to read it from (S3); default: the local disk.
    """
    try:
        if filesystem is None:
            with open(path) as f:
                manifest = json.load(f)
        else:
            with filesystem.open_input_stream(str(path)) as f:
                manifest = json.loads(f.read().decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{key}: {path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{key}: {path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{key}: {path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    for field in ("feature", "shards"):
        if field not in manifest:
            raise DataError(f"{key}: {path}: manifest has no {field!r}")
    if not isinstance(manifest["shards"], list):
        raise DataError(f"{key}: {path}: 'shards' must be a list of {{\"file\": ..., \"rows\": ...}}")
    return manifest


def write_split(
    out_dir: str | os.PathLike,
    table: pa.Table,
    *,
    name: str,
    split: str,
    task: str,
    feature: FeatureSpec,
    num_classes: int | None,
    label_names: Sequence[str] | None,
    generator: dict[str, Any] | None = None,
    shards: int = 4,
) -> dict[str, Any]:
    """Write ``table`` as contiguous shards plus its manifest; returns the manifest.

    ``num_classes=None`` (a regression split: ``label`` holds targets) records no class names
    and no label histogram.

    The shard count is capped by the row count so no shard is empty (an empty shard would be a
    read task with nothing to do and a row count of zero in the manifest).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = table.num_rows
    num_shards = max(1, min(shards, n))
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    shard_rows = []
    for i in range(num_shards):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, out / shard_name(i))
        shard_rows.append({"file": shard_name(i), "rows": part.num_rows})
    manifest = {
        "format": FORMAT,
        "name": name,
        "split": split,
        "task": task,
        "feature": feature.to_dict(),
        "num_classes": num_classes,
        "label_names": None if label_names is None else list(label_names),
        "num_rows": n,
        "shards": shard_rows,
        "generator": generator or {},
    }
    if num_classes is not None:
        labels = table.column(LABEL_COLUMN).to_numpy()
        manifest["label_histogram"] = np.bincount(labels, minlength=num_classes).tolist()
    write_manifest(out, manifest)
    return manifest


def publish_dir(final_dir: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Return ``final_dir``, first building it with ``build(tmp_dir)`` and renaming if absent.

    ``os.rename`` of a directory onto an existing non-empty one fails, so when two processes
    race, the first rename wins and the loser discards its copy: both end up reading one
    complete set. A crash mid-build leaves only the hidden temp directory.
    """
    final = Path(final_dir)
    if final.is_dir():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise DataError(f"{final.parent}: cannot write the data cache ({exc.strerror}); "
                        "set RAYDEEP_CACHE to a writable directory") from None
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another writer finished first; use theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
