"""``raydeep data prepare``: raw jsonl / csv / parquet / text-dirs -> tokenized, sharded parquet splits.

Three streaming passes through Ray Data, each over the input files (never the whole data set
in one place):

1. scan: parse every record, count the good ones per file, collect their labels (only the
   labels come back to the driver) and the bad ones (``--on-bad-record error|skip``);
2. on the driver: map labels to ids, assign every record to train/val/test (stratified per
   class, seeded), then train the tokenizer on the training records only, streamed back
   from a second parse (or load ``--tokenizer``);
3. encode: parse again, tokenize, pad/truncate to ``--max-len``, optionally shuffle rows,
   and write parquet partitioned by split.

Records are numbered by (file order, position among the file's good records), which both
parses agree on, so a record's ``id`` and split are fixed by the input and ``--seed`` alone.

Output goes to a hidden ``.NAME.tmp-*`` sibling first. Locally the finished directory is
renamed into place (atomic). On S3, which cannot rename, each split gets a
``_raydeep.incomplete`` marker before its shards are copied in and loses it after its
manifest is written; ``open_split`` refuses a split that still has one. Either way an
interrupted prepare leaves nothing that reads as a complete data set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydeep.datasets.manifest import FORMAT, INCOMPLETE_NAME, MANIFEST_NAME, PREPARED_NAME, shard_name
from raydeep.datasets.prepare.raw_records import FORMATS, Bad, FieldNames, read_records
from raydeep.datasets.prepare.tokenizer import KINDS, encode, load_tokenizer, pad_id_of, plain, sha256, train_tokenizer
from raydeep.datasets.schema import FeatureSpec, tokens_array
from raydeep.datasets.storage import (
    StorageConfig,
    arrow_filesystem,
    check_bucket,
    is_s3,
    s3_error,
    s3_errors,
    s3_filesystem,
    strip_s3,
)
from raydeep.errors import DataError

SPLITS = ("train", "val", "test")
TOKENIZER_FILE = "tokenizer.json"
_EXTENSIONS = {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "parquet": (".parquet",)}
ENCODE_CHUNK = 2048  # records tokenized per encode_batch call (and rows per output block)


@dataclass
class PrepareOptions:
    """Everything ``raydeep data prepare`` takes; field names follow the flags."""

    input: str
    format: str
    output: str
    text_field: str = "text"
    label_field: str = "label"
    tokenizer: str | None = None  # a tokenizer.json to load
    train_tokenizer: str | None = None  # or "bpe" / "wordpiece" to train one on the training split
    vocab_size: int = 8000
    max_len: int = 128
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    shard_rows: int = 100_000
    seed: int = 0
    on_bad_record: str = "error"
    labels: list[str] | None = None  # the label names, in id order; default: the sorted values found
    shuffle: bool = True  # shuffle rows before writing, so no shard is one class
    overwrite: bool = False
    files_per_task: int = 256  # text-dirs: files parsed per Ray task
    storage: StorageConfig | None = field(default=None, repr=False)


def check_options(o: PrepareOptions) -> None:
    """Every bad flag value, before anything is read; DataError naming the flag."""
    if o.format not in FORMATS:
        raise DataError(f"--format {o.format!r}: expected one of {', '.join(FORMATS)}")
    if (o.tokenizer is None) == (o.train_tokenizer is None):
        raise DataError("give exactly one of --tokenizer PATH (a tokenizer.json) or --train-tokenizer "
                        f"{'|'.join(KINDS)}")
    if o.train_tokenizer is not None and o.train_tokenizer not in KINDS:
        raise DataError(f"--train-tokenizer {o.train_tokenizer!r}: expected one of {', '.join(KINDS)}")
    if o.vocab_size < 2:
        raise DataError(f"--vocab-size {o.vocab_size}: must be >= 2")
    if o.max_len < 1:
        raise DataError(f"--max-len {o.max_len}: must be >= 1")
    if o.shard_rows < 1:
        raise DataError(f"--shard-rows {o.shard_rows}: must be >= 1")
    for flag, v in (("--val-fraction", o.val_fraction), ("--test-fraction", o.test_fraction)):
        if not (math.isfinite(v) and 0 <= v < 1):
            raise DataError(f"{flag} {v}: must be in [0, 1)")
    if o.val_fraction + o.test_fraction >= 1:
        raise DataError(f"--val-fraction {o.val_fraction} + --test-fraction {o.test_fraction} leave no training "
                        "data; their sum must be < 1")
    if o.on_bad_record not in ("error", "skip"):
        raise DataError(f"--on-bad-record {o.on_bad_record!r}: expected error or skip")
    if o.labels is not None:
        if len(o.labels) < 2 or len(set(o.labels)) != len(o.labels) or not all(o.labels):
            raise DataError(f"--labels {','.join(o.labels)}: expected at least 2 distinct, non-empty names")
    if o.files_per_task < 1:
        raise DataError(f"files_per_task must be >= 1, got {o.files_per_task}")


# ---------------------------------------------------------------------------------------------
# Where things are: local paths and S3 prefixes behind one fsspec interface


@dataclass
class Location:
    """A local path or S3 prefix: its fsspec filesystem and the path that filesystem takes."""

    uri: str
    fs: Any
    path: str
    s3: bool

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def show(self, path: str) -> str:
        return "s3://" + path if self.s3 else path

    @property
    def arrow(self) -> Any:
        return arrow_filesystem(self.fs) if self.s3 else pafs.LocalFileSystem()


def locate(uri: str, storage: StorageConfig | None, *, key: str) -> Location:
    if is_s3(uri):
        path = strip_s3(uri)
        if "/" not in path and key == "--output":
            raise DataError(f"{key} {uri}: expected s3://BUCKET/PREFIX, not a bare bucket")
        return Location(uri, s3_filesystem(storage), path, True)
    if "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{key} {uri}: {uri.split('://', 1)[0]}:// is not supported; use a local path or "
                        "s3://BUCKET/PREFIX")
    raw = uri[len("file://"):] if uri.startswith("file://") else uri
    return Location(uri, fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(raw)), False)


def _visible(name: str) -> bool:
    return not name.rsplit("/", 1)[-1].startswith((".", "_"))


def list_inputs(loc: Location, fmt: str) -> list[tuple[str, str | None]]:
    """``--input`` -> ``[(file path, label from its directory or None)]``, sorted."""
    fs, path, shown = loc.fs, loc.path, loc.uri
    if fmt == "text-dirs":
        if not fs.isdir(path):
            what = "does not exist" if not fs.exists(path) else "is a file"
            raise DataError(f"--input {shown}: {what}; --format text-dirs takes a directory with one "
                            "subdirectory of text files per label")
        subdirs = sorted(e["name"] for e in fs.ls(path, detail=True) if e["type"] == "directory" and _visible(e["name"]))
        if not subdirs:
            raise DataError(f"--input {shown}: no subdirectories; --format text-dirs expects DIR/LABEL/*.txt")
        files = []
        for d in subdirs:
            label = d.rstrip("/").rsplit("/", 1)[-1]
            files += [(loc.show(e["name"]) if loc.s3 else e["name"], label)
                      for e in sorted(fs.ls(d, detail=True), key=lambda e: e["name"])
                      if e["type"] == "file" and _visible(e["name"])]
        if not files:
            raise DataError(f"--input {shown}: its label directories ({', '.join(s.rsplit('/', 1)[-1] for s in subdirs[:5])}"
                            f"{', ...' if len(subdirs) > 5 else ''}) hold no files (empty input)")
        return files
    exts = _EXTENSIONS[fmt]
    if any(c in path for c in "*?["):
        matches = sorted(m for m in fs.glob(path) if fs.isfile(m))
        if not matches:
            raise DataError(f"--input {shown}: no file matches this glob")
        return [(loc.show(m) if loc.s3 else m, None) for m in matches]
    if fs.isdir(path):
        matches = sorted(e["name"] for e in fs.ls(path, detail=True)
                         if e["type"] == "file" and _visible(e["name"]) and e["name"].lower().endswith(exts))
        if not matches:
            raise DataError(f"--input {shown}: no {'/'.join(exts)} files in this directory")
        return [(loc.show(m) if loc.s3 else m, None) for m in matches]
    if fs.isfile(path):
        return [(loc.uri if loc.s3 else path, None)]
    raise DataError(f"--input {shown}: path does not exist")


# ---------------------------------------------------------------------------------------------
# Splits and labels (driver side, pure functions)


def label_names(values: list[int | str], given: list[str] | None) -> list[str]:
    """The id -> name list: ``--labels`` as given, else the distinct values sorted (numerically
    when all are integers, so 0..K-1 keep their ids)."""
    if given is not None:
        return list(given)
    distinct = set(values)
    if all(isinstance(v, int) for v in distinct):
        return [str(v) for v in sorted(distinct)]
    return sorted({str(v) for v in distinct})


def assign_splits(label_ids: np.ndarray, num_classes: int, val_fraction: float, test_fraction: float,
                  seed: int) -> np.ndarray:
    """Split code per record (0 train, 1 val, 2 test), stratified: each class is permuted with its
    own seeded generator and cut by the fractions (rounded half up), keeping at least one
    training record per class when the class has any."""
    codes = np.zeros(len(label_ids), dtype=np.int8)
    for c in range(num_classes):
        idx = np.flatnonzero(label_ids == c)
        if idx.size == 0:
            continue
        idx = np.random.default_rng(np.random.SeedSequence([seed, c])).permutation(idx)
        n_val = int(math.floor(idx.size * val_fraction + 0.5))
        n_test = int(math.floor(idx.size * test_fraction + 0.5))
        while n_val + n_test >= idx.size and n_val + n_test > 0:
            if n_test >= n_val and n_test > 0:
                n_test -= 1
            else:
                n_val -= 1
        codes[idx[:n_val]] = 1
        codes[idx[n_val:n_val + n_test]] = 2
    return codes


# ---------------------------------------------------------------------------------------------
# What runs in Ray tasks: module-level functions, so workers import them by name


class _Stop(Exception):
    pass


def _good_records(fs: Any, files: list, fmt: str, fields: FieldNames, known: set[str] | None
                  ) -> Iterator[tuple[str, int | str] | Bad]:
    """One work unit's records, with a label outside ``--labels`` made a ``Bad`` too."""
    for path, dir_label in files:
        for rec in read_records(fs, path, fmt, fields, dir_label):
            if not isinstance(rec, Bad) and known is not None and str(rec[1]) not in known:
                rec = Bad(path, "", f"label {rec[1]!r} is not one of --labels ({', '.join(sorted(known))})")
            yield rec


