"""Opening a split: a URI to its shard files, their parquet footers, and the feature they hold.

``open_split`` runs on the driver before Ray starts and reads only footers, so a missing, empty,
corrupt or mis-shaped data set fails in milliseconds with one line naming the config key and the
file, rather than minutes later inside a Ray read task. No Ray here.

From the footers it also checks the feature's rows (``check_footers``): each row group's count of
values against its rows times the split's width (a ragged row shows), and a float column's min/max
statistics (an inf shows; a NaN does not: parquet writers leave NaN out of them). Only a row group
that fails is read, to name the row. ``check_feature_rows`` is the check on the values themselves,
shared by the driver's scan (``scan.check_rows``), the in-memory path and the streamed read tasks.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydeep.datasets.bundled import BUNDLED_SCHEME, resolve_bundled
from raydeep.datasets.manifest import INCOMPLETE_NAME, MANIFEST_NAME, PREPARED_NAME, read_manifest
from raydeep.datasets.schema import (
    FEATURE_COLUMNS,
    ID_COLUMN,
    LABEL_COLUMN,
    FeatureSpec,
    is_int_list,
    is_numeric_list,
)
from raydeep.datasets.storage import (
    S3_SCHEME,
    StorageConfig,
    arrow_filesystem,
    check_bucket,
    is_s3,
    s3_errors,
    s3_filesystem,
    strip_s3,
)
from raydeep.errors import DataError

# What a split's label column holds: class ids, regression targets, nothing (a causal-LM split has
# no label column: the targets are its input_ids), or any of these (the caller decides:
# ``raydeep data inspect`` reads the manifest and the column's type).
LABEL_KINDS = ("class", "value", "none", "any")


@dataclass
class ParquetSplit:
    """One opened split: its shard files and what they hold, known before any data is read."""

    uri: str  # what the user wrote
    key: str  # the config key, e.g. "data.train", for error messages
    files: list[str]  # absolute shard paths, sorted; s3://bucket/key for S3
    filesystem: pafs.FileSystem  # LocalFileSystem, or s3fs wrapped for pyarrow
    manifest: dict | None  # the manifest, when it describes exactly these files
    feature: FeatureSpec
    num_rows: int
    num_classes: int | None  # from the manifest when present
    label_names: list[str] | None
    schema: pa.Schema | None = field(default=None, repr=False)  # the shards' common arrow schema
    footers: list[pq.FileMetaData] | None = field(default=None, repr=False)  # per file, as open_split read them
    task: str | None = None  # the manifest's task ("text_classification", "regression", "causal_lm"), if any
    eos_id: int | None = None  # causal-LM blocks: the id ending every document (the manifest's eos_id)
    rows_checked: bool = False  # every feature row read and checked (scan.check_rows): no need to again

    @property
    def has_ids(self) -> bool:
        return self.schema is not None and ID_COLUMN in self.schema.names

    @property
    def has_labels(self) -> bool:
        return self.schema is None or LABEL_COLUMN in self.schema.names

    @property
    def columns(self) -> list[str]:
        """The columns training reads: the feature, and the label when the split has one."""
        return [self.feature.column, LABEL_COLUMN] if self.has_labels else [self.feature.column]


# ---------------------------------------------------------------------------------------------
# Resolving a URI to files


def _is_shard(name: str) -> bool:
    # Hidden and underscore names are writers' side files (_SUCCESS, .crc, macOS ._ forks);
    # pyarrow and Ray skip them too. Ray's reader also keeps only *.parquet, so we agree with it.
    return name.lower().endswith(".parquet") and not name.startswith((".", "_"))


@dataclass
class _Listing:
    files: list[str]  # sorted shard paths (s3://bucket/key for S3)
    manifest_path: str | None  # an existing manifest beside them, if any
    whole_dir: bool  # the files are all the shards of one directory
    incomplete: str | None = None  # the marker an unfinished prepare left, if any


def _list_files(uri: str, *, key: str) -> _Listing:
    """Local URI -> its shards, the manifest beside them, and whether they are a whole directory."""
    raw = uri[len("file://"):] if uri.startswith("file://") else uri
    path = os.path.abspath(os.path.expanduser(raw))

    def manifest_in(d: str | None) -> str | None:
        return os.path.join(d, MANIFEST_NAME) if d and os.path.isfile(os.path.join(d, MANIFEST_NAME)) else None

    if any(c in raw for c in "*?["):
        matches = sorted(glob.glob(path))
        if not matches:
            raise DataError(f"{key}: {path}: no path matches this glob")
        files = [m for m in matches if os.path.isfile(m) and _is_shard(os.path.basename(m))]
        if not files:
            raise DataError(f"{key}: {path}: no parquet files match this glob (expected *.parquet)")
        parents = {os.path.dirname(f) for f in files}
        return _Listing(files, manifest_in(parents.pop() if len(parents) == 1 else None), False)
    if os.path.isdir(path):
        names = os.listdir(path)
        files = sorted(os.path.join(path, n) for n in names
                       if _is_shard(n) and os.path.isfile(os.path.join(path, n)))
        incomplete = os.path.join(path, INCOMPLETE_NAME) if INCOMPLETE_NAME in names else None
        if not files and not incomplete:
            raise _no_shards(key, path, names, os.path.join(path, "train"),
                             "no parquet files in this directory (expected *.parquet; subdirectories are not searched)")
        return _Listing(files, manifest_in(path), True, incomplete)
    if os.path.isfile(path):
        if not path.lower().endswith(".parquet"):
            raise DataError(f"{key}: {path}: expected a .parquet file, a directory of them, a glob "
                            f"or {BUNDLED_SCHEME}NAME/SPLIT")
        return _Listing([path], manifest_in(os.path.dirname(path)), False)
    raise DataError(f"{key}: {path}: path does not exist")


def _no_shards(key: str, where: str, names, train_split: str, nothing: str) -> DataError:
    """A folder (or prefix) with no shards: a prepared set's root says which split to name."""
    if PREPARED_NAME in names:
        return DataError(f"{key}: {where}: this is a prepared data set's root; name one split, e.g. {train_split}")
    return DataError(f"{key}: {where}: {nothing}")


