"""``raydeep data inspect PATH``: what a split (or a whole prepared set) holds, without Ray.

Schema, rows and shards come from the parquet footers (``open_split``); the label histogram
from the manifest, else from a pyarrow scan of the label column only; a few rows are decoded
with the set's own tokenizer when the manifest names one. A regression split (its manifest's
task is ``regression``, or, without a manifest, a floating ``label``) gets the targets' count,
min, max, mean and std from the same kind of scan instead of a histogram. A causal-LM split (no
``label`` column: packed ``input_ids`` blocks) gets its blocks and token counts instead, and its
first blocks decoded. Image and numeric splits are scanned for NaN and inf values, which fail the
command, as do NaN/inf targets.
Everything is plain text, so it reads the same in a terminal, a CI log and a test.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydeep.datasets.manifest import MANIFEST_NAME, PREPARED_NAME
from raydeep.datasets.prepare.tokenizer import decode, load_tokenizer, plain, sha256
from raydeep.datasets.scan import check_finite, target_summary
from raydeep.datasets.schema import LABEL_COLUMN
from raydeep.datasets.splits import ParquetSplit, open_split
from raydeep.datasets.storage import StorageConfig, is_s3, s3_errors, s3_filesystem, strip_s3
from raydeep.errors import DataError

KEY = "inspect"
LM_TASK = "causal_lm"  # the manifest task of packed blocks (prepare/lm.py)


def _join(base: str, rel: str) -> str:
    """``base/rel`` normalised, keeping an ``s3://`` scheme intact."""
    if is_s3(base):
        return "s3://" + posixpath.normpath(posixpath.join(strip_s3(base), rel))
    return posixpath.normpath(posixpath.join(base, rel))


def _fsspec_for(uri: str, storage: StorageConfig | None) -> tuple[Any, str]:
    if is_s3(uri):
        return s3_filesystem(storage), strip_s3(uri)
    return fsspec.filesystem("file"), uri