def _task_error(exc: BaseException, files: list) -> str:
    path = files[0][0] if files else "?"
    err = s3_error(exc, path, key="") if not isinstance(exc, DataError) else exc
    if err is not None:
        return str(err)
    lines = str(exc).strip().splitlines()
    return f"{path}: {type(exc).__name__}: {lines[0] if lines else ''}"


def _scan(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, on_bad: str, known: set[str] | None) -> dict:
    out: dict[str, list] = {"unit": [], "count": [], "labels": [], "skipped": [], "first_bad": [], "fatal": []}
    for unit, spec in zip(batch["unit"], batch["files"]):
        files = json.loads(spec)
        labels: list[int | str] = []
        skipped, first_bad, fatal = 0, "", ""
        try:
            for rec in _good_records(fs, files, fmt, fields, known):
                if isinstance(rec, Bad):
                    skipped += rec.rows
                    first_bad = first_bad or str(rec)
                    if on_bad == "error":
                        raise _Stop
                    continue
                labels.append(rec[1])
        except _Stop:
            pass
        except Exception as exc:  # noqa: BLE001 - returned as data: the driver raises one line
            fatal = _task_error(exc, files)
        out["unit"].append(int(unit))
        out["count"].append(len(labels))
        out["labels"].append(json.dumps(labels))
        out["skipped"].append(skipped)
        out["first_bad"].append(first_bad)
        out["fatal"].append(fatal)
    return {k: np.array(v, dtype=object if k in ("labels", "first_bad", "fatal") else np.int64) for k, v in out.items()}