def _list_s3(uri: str, s3: Any, *, key: str) -> _Listing:
    """``s3://bucket/prefix`` (a prefix of shards, one object, or a glob) -> its shards.

    S3 errors (no bucket, credentials, endpoint) propagate as s3fs raised them; the caller
    turns them into one line with ``storage.s3_errors``.
    """
    path = strip_s3(uri)
    if "/" not in path:
        raise DataError(f"{key}: {uri}: expected s3://BUCKET/PREFIX (a prefix of parquet shards), not a bare bucket")

    def full(p: str) -> str:
        return S3_SCHEME + p

    if any(c in path for c in "*?["):
        matches = sorted(s3.glob(path))
        if not matches:
            check_bucket(s3, uri)  # a missing bucket says so, rather than "no match"
            raise DataError(f"{key}: {uri}: no S3 object matches this glob")
        files = [full(m) for m in matches if _is_shard(m.rsplit("/", 1)[-1])]
        if not files:
            raise DataError(f"{key}: {uri}: no parquet objects match this glob (expected *.parquet)")
        parents = {f.rsplit("/", 1)[0] for f in files}
        manifest = None
        if len(parents) == 1:
            candidate = parents.pop() + "/" + MANIFEST_NAME
            manifest = candidate if s3.exists(strip_s3(candidate)) else None
        return _Listing(files, manifest, False)
    try:
        entries = s3.ls(path, detail=True)
    except FileNotFoundError:
        check_bucket(s3, uri)
        raise DataError(f"{key}: {uri}: nothing at this S3 path (no object and no prefix)") from None
    if len(entries) == 1 and entries[0]["name"].rstrip("/") == path and entries[0]["type"] == "file":
        if not path.lower().endswith(".parquet"):
            raise DataError(f"{key}: {uri}: expected a .parquet object or a prefix of them")
        parent = path.rsplit("/", 1)[0]
        manifest = full(parent + "/" + MANIFEST_NAME)
        return _Listing([full(path)], manifest if s3.exists(strip_s3(manifest)) else None, False)
    names = {e["name"].rsplit("/", 1)[-1]: e for e in entries if e["type"] == "file"}
    files = sorted(full(e["name"]) for n, e in names.items() if _is_shard(n))
    incomplete = full(f"{path}/{INCOMPLETE_NAME}") if INCOMPLETE_NAME in names else None
    if not files and not incomplete:
        raise _no_shards(key, uri, names, f"{uri.rstrip('/')}/train",
                         "no parquet objects under this prefix (expected *.parquet; deeper prefixes are not searched)")
    manifest = full(f"{path}/{MANIFEST_NAME}") if MANIFEST_NAME in names else None
    return _Listing(files, manifest, True, incomplete)