def label_counts(split: ParquetSplit) -> dict[int, int]:
    """Label -> rows from a pyarrow scan of the label column only (no class count needed)."""
    counts: dict[int, int] = {}
    for path in split.files:
        try:
            with split.filesystem.open_input_file(path) as f:
                labels = pq.ParquetFile(f).read(columns=["label"]).column("label")
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{KEY}: {path}: cannot read the 'label' column ({exc})") from None
        values, n = np.unique(labels.drop_null().to_numpy(), return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[int(v)] = counts.get(int(v), 0) + int(c)
    return dict(sorted(counts.items()))


def label_kind(split: ParquetSplit) -> str:
    """``"class"`` (a histogram), ``"value"`` (regression targets: statistics) or ``"none"`` (no
    label column: causal-LM blocks) for this split.

    The manifest's ``task`` decides when there is one, and its label column must fit it; else
    the column's type: integers are class ids, floats are targets. Anything else is one line
    naming the file and the column.
    """
    path = split.files[0]
    if not split.has_labels:
        if split.task is not None and split.task != LM_TASK:
            raise DataError(f"{KEY}: {path}: no {LABEL_COLUMN!r} column, but its {MANIFEST_NAME} says task "
                            f"{split.task!r}, which needs one")
        return "none"
    t = split.schema.field(LABEL_COLUMN).type
    if split.task == LM_TASK:
        raise DataError(f"{KEY}: {path}: has a {LABEL_COLUMN!r} column, but its {MANIFEST_NAME} says task "
                        f"{LM_TASK!r}, whose blocks have none")
    task = (split.manifest or {}).get("task")  # None for a subset of the shards (see below)
    if not isinstance(task, str):
        task = None
    is_int, is_float = pa.types.is_integer(t), pa.types.is_floating(t)
    if task == "regression":
        if not (is_int or is_float):
            raise DataError(f"{KEY}: {path}: column {LABEL_COLUMN!r} is {t}, but its {MANIFEST_NAME} says task "
                            "'regression', which needs numeric targets (float32/float64, or an integer type)")
        return "value"
    # A manifest kept for a subset of its shards (a file or a glob) leaves only num_classes behind.
    classes = (task is not None and "classification" in task) or split.num_classes is not None
    if classes and not is_int:
        said = f"task {task!r}" if task else f"num_classes {split.num_classes}"
        raise DataError(f"{KEY}: {path}: column {LABEL_COLUMN!r} is {t}, but its {MANIFEST_NAME} says {said}, "
                        "which needs integer class ids (int64)")
    if is_int:
        return "class"
    if is_float:
        return "value"
    raise DataError(f"{KEY}: {path}: column {LABEL_COLUMN!r} is {t}, expected an integer type (int64) for class "
                    "ids, or a float type for regression targets")


def _number(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _tokenizer(split: ParquetSplit, storage: StorageConfig | None) -> tuple[Any, str]:
    """(tokenizer or None, a note about it) from the manifest's ``tokenizer`` entry."""
    info = (split.manifest or {}).get("tokenizer")
    if not isinstance(info, dict) or not info.get("file"):
        return None, ""
    where = _join(posixpath.dirname(split.files[0]), info["file"])
    fs, path = _fsspec_for(where, storage)
    try:
        data = fs.cat_file(path)
    except (OSError, FileNotFoundError):
        return None, f"tokenizer: {where} is missing; samples shown as ids"
    note = f"tokenizer: {where} (vocab {info.get('vocab_size')}, {info.get('source', '')})"
    if info.get("sha256") and sha256(data) != info["sha256"]:
        note += "; WARNING: its sha256 differs from the manifest's, so decoded samples may be wrong"
    try:
        return plain(load_tokenizer(data.decode(), where=where)), note
    except (DataError, UnicodeDecodeError):
        return None, f"tokenizer: {where} is not a readable tokenizer.json; samples shown as ids"


def _samples(split: ParquetSplit, n: int, tok: Any, kind: str = "class") -> list[str]:
    if n <= 0:
        return []
    path = split.files[0]
    cols = [c for c in (split.feature.column, "label", "id") if split.schema is None or c in split.schema.names]
    with split.filesystem.open_input_file(path) as f:
        batch = next(pq.ParquetFile(f).iter_batches(batch_size=n, columns=cols), None)
    if batch is None:
        return []
    lines = []
    for i, row in enumerate(batch.to_pylist()):
        values = row[split.feature.column] or []
        if split.feature.kind == "image":
            arr = np.asarray(values, dtype=np.float64)
            body = f"{arr.size} pixels, min {arr.min():.3g}, max {arr.max():.3g}, mean {arr.mean():.3g}"
        elif split.feature.kind == "numeric":
            shown_values = ", ".join(_number(v) for v in values[:8])
            body = f"{len(values)} value(s): [{shown_values}{', …' if len(values) > 8 else ''}]"
        elif tok is not None:  # a block shows its EOS ids: they are where documents end
            text = decode(tok, values, split.feature.pad_id, special=kind == "none").replace("\n", " ")
            body = json.dumps(text[:160] + ("…" if len(text) > 160 else ""), ensure_ascii=False)
        else:
            real = [v for v in values if v != split.feature.pad_id]
            body = f"{len(real)} tokens: {real[:16]}{' …' if len(real) > 16 else ''}"
        lines.append(f"    [{_tag(i, row, kind, split.label_names)}] {body}")
    return lines


def _tag(i: int, row: dict, kind: str, names: list[str] | None) -> str:
    """A sample's tag: its block number (causal LM), else its id and label (with its name)."""
    if kind == "none":
        return f"block {i}"
    label = row.get("label")
    if kind == "value" or label is None:
        shown = _number(label)
    else:
        shown = f"{label} ({names[label]})" if names and 0 <= label < len(names) else str(label)
    return f"id {row['id']}, label {shown}" if "id" in row else f"label {shown}"


def inspect_split(uri: str, *, storage: StorageConfig | None = None, samples: int = 3) -> list[str]:
    split = open_split(uri, key=KEY, storage=storage, label_kind="any")
    with s3_errors(uri, key=KEY, storage=storage):
        return _report(split, storage, samples)


def _report(split: ParquetSplit, storage: StorageConfig | None, samples: int) -> list[str]:
    m = split.manifest
    kind = label_kind(split)  # footers and manifest only: a mismatch fails before any scan
    rows = [md for md in (m or {}).get("shards", [])]
    shard_rows = [s["rows"] for s in rows] if rows else None
    out = [split.uri]
    size = ""
    if shard_rows:
        lo, hi = min(shard_rows), max(shard_rows)
        size = f" ({lo:,} rows each)" if lo == hi else f" ({lo:,}-{hi:,} rows each)"
    out.append(f"  rows: {split.num_rows:,} in {len(split.files)} shard(s){size}; manifest: "
               f"{'yes' if m else 'none (counts from a scan)'}")
    schema = split.schema
    if schema is not None:
        out.append("  schema: " + ", ".join(f"{f.name} {f.type}" for f in schema))
    f = split.feature
    if f.kind == "tokens":
        pad = f"pad id {f.pad_id}" if f.pad_id >= 0 else "no padding"
        out.append(f"  feature: tokens in {f.column!r}, length {f.seq_len}, vocab {f.vocab_size or '?'}, {pad}")
    elif f.kind == "numeric":
        out.append(f"  feature: numeric in {f.column!r}, {f.num_features} value(s) per row")
        check_finite(split)
        out.append(f"  {f.column}: all finite")
    else:
        out.append(f"  feature: image in {f.column!r}, shape {list(f.image_shape or ())}")
        check_finite(split)
        out.append("  pixels: all finite")
    if kind == "none":
        out.append(_blocks_line(split))
    elif kind == "value":
        s = target_summary(split)
        out.append(f"  targets ({schema.field(LABEL_COLUMN).type} {LABEL_COLUMN!r}, from a scan of the label column): "
                   f"count {s['rows']:,}, min {_number(s['min'])}, max {_number(s['max'])}, "
                   f"mean {_number(s['mean'])}, std {_number(s['std'])}")
    else:
        out += _histogram(split)
    if m and "truncated" in m:
        out.append(f"  truncated to {m.get('max_len')} tokens: {m['truncated']:,} of {split.num_rows:,}")
    tok, note = _tokenizer(split, storage) if f.kind == "tokens" else (None, "")
    if note:
        out.append("  " + note)
    lines = _samples(split, samples, tok, kind)
    if lines:
        out.append(f"  first {len(lines)} row(s) of {posixpath.basename(split.files[0])}:")
        out += lines
    return out


def _blocks_line(split: ParquetSplit) -> str:
    """Blocks and tokens of an unlabelled (causal-LM) split; documents and dropped tokens when its
    manifest counts them."""
    f = split.feature
    line = f"  causal-LM blocks: {split.num_rows:,} of {f.seq_len} tokens ({split.num_rows * f.seq_len:,} tokens)"
    m = split.manifest or {}
    if "documents" in m:
        line += (f"; packed from {m['documents']:,} documents ({m.get('tokens', 0):,} tokens, "
                 f"{m.get('dropped_tokens', 0):,} dropped)")
    if split.eos_id is not None:
        line += f"; EOS id {split.eos_id} ends every document"
    return line


def _histogram(split: ParquetSplit) -> list[str]:
    m = split.manifest
    out = []
    if m and isinstance(m.get("label_histogram"), list):
        hist = dict(enumerate(m["label_histogram"]))
        source = "manifest"
    else:
        hist = label_counts(split)
        source = "scan of the label column"
    total = sum(hist.values()) or 1
    names = split.label_names
    out.append(f"  labels ({len(hist)}, from the {source}):")
    width = max((len(names[k]) if names and k < len(names) else len(str(k)) for k in hist), default=1)
    for k, c in hist.items():
        name = names[k] if names and 0 <= k < len(names) else str(k)
        out.append(f"    {k:>3}  {name:<{width}}  {c:>10,}  {100 * c / total:5.1f}%")
    return out


def inspect_path(uri: str, *, storage: StorageConfig | None = None, samples: int = 3) -> str:
    """The report for a split, or for every split of a prepared set's root directory."""
    fs, path = _fsspec_for(uri, storage)
    with s3_errors(uri, key=KEY, storage=storage):
        summary_path = posixpath.join(path.rstrip("/"), PREPARED_NAME)
        is_root = not any(c in path for c in "*?[") and fs.isfile(summary_path)
        summary = json.loads(fs.cat_file(summary_path)) if is_root else None
    if summary is None:
        return "\n".join(inspect_split(uri, storage=storage, samples=samples))
    if summary.get("task") == LM_TASK:
        what = (f"  task: {LM_TASK}, blocks of {summary.get('block_size')} tokens, EOS id {summary.get('eos_id')}; "
                f"{summary.get('documents', 0):,} documents, {summary.get('dropped_tokens', 0):,} tokens dropped")
    else:
        what = f"  labels: {', '.join(summary.get('label_names') or [])}"
    out = [f"{uri}: prepared data set {summary.get('name')!r} from {summary.get('input')}", what,
           f"  splits: " + ", ".join(f"{s} {v['num_rows']:,} rows" for s, v in summary.get("splits", {}).items()),
           f"  bad records skipped: {summary.get('skipped', 0):,}"
           + (f" (first: {summary['first_skipped']})" if summary.get("first_skipped") else "")]
    for split in summary.get("splits", {}):
        out.append("")
        out += inspect_split(_join(uri, split) if is_s3(uri) else posixpath.join(uri, split),
                             storage=storage, samples=samples)
    return "\n".join(out)