def _unit_plan(row: dict) -> tuple[list, int, np.ndarray, np.ndarray]:
    return (json.loads(row["files"]), int(row["offset"]), np.frombuffer(row["codes"], dtype=np.int8),
            np.frombuffer(row["label_ids"], dtype=np.int64))


def _rows(batch: dict) -> Iterator[dict]:
    for i in range(len(batch["unit"])):
        yield {k: batch[k][i] for k in batch}


def _training_texts(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, known: set[str] | None
                    ) -> Iterator[dict]:
    for row in _rows(batch):
        files, _, codes, _ = _unit_plan(row)
        texts, k = [], 0
        for rec in _good_records(fs, files, fmt, fields, known):
            if isinstance(rec, Bad):
                continue
            if k < codes.size and codes[k] == 0:
                texts.append(rec[0])
            k += 1
            if len(texts) >= ENCODE_CHUNK:
                yield {"text": np.array(texts, dtype=object)}
                texts = []
        if texts:
            yield {"text": np.array(texts, dtype=object)}


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer_from(text: str) -> Any:

    key = sha256(text.encode())
    if key not in _TOKENIZERS:
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = plain(load_tokenizer(text, where="tokenizer"))
    return _TOKENIZERS[key]


def _encode(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, known: set[str] | None, tokenizer_json: str,
            max_len: int, pad_id: int) -> Iterator[Any]:


    tok = _tokenizer_from(tokenizer_json)

    def table(texts: list[str], start: int, stop: int, codes: np.ndarray, label_ids: np.ndarray, offset: int):
        ids, lengths = encode(tok, texts, max_len=max_len, pad_id=pad_id)
        return pa.table({
            "input_ids": tokens_array(ids, max_len),
            "label": pa.array(label_ids[start:stop], pa.int64()),
            "id": pa.array(np.arange(offset + start, offset + stop, dtype=np.int64)),
            "num_tokens": pa.array(lengths, pa.int32()),
            "split": pa.array(np.array(SPLITS, dtype=object)[codes[start:stop]], pa.string()),
        })

    for row in _rows(batch):
        files, offset, codes, label_ids = _unit_plan(row)
        texts: list[str] = []
        start = k = 0
        for rec in _good_records(fs, files, fmt, fields, known):
            if isinstance(rec, Bad):
                continue
            k += 1
            if k > codes.size:
                break
            texts.append(rec[0])
            if len(texts) >= ENCODE_CHUNK:
                yield table(texts, start, k, codes, label_ids, offset)
                texts, start = [], k
        if k != codes.size:
            raise RuntimeError(f"{files[0][0]}: the input changed while preparing ({codes.size} good records when "
                               "scanned, a different number now); run prepare again")
        if texts:
            yield table(texts, start, k, codes, label_ids, offset)