# ---------------------------------------------------------------------------------------------
# Reading footers and inferring the feature


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_footer(path: str, fs: pafs.FileSystem, *, key: str) -> pq.FileMetaData:
    try:
        with fs.open_input_file(path) as f:
            return pq.read_metadata(f)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{key}: {path}: not a readable parquet file ({one_line(exc)})") from None


def _schema_difference(a: pa.Schema, b: pa.Schema) -> str | None:
    """Why shard schema ``b`` cannot be read together with ``a``; None when it can.

    Nullability differences are tolerated (writers disagree on it; Ray reads both), so this
    goes through ``unify_schemas`` rather than ``Schema.equals``.
    """
    if set(a.names) != set(b.names):
        return f"columns {b.names} != {a.names}"
    try:
        pa.unify_schemas([a, b])
    except pa.ArrowException:
        for name in a.names:
            if not a.field(name).type.equals(b.field(name).type):
                return f"column {name!r} is {b.field(name).type} != {a.field(name).type}"
        return "schemas cannot be merged"
    return None


def _first_row_length(files: list[str], footers: list[pq.FileMetaData], column: str, fs: pafs.FileSystem,
                      *, key: str) -> int:
    """The list length of the first row (reads one small batch of one column of one file)."""
    path = next(p for p, md in zip(files, footers) if md.num_rows > 0)
    try:
        with fs.open_input_file(path) as f:
            batch = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=[column]))
    except (pa.ArrowException, OSError, StopIteration) as exc:
        raise DataError(f"{key}: {path}: cannot read the first row of {column!r} ({one_line(exc)})") from None
    value = batch.column(0)[0].as_py()
    if not value:
        raise DataError(f"{key}: {path}: the first row of {column!r} is empty or null; "
                        "expected a list padded to a fixed length")
    return len(value)