# ---------------------------------------------------------------------------------------------
# The pipeline


def prepare(o: PrepareOptions, *, log: Callable[[str], None] = print, verbose: bool = False,
            start_ray: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``raydeep data prepare``; returns the data set summary (also written as ``_raydeep_prepare.json``).

    Everything that can fail without Ray (flags, paths, the tokenizer file, the output
    location) fails first; then ``start_ray()`` (the CLI's connect) runs, if given. Without
    it, Ray Data uses the connected cluster or starts a local one.
    """
    check_options(o)
    t0 = time.time()
    fields = FieldNames(o.text_field, o.label_field)
    src = locate(o.input, o.storage, key="--input")
    out = locate(o.output, o.storage, key="--output")
    with s3_errors(o.input, key="--input", storage=o.storage):
        inputs = list_inputs(src, o.format)
    with s3_errors(o.output, key="--output", storage=o.storage):
        _check_output(out, overwrite=o.overwrite)
    loaded = _load_tokenizer_file(o) if o.tokenizer else None
    known = set(o.labels) if o.labels is not None else None

    if start_ray is not None:
        start_ray()
    import ray.data  # deferred: heavy; options, inputs and output are checked above without it

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    if not verbose:  # Ray Data says once, at WARNING, that the bars are off: not news to the user

        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    units = _units(inputs, o.format, o.files_per_task)
    log(f"scanning {len(inputs):,} file(s) in {len(units):,} task(s): {o.input}")
    common = dict(fs=src.fs, fmt=o.format, fields=fields, known=known)
    items = [{"unit": i, "files": json.dumps(u)} for i, u in enumerate(units)]
    scanned = (ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
               .map_batches(_scan, batch_size=1, fn_kwargs={**common, "on_bad": o.on_bad_record})
               .take_all())
    scanned.sort(key=lambda r: r["unit"])
    plan = _plan(o, scanned, log)

    items = [{"unit": i, "files": json.dumps(u), "offset": int(off), "codes": c.tobytes(), "label_ids": y.tobytes()}
             for i, (u, off, c, y) in enumerate(zip(units, plan["offsets"], plan["codes"], plan["label_ids"]))]
    units_ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
    if loaded is not None:
        tok_bytes, tok, source = loaded
    else:
        n_train = int(plan["split_rows"]["train"])
        log(f"training a {o.train_tokenizer} tokenizer (vocab {o.vocab_size:,}) on the {n_train:,} training records")
        texts = units_ds.map_batches(_training_texts, batch_size=1, fn_kwargs=common)

        def stream() -> Iterator[str]:
            for b in texts.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                yield from (str(t) for t in b["text"])


        tok = train_tokenizer(o.train_tokenizer, stream(), vocab_size=o.vocab_size, length=n_train)
        tok_bytes, source = tok.to_str().encode(), f"trained {o.train_tokenizer} on the training split"

    where = o.tokenizer or "the trained tokenizer"
    pad_id = pad_id_of(tok, where=where)
    tok = plain(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    tokenizer_info = {"file": f"../{TOKENIZER_FILE}", "sha256": sha256(tok_bytes), "vocab_size": vocab,
                      "pad_id": pad_id, "source": source}

    tmp = posixpath.join(posixpath.dirname(out.path), f".{posixpath.basename(out.path)}.tmp-{uuid.uuid4().hex[:10]}")
    parts = posixpath.join(tmp, "_parts")
    log(f"tokenizing (max length {o.max_len}) and writing {plan['total']:,} rows to {out.show(tmp)}")
    try:
        with s3_errors(o.output, key="--output", storage=o.storage):
            encoded = units_ds.map_batches(_encode, batch_size=1, fn_kwargs={
                **common, "tokenizer_json": tok_bytes.decode(), "max_len": o.max_len, "pad_id": pad_id})
            if o.shuffle:
                encoded = encoded.random_shuffle(seed=o.seed)
            encoded.write_parquet(parts, filesystem=out.arrow, partition_cols=["split"],
                                  min_rows_per_file=o.shard_rows, max_rows_per_file=o.shard_rows)
            feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=o.max_len, vocab_size=vocab,
                                  pad_id=pad_id)
            summary = {
                "format": "raydeep-prepare/1",
                "name": posixpath.basename(out.path),
                "input": o.input,
                "options": {k: v for k, v in asdict(o).items() if k not in ("storage", "input", "output")},
                "label_names": plan["names"],
                "num_classes": len(plan["names"]),
                "skipped": plan["skipped"],
                "first_skipped": plan["first_bad"] or None,
                "tokenizer": {**tokenizer_info, "file": TOKENIZER_FILE},
                "max_len": o.max_len,
                "splits": {},
            }
            manifests = {}
            for split in SPLITS:
                if plan["split_rows"][split] == 0:
                    continue
                manifests[split] = _split_manifest(out, parts, split, summary, feature, tokenizer_info, plan)
                summary["splits"][split] = {k: manifests[split][1][k] for k in
                                            ("num_rows", "label_histogram", "truncated")} | {
                    "shards": len(manifests[split][1]["shards"])}
            summary["seconds"] = round(time.time() - t0, 1)
            _commit(out, tmp, parts, manifests, tok_bytes, summary, overwrite=o.overwrite)
    except BaseException:
        _remove_quietly(out, tmp)
        raise
    for split, info in summary["splits"].items():
        log(f"  {split}: {info['num_rows']:,} rows in {info['shards']} shard(s), {info['truncated']:,} truncated; "
            f"labels {dict(zip(plan['names'], info['label_histogram']))}")
    log(f"wrote {o.output} in {summary['seconds']:.1f} s (vocab {vocab:,}, pad id {pad_id}, "
        f"{plan['skipped']:,} bad record(s) skipped)")
    return summary


def _units(inputs: list[tuple[str, str | None]], fmt: str, per_task: int) -> list[list]:
    if fmt != "text-dirs":
        return [[list(x)] for x in inputs]
    return [[list(x) for x in inputs[i:i + per_task]] for i in range(0, len(inputs), per_task)]


def _plan(o: PrepareOptions, scanned: list[dict], log: Callable[[str], None]) -> dict[str, Any]:
    """Driver side of the scan: raise the first error, map labels, assign splits."""
    for r in scanned:
        if r["fatal"]:
            raise DataError(str(r["fatal"]))
    skipped = int(sum(r["skipped"] for r in scanned))
    first_bad = next((str(r["first_bad"]) for r in scanned if r["first_bad"]), "")
    if first_bad and o.on_bad_record == "error":
        raise DataError(f"{first_bad} (--on-bad-record skip drops bad records and counts them)")
    counts = np.array([int(r["count"]) for r in scanned], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        if skipped:
            raise DataError(f"--input {o.input}: all {skipped:,} records are bad (first: {first_bad})")
        raise DataError(f"--input {o.input}: no records (empty input)")
    values: list[int | str] = []
    for r in scanned:
        values += json.loads(r["labels"])
    names = label_names(values, o.labels)
    if len(names) < 2:
        raise DataError(f"--input {o.input}: every record has label {names[0]!r}; classification needs at least "
                        "2 labels (check --label-field)")
    index = {n: i for i, n in enumerate(names)}
    ids = np.fromiter((index[str(v)] for v in values), dtype=np.int64, count=total)
    codes = assign_splits(ids, len(names), o.val_fraction, o.test_fraction, o.seed)
    split_rows = {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)}
    for s, frac in (("val", o.val_fraction), ("test", o.test_fraction)):
        if frac > 0 and split_rows[s] == 0:
            raise DataError(f"--{s}-fraction {frac}: rounds to 0 records in every class ({total:,} records, "
                            f"{len(names)} labels); raise it or add data")
    if skipped:
        log(f"skipped {skipped:,} bad record(s); first: {first_bad}")
    log(f"{total:,} records, {len(names)} labels; split {split_rows['train']:,} train / {split_rows['val']:,} val"
        f" / {split_rows['test']:,} test (stratified, seed {o.seed})")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {
        "names": names, "total": total, "skipped": skipped, "first_bad": first_bad, "split_rows": split_rows,
        "offsets": bounds[:-1],
        "codes": [codes[bounds[i]:bounds[i + 1]] for i in range(len(counts))],
        "label_ids": [ids[bounds[i]:bounds[i + 1]] for i in range(len(counts))],
    }


def _load_tokenizer_file(o: PrepareOptions) -> tuple[bytes, Any, str]:

    loc = locate(o.tokenizer, o.storage, key="--tokenizer")
    with s3_errors(o.tokenizer, key="--tokenizer", storage=o.storage):
        if not loc.fs.isfile(loc.path):
            raise DataError(f"--tokenizer {o.tokenizer}: no such file (expected a Hugging Face tokenizer.json)")
        data = loc.fs.cat_file(loc.path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise DataError(f"--tokenizer {o.tokenizer}: not a Hugging Face tokenizer.json (not UTF-8 text)") from None
    return data, load_tokenizer(text, where=f"--tokenizer {o.tokenizer}"), f"loaded from {o.tokenizer}"


def _check_output(out: Location, *, overwrite: bool) -> None:
    if out.s3:
        check_bucket(out.fs, out.uri)
        try:
            exists = bool(out.fs.ls(out.path))
        except FileNotFoundError:
            exists = False
    else:
        exists = os.path.lexists(out.path)
    if exists and not overwrite:
        raise DataError(f"--output {out.uri}: already exists; choose a new path or pass --overwrite")


def _split_manifest(out: Location, parts: str, split: str, summary: dict, feature: FeatureSpec,
                    tokenizer_info: dict, plan: dict) -> tuple[list[tuple[str, str]], dict]:
    """(``[(written part, final shard name)]``, the split's manifest) from the written parts' columns."""

    part_dir = posixpath.join(parts, f"split={split}")
    written = sorted(p for p in out.fs.ls(part_dir, detail=False) if p.endswith(".parquet"))
    k = len(plan["names"])
    hist = np.zeros(k, dtype=np.int64)
    truncated = 0
    shards = []
    moves = []
    for i, path in enumerate(written):
        with out.fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read(columns=["label", "num_tokens"])
        hist += np.bincount(table.column("label").to_numpy(), minlength=k)
        truncated += int((table.column("num_tokens").to_numpy() > summary["max_len"]).sum())
        shards.append({"file": shard_name(i), "rows": table.num_rows})
        moves.append((path, shard_name(i)))
    manifest = {
        "format": FORMAT,
        "name": summary["name"],
        "split": split,
        "task": "text_classification",
        "feature": feature.to_dict(),
        "num_classes": k,
        "label_names": plan["names"],
        "num_rows": int(hist.sum()),
        "shards": shards,
        "label_histogram": hist.tolist(),
        "tokenizer": tokenizer_info,
        "max_len": summary["max_len"],
        "truncated": truncated,
        "columns": {"input_ids": f"token ids, padded with {feature.pad_id} or truncated to max_len",
                    "label": "label id (see label_names)", "id": "record number, unique across splits",
                    "num_tokens": "token count before truncation"},
        "prepare": {"input": summary["input"], "seed": summary["options"]["seed"],
                    "skipped": summary["skipped"], "val_fraction": summary["options"]["val_fraction"],
                    "test_fraction": summary["options"]["test_fraction"]},
        "generator": {},
    }
    return moves, manifest


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def _commit(out: Location, tmp: str, parts: str, manifests: dict, tok_bytes: bytes, summary: dict, *,
            overwrite: bool) -> None:
    fs = out.fs
    if not out.s3:
        # Finish everything inside the hidden temp directory, then one rename publishes it.
        for split, (moves, manifest) in manifests.items():
            d = posixpath.join(tmp, split)
            fs.makedirs(d, exist_ok=True)
            for src, name in moves:
                os.rename(src, posixpath.join(d, name))
            fs.pipe_file(posixpath.join(d, MANIFEST_NAME), _json_bytes(manifest))
        fs.pipe_file(posixpath.join(tmp, TOKENIZER_FILE), tok_bytes)
        fs.pipe_file(posixpath.join(tmp, PREPARED_NAME), _json_bytes(summary))
        fs.rm(parts, recursive=True)
        old = None
        if overwrite and os.path.lexists(out.path):
            old = f"{tmp}.old"
            os.rename(out.path, old)
        try:
            os.rename(tmp, out.path)
        except OSError as exc:
            raise DataError(f"--output {out.uri}: cannot move the finished data set into place ({exc.strerror}); "
                            f"it is in {tmp}") from None
        if old:
            fs.rm(old, recursive=True)
        return
    # S3 has no rename: mark each split incomplete, copy its shards, write its manifest, unmark.
    if overwrite:
        try:
            fs.rm(out.path, recursive=True)
        except FileNotFoundError:
            pass
    for split, (moves, manifest) in manifests.items():
        d = out.join(split)
        fs.pipe_file(posixpath.join(d, INCOMPLETE_NAME), b"raydeep data prepare is writing this split\n")
        for src, name in moves:
            fs.copy(src, posixpath.join(d, name))
        fs.pipe_file(posixpath.join(d, MANIFEST_NAME), _json_bytes(manifest))
        fs.rm_file(posixpath.join(d, INCOMPLETE_NAME))
    fs.pipe_file(out.join(TOKENIZER_FILE), tok_bytes)
    fs.pipe_file(out.join(PREPARED_NAME), _json_bytes(summary))  # last: the data set is complete
    _remove_quietly(out, tmp)


def _remove_quietly(out: Location, tmp: str) -> None:
    try:
        if out.fs.exists(tmp):
            out.fs.rm(tmp, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the error that got us here
        pass