def _feature_from_manifest(manifest: dict, where: str, schema: pa.Schema, *, key: str) -> FeatureSpec:
    try:
        feature = FeatureSpec.from_dict(manifest["feature"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{key}: {where}: bad 'feature' in manifest: {exc}") from None
    if feature.column not in schema.names:
        raise DataError(f"{key}: {where}: the manifest's feature column {feature.column!r} is not in the shards "
                        f"(columns: {', '.join(schema.names)})")
    t = schema.field(feature.column).type
    ok = is_int_list(t) if feature.kind == "tokens" else is_numeric_list(t)
    if not ok:
        expected = "a list of integers" if feature.kind == "tokens" else "a list of numbers"
        raise DataError(f"{key}: {where}: column {feature.column!r} is {t}, expected {expected}")
    if pa.types.is_fixed_size_list(t) and t.list_size != feature.width:
        raise DataError(f"{key}: {where}: column {feature.column!r} holds {t.list_size} values per row but the "
                        f"manifest's feature says {feature.width}")
    return feature


def _infer_feature(files: list[str], footers: list[pq.FileMetaData], schema: pa.Schema, fs: pafs.FileSystem,
                   *, key: str) -> FeatureSpec:
    where = files[0]
    present = [c for c in FEATURE_COLUMNS if c in schema.names]
    if not present:
        raise DataError(f"{key}: {where}: no feature column; expected one of {', '.join(map(repr, FEATURE_COLUMNS))} "
                        f"(columns: {', '.join(schema.names)})")
    if len(present) > 1:
        raise DataError(f"{key}: {where}: both {present[0]!r} and {present[1]!r} present; add a {MANIFEST_NAME} "
                        "whose feature.column names the one to train on")
    column = present[0]
    kind = FEATURE_COLUMNS[column]
    t = schema.field(column).type
    if kind == "tokens" and not is_int_list(t):
        raise DataError(f"{key}: {where}: column {column!r} is {t}, expected list<int32> token ids")
    if kind == "image" and not is_numeric_list(t):
        raise DataError(f"{key}: {where}: column {column!r} is {t}, expected fixed_size_list<float32>[C*H*W]")
    if kind == "numeric" and not is_numeric_list(t):
        raise DataError(f"{key}: {where}: column {column!r} is {t}, expected fixed_size_list<float32>[N] "
                        "(or list<float32> of one length)")
    width = t.list_size if pa.types.is_fixed_size_list(t) else _first_row_length(files, footers, column, fs, key=key)
    if kind == "tokens":
        return FeatureSpec(column=column, kind="tokens", seq_len=width)
    if kind == "numeric":
        return FeatureSpec(column=column, kind="numeric", num_features=width)
    side = math.isqrt(width)
    if side * side != width:
        raise DataError(f"{key}: {where}: column {column!r} has {width} values per row, not a square image; add a "
                        f"{MANIFEST_NAME} with feature.shape [C, H, W]")
    return FeatureSpec(column=column, kind="image", image_shape=(1, side, side))


# ---------------------------------------------------------------------------------------------
# Checking the feature's rows


def check_feature_rows(values: pa.Array | pa.ChunkedArray, feature: FeatureSpec, width: int, where: str,
                       first_row: int = 0) -> None:
    """Raise a DataError ``"{where}row N: ..."`` at the first row of ``values`` (the feature column,
    its rows numbered from ``first_row``) that is null or does not hold ``width`` values, or, for
    pixels and numeric features, holds a NaN or inf. pyarrow compute over the column: no Python per row."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    column = feature.column
    if len(arr) == 0:
        return
    if arr.null_count:
        row = pc.index(pc.is_null(arr), True).as_py()
        raise DataError(f"{where}row {first_row + row}: {column!r} is null; every row needs {width} values")
    if not (pa.types.is_fixed_size_list(arr.type) and arr.type.list_size == width):
        lengths = pc.list_value_length(arr)
        wrong = pc.not_equal(lengths, width)
        if pc.any(wrong).as_py():
            row = pc.index(wrong, True).as_py()
            span = pc.min_max(lengths)
            lo, hi = span["min"].as_py(), span["max"].as_py()
            held = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise DataError(f"{where}row {first_row + row}: {column!r} holds {lengths[row].as_py()} values, expected "
                            f"{width} (rows here hold {held}); every row needs the same number of values")
    if feature.kind == "tokens":
        return
    flat = pc.list_flatten(arr)  # honours offsets and slices
    if not pa.types.is_floating(flat.type) and not flat.null_count:
        return
    finite = pc.fill_null(pc.is_finite(flat), False) if pa.types.is_floating(flat.type) else pc.is_valid(flat)
    if pc.all(finite).as_py():
        return
    first = pc.index(finite, False).as_py()
    row = pc.list_parent_indices(arr)[first].as_py()
    what = "pixel" if feature.kind == "image" else "feature value"
    raise DataError(f"{where}row {first_row + row}: {column!r} holds {flat[first].as_py()} (NaN or inf); "
                    f"every {what} must be finite")


def read_row_group_column(path: str, fs: pafs.FileSystem, group: int, column: str, *, key: str) -> pa.ChunkedArray:
    """One row group's ``column`` of one file."""
    try:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(group, columns=[column]).column(column)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{key}: {path}: cannot read the {column!r} column ({one_line(exc)})") from None


def check_footers(files: list[str], footers: list[pq.FileMetaData], feature: FeatureSpec, fs: pafs.FileSystem,
                  *, key: str) -> None:
    """The feature's rows as far as the footers tell (module doc): a row group whose value count is
    not rows x width, or whose float statistics hold an inf, is read and checked, naming the row."""
    width = feature.width
    for path, md in zip(files, footers):
        leaf = next((j for j in range(md.num_columns)
                     if md.schema.column(j).path.split(".", 1)[0] == feature.column), None)
        if leaf is None:
            continue
        for g in range(md.num_row_groups):
            group = md.row_group(g)
            chunk = group.column(leaf)
            stats = chunk.statistics if chunk.is_stats_set else None
            inf = (feature.kind != "tokens" and chunk.physical_type in ("FLOAT", "DOUBLE") and stats is not None
                   and stats.has_min_max and not (math.isfinite(stats.min) and math.isfinite(stats.max)))
            if inf or chunk.num_values != group.num_rows * width:
                values = read_row_group_column(path, fs, g, feature.column, key=key)
                check_feature_rows(values, feature, width, f"{key}: {path}: row group {g}, ")


def _check_manifest_matches(manifest: dict, where: str, files: list[str], footers: list[pq.FileMetaData],
                            *, key: str) -> None:
    """A manifest must describe exactly the shards on disk: a stale one would mislead row counts
    and the exactly-once checks that rely on them."""
    listed = {s.get("file"): s.get("rows") for s in manifest.get("shards", []) if isinstance(s, dict)}
    found = {os.path.basename(p): md.num_rows for p, md in zip(files, footers)}
    if listed.keys() != found.keys():
        extra = sorted(found.keys() - listed.keys())
        missing = sorted(listed.keys() - found.keys())
        what = f"unlisted shards {extra}" if extra else f"missing shards {missing}"
        raise DataError(f"{key}: {where}: manifest does not match the directory ({what}); regenerate or delete it")
    for name, rows in found.items():
        if listed[name] != rows:
            raise DataError(f"{key}: {where}: manifest says {name} has {listed[name]} rows, the file has {rows}; "
                            "regenerate or delete it")


def open_split(uri: str, *, key: str, cache_dir: str | None = None,
               storage: StorageConfig | None = None, label_kind: str = "class") -> ParquetSplit:
    """Resolve ``uri`` to its shards and check them from their footers alone (see module doc).

    ``uri``: a local directory, file or glob, ``datasets://NAME/SPLIT``, or the same forms
    under ``s3://bucket/prefix`` (``storage`` says how to reach S3). ``label_kind``: ``"class"``
    (an integer ``label`` column, the default), ``"value"`` (a regression target: any numeric type),
    ``"none"`` (no ``label`` column: causal-LM blocks, ``input_ids`` only) or ``"any"`` (a label
    column or none, its type not checked here; the caller checks it).
    """
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind must be one of {', '.join(LABEL_KINDS)}, got {label_kind!r}")
    if not isinstance(uri, str) or not uri:
        raise DataError(f"{key}: expected a path, glob, s3://BUCKET/PREFIX or {BUNDLED_SCHEME}NAME/SPLIT, got {uri!r}")
    if is_s3(uri):
        s3 = s3_filesystem(storage)
        with s3_errors(uri, key=key, storage=storage):
            listing = _list_s3(uri, s3, key=key)
            return _open_listing(uri, listing, arrow_filesystem(s3), key=key, label_kind=label_kind)
    local = uri
    if uri.startswith(BUNDLED_SCHEME):
        local = resolve_bundled(uri, key=key, cache_dir=cache_dir)
    elif "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise DataError(f"{key}: {uri}: {scheme}:// is not supported; use a local path, a glob, "
                        f"s3://BUCKET/PREFIX or {BUNDLED_SCHEME}NAME/SPLIT")
    return _open_listing(uri, _list_files(local, key=key), pafs.LocalFileSystem(), key=key, label_kind=label_kind)


def _open_listing(uri: str, listing: _Listing, fs: pafs.FileSystem, *, key: str,
                  label_kind: str = "class") -> ParquetSplit:
    if listing.incomplete:
        raise DataError(f"{key}: {listing.incomplete}: a `raydeep data prepare` did not finish writing this "
                        "split; run it again (or delete the directory)")
    files = listing.files
    footers = [read_footer(p, fs, key=key) for p in files]
    schemas = [md.schema.to_arrow_schema().remove_metadata() for md in footers]
    for path, s in zip(files[1:], schemas[1:]):
        why = _schema_difference(schemas[0], s)
        if why:
            raise DataError(f"{key}: {path}: schema differs from {files[0]}: {why}")
    schema = pa.unify_schemas(schemas) if len(schemas) > 1 else schemas[0]
    num_rows = sum(md.num_rows for md in footers)
    where = files[0] if len(files) == 1 else os.path.dirname(files[0])
    if num_rows == 0:
        raise DataError(f"{key}: {where}: zero rows in {len(files)} parquet file(s)")
    _check_label_column(schema, files[0], label_kind, key=key)

    manifest = None
    num_classes: int | None = None
    label_names: list[str] | None = None
    manifest_path = listing.manifest_path
    if manifest_path:
        manifest = read_manifest(manifest_path, key=key, filesystem=fs)
        feature = _feature_from_manifest(manifest, manifest_path, schema, key=key)
        num_classes, label_names = manifest.get("num_classes"), manifest.get("label_names")
        task, eos_id = _manifest_task(manifest, manifest_path, key=key)
        listed = {s.get("file") for s in manifest["shards"] if isinstance(s, dict)}
        if listing.whole_dir:
            _check_manifest_matches(manifest, manifest_path, files, footers, key=key)
        elif listed != {os.path.basename(p) for p in files}:
            # A file or glob picked a subset: the manifest's schema facts still hold, its counts don't.
            manifest = None
    else:
        feature = _infer_feature(files, footers, schema, fs, key=key)
        task = eos_id = None
    if label_kind == "none" and feature.kind != "tokens":
        raise DataError(f"{key}: {files[0]}: the feature column is {feature.column!r} ({feature.kind}); a task: "
                        "causal_lm run reads token ids from 'input_ids'")
    check_footers(files, footers, feature, fs, key=key)
    return ParquetSplit(uri=uri, key=key, files=files, filesystem=fs, manifest=manifest, feature=feature,
                        num_rows=num_rows, num_classes=num_classes, label_names=label_names, schema=schema,
                        footers=footers, task=task, eos_id=eos_id)


def _check_label_column(schema: pa.Schema, path: str, label_kind: str, *, key: str) -> None:
    """The ``label`` column is there (or, for ``"none"``, is not) with a type that fits ``label_kind``."""
    if label_kind == "none":
        if LABEL_COLUMN in schema.names:
            raise DataError(f"{key}: {path}: has a {LABEL_COLUMN!r} column: this is labelled data; a task: causal_lm "
                            "run reads only input_ids (prepare blocks with raydeep data prepare --task lm)")
        return
    if LABEL_COLUMN not in schema.names:
        if label_kind == "any":
            return
        task = "classification" if label_kind == "class" else "regression"
        raise DataError(f"{key}: {path}: no {LABEL_COLUMN!r} column (columns: {', '.join(schema.names)}); a {task} "
                        "split needs one (unlabelled input_ids blocks are for model.task: causal_lm)")
    label_type = schema.field(LABEL_COLUMN).type
    if label_kind == "value" and not (pa.types.is_floating(label_type) or pa.types.is_integer(label_type)):
        raise DataError(f"{key}: {path}: column {LABEL_COLUMN!r} is {label_type}; a regression target must be "
                        "a number (float32/float64, or an integer type)")
    if label_kind == "class" and not pa.types.is_integer(label_type):
        hint = "; a numeric target needs model.task: regression" if pa.types.is_floating(label_type) else ""
        raise DataError(f"{key}: {path}: column {LABEL_COLUMN!r} is {label_type}, expected an integer type "
                        f"(int64){hint}")


def _manifest_task(manifest: dict, where: str, *, key: str) -> tuple[str | None, int | None]:
    """(task, eos_id) from a manifest; a causal-LM manifest must name an integer ``eos_id``."""
    task = manifest.get("task") if isinstance(manifest.get("task"), str) else None
    eos_id = manifest.get("eos_id")
    if eos_id is None and task != "causal_lm":
        return task, None
    if isinstance(eos_id, bool) or not isinstance(eos_id, int) or eos_id < 0:
        raise DataError(f"{key}: {where}: 'eos_id' is {eos_id!r}; a causal_lm manifest needs the integer id that "
                        "ends every document")
    return task, eos_id
