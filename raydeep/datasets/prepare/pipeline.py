"""``raydeep data prepare``: raw jsonl / csv / parquet / text-dirs -> tokenized, sharded parquet splits.

Two tasks: ``--task classification`` (the default: labelled records, each padded or truncated
to ``--max-len``) and ``--task lm`` (unlabelled documents packed into blocks of ``--block-size``
tokens, ``lm.py``). Three streaming passes through Ray Data, each over the input files (never the
whole data set in one place):

1. scan: parse every record, count the good ones per file, collect their labels (only the
   labels come back to the driver) and the bad ones (``--on-bad-record error|skip``);
2. on the driver: map labels to ids, assign every record to train/val/test (classification:
   stratified per class; lm: by whole document), seeded, then train the tokenizer on the
   training records only, streamed back from a second parse (or load ``--tokenizer``);
3. encode: parse again, tokenize, pad/truncate to ``--max-len`` (or pack blocks), optionally
   shuffle rows, and write parquet partitioned by split.

Records are numbered by (file order, position among the file's good records), which both
parses agree on, so a record's ``id`` and split are fixed by the input and ``--seed`` alone.
An interrupted prepare leaves nothing that reads as a complete data set (``publish.py``).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raydeep.datasets.manifest import FORMAT
from raydeep.datasets.prepare import classification, lm
from raydeep.datasets.prepare.inputs import Location, list_inputs, locate
from raydeep.datasets.prepare.publish import check_output as _check_output
from raydeep.datasets.prepare.publish import commit as _commit
from raydeep.datasets.prepare.publish import remove_quietly as _remove_quietly
from raydeep.datasets.prepare.raw_records import FORMATS, Bad, FieldNames, good_records
from raydeep.datasets.prepare.tokenizer import (
    KINDS,
    TOKENIZER_FILE,
    LoadedTokenizer,
    eos_id_of,
    load_tokenizer_path,
    pad_id_of,
    plain,
    sha256,
    train_tokenizer,
)
from raydeep.datasets.prepare.units import ENCODE_CHUNK, SPLITS, make_units, rows, unit_items, unit_plan
from raydeep.datasets.prepare.writing import write_parts
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.storage import StorageConfig, s3_error, s3_errors
from raydeep.errors import DataError
from raydeep.progress_bar import Meter, size_text

__all__ = ["Location", "PrepareOptions", "assign_splits", "check_options", "label_names", "list_inputs", "locate",
           "prepare"]

TASKS = ("classification", "lm")
DEFAULT_LABEL_FIELD = "label"
DEFAULT_MAX_LEN = 128


@dataclass
class PrepareOptions:
    """Everything ``raydeep data prepare`` takes; field names follow the flags. ``None`` means the
    flag was not given, so that a flag the task does not use can be refused."""

    input: str
    format: str
    output: str
    task: str = "classification"  # or "lm": unlabelled documents packed into --block-size blocks
    text_field: str = "text"
    label_field: str | None = None  # classification; default "label"
    tokenizer: str | None = None  # a tokenizer.json or a Hugging Face model directory to load
    train_tokenizer: str | None = None  # or "bpe" / "wordpiece" to train one on the training split
    vocab_size: int = 8000
    max_len: int | None = None  # classification; default 128
    block_size: int | None = None  # lm: tokens per packed block (required)
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

    @property
    def lm(self) -> bool:
        return self.task == "lm"

    @property
    def fields(self) -> FieldNames:
        return FieldNames(self.text_field, None if self.lm else self.label_field or DEFAULT_LABEL_FIELD)


def check_options(o: PrepareOptions) -> None:
    """Every bad flag value, before anything is read; DataError naming the flag."""
    if o.task not in TASKS:
        raise DataError(f"--task {o.task!r}: expected one of {', '.join(TASKS)}")
    if o.format not in FORMATS:
        raise DataError(f"--format {o.format!r}: expected one of {', '.join(FORMATS)}")
    if (o.tokenizer is None) == (o.train_tokenizer is None):
        raise DataError("give exactly one of --tokenizer PATH (a tokenizer.json or a model directory) or "
                        f"--train-tokenizer {'|'.join(KINDS)}")
    if o.train_tokenizer is not None and o.train_tokenizer not in KINDS:
        raise DataError(f"--train-tokenizer {o.train_tokenizer!r}: expected one of {', '.join(KINDS)}")
    _check_task_options(o)
    for flag, v, least in (("--vocab-size", o.vocab_size, 2), ("--max-len", o.max_len, 1),
                           ("--block-size", o.block_size, 2), ("--shard-rows", o.shard_rows, 1)):
        if v is not None and v < least:
            raise DataError(f"{flag} {v}: must be >= {least}")
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


def _check_task_options(o: PrepareOptions) -> None:
    """The flags one task takes and the other refuses (a flag that would be ignored is an error)."""
    if not o.lm:
        if o.block_size is not None:
            raise DataError(f"--block-size {o.block_size}: only for --task lm; classification pads or truncates "
                            "every record to --max-len")
        return
    if o.block_size is None:
        raise DataError("--task lm needs --block-size N: the tokens in every packed training block")
    for flag, value in (("--labels", o.labels and ",".join(o.labels)), ("--label-field", o.label_field),
                        ("--max-len", o.max_len)):
        if value is not None:
            raise DataError(f"{flag} {value}: not used by --task lm, which reads no labels and packs each record's "
                            "--text-field into blocks of --block-size tokens; drop it")


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
    training record per class when the class has any. One class: a plain seeded split."""
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


def _task_error(exc: BaseException, files: list) -> str:
    path = files[0][0] if files else "?"
    err = s3_error(exc, path, key="") if not isinstance(exc, DataError) else exc
    if err is not None:
        return str(err)
    lines = str(exc).strip().splitlines()
    return f"{path}: {type(exc).__name__}: {lines[0] if lines else ''}"


def _input_bytes(fs: Any, files: list, fmt: str) -> int:
    """The unit's input size for the progress line; -1 when not worth a request per file (text-dirs
    on S3: one small object per record, so a size query would double the scan's requests)."""
    if fmt == "text-dirs" and "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return -1
    try:
        return int(sum(fs.size(path) for path, _ in files))
    except Exception:  # noqa: BLE001 - only the progress line needs it; reading the file reports the problem
        return -1


def _scan(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, on_bad: str, known: set[str] | None) -> dict:
    out: dict[str, list] = {"unit": [], "count": [], "labels": [], "skipped": [], "first_bad": [], "fatal": [],
                            "bytes": [], "files": []}
    for unit, spec in zip(batch["unit"], batch["files"]):
        files = json.loads(spec)
        labels: list[int | str] = []
        count, skipped, first_bad, fatal = 0, 0, "", ""
        try:
            for rec in good_records(fs, files, fmt, fields, known):
                if isinstance(rec, Bad):
                    skipped += rec.rows
                    first_bad = first_bad or str(rec)
                    if on_bad == "error":
                        raise _Stop
                    continue
                count += 1
                if fields.label is not None:  # unlabelled documents send back only their count
                    labels.append(rec[1])
        except _Stop:
            pass
        except Exception as exc:  # noqa: BLE001 - returned as data: the driver raises one line
            fatal = _task_error(exc, files)
        out["unit"].append(int(unit))
        out["count"].append(count)
        out["labels"].append(json.dumps(labels))
        out["skipped"].append(skipped)
        out["first_bad"].append(first_bad)
        out["fatal"].append(fatal)
        out["bytes"].append(_input_bytes(fs, files, fmt))
        out["files"].append(len(files))
    return {k: np.array(v, dtype=object if k in ("labels", "first_bad", "fatal") else np.int64) for k, v in out.items()}


def _training_texts(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, known: set[str] | None
                    ) -> Iterator[dict]:
    for row in rows(batch):
        files, _, codes, _ = unit_plan(row)
        texts, k = [], 0
        for rec in good_records(fs, files, fmt, fields, known):
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


# ---------------------------------------------------------------------------------------------
# The pipeline


def prepare(o: PrepareOptions, *, log: Callable[[str], None] = print, verbose: bool = False,
            start_ray: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``raydeep data prepare``; returns the data set summary (also written as ``_raydeep_prepare.json``).

    Everything that can fail without Ray (flags, paths, the tokenizer and its special tokens, the
    output location) fails first; then ``start_ray()`` (the CLI's connect) runs, if given.
    Without it, Ray Data uses the connected cluster or starts a local one.
    """
    check_options(o)
    t0 = time.time()
    src, out, inputs, loaded = _check_before_ray(o)
    if start_ray is not None:
        start_ray()
    import ray.data  # deferred: heavy; options, inputs and output are checked above without it

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    if not verbose:  # Ray Data says once, at WARNING, that the bars are off: not news to the user
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    units = make_units(inputs, o.format, o.files_per_task)
    log(f"scanning {len(inputs):,} file(s) in {len(units):,} task(s): {o.input}")
    common = dict(fs=src.fs, fmt=o.format, fields=o.fields, known=set(o.labels) if o.labels is not None else None)
    items = [{"unit": i, "files": json.dumps(u)} for i, u in enumerate(units)]
    scan = (ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
            .map_batches(_scan, batch_size=1, fn_kwargs={**common, "on_bad": o.on_bad_record}))
    scanned = _scanned(scan, len(inputs))
    scanned.sort(key=lambda r: r["unit"])
    plan = _plan_documents(o, scanned, log) if o.lm else _plan(o, scanned, log)
    items = unit_items(units, plan)
    units_ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
    loaded = loaded or _trained_tokenizer(o, units_ds, common, plan, log)

    tmp = posixpath.join(posixpath.dirname(out.path), f".{posixpath.basename(out.path)}.tmp-{uuid.uuid4().hex[:10]}")
    parts = posixpath.join(tmp, "_parts")
    try:
        with s3_errors(o.output, key="--output", storage=o.storage):
            write = _write_blocks if o.lm else _write_rows
            manifests, summary, report = write(o, units_ds, common, plan, loaded, out, parts, log)
            summary["seconds"] = round(time.time() - t0, 1)
            _commit(out, tmp, parts, manifests, loaded.data, summary, overwrite=o.overwrite)
    except BaseException:
        _remove_quietly(out, tmp)
        raise
    for line in report:
        log(line)
    log(f"wrote {o.output} in {summary['seconds']:.1f} s (vocab {summary['tokenizer']['vocab_size']:,}, "
        f"{plan['skipped']:,} bad record(s) skipped)")
    return summary


def _scanned(scan: Any, n_files: int) -> list[dict]:
    """The scan's rows as each task finishes, counted on the driver as they arrive."""
    scanned: list[dict] = []
    files = size = bad = 0
    known = True
    with Meter("scanning", "records") as meter:
        for r in scan.iter_rows():
            scanned.append(r)
            files, bad = files + int(r["files"]), bad + int(r["skipped"])
            known, size = known and int(r["bytes"]) >= 0, size + max(0, int(r["bytes"]))
            meter.extra = ", ".join([f"files {files:,}/{n_files:,}", *([size_text(size)] if known else []),
                                     *([f"{bad:,} bad"] if bad else [])])
            meter.advance(int(r["count"]))
    return scanned


def _check_before_ray(o: PrepareOptions) -> tuple[Location, Location, list, LoadedTokenizer | None]:
    """(input, output, the input files, the loaded --tokenizer or None): every check that needs no Ray."""
    src = locate(o.input, o.storage, key="--input")
    out = locate(o.output, o.storage, key="--output")
    with s3_errors(o.input, key="--input", storage=o.storage):
        inputs = list_inputs(src, o.format, labelled=not o.lm)
    with s3_errors(o.output, key="--output", storage=o.storage):
        _check_output(out, overwrite=o.overwrite)
    if o.tokenizer is None:
        return src, out, inputs, None
    loc = locate(o.tokenizer, o.storage, key="--tokenizer")
    with s3_errors(o.tokenizer, key="--tokenizer", storage=o.storage):
        loaded = load_tokenizer_path(loc.fs, loc.path, o.tokenizer, local=not loc.s3)
    _special_id(o, loaded)  # a tokenizer without the special token the task needs fails now
    return src, out, inputs, loaded


def _special_id(o: PrepareOptions, loaded: LoadedTokenizer) -> int:
    """The id the task needs from the tokenizer: EOS (lm: it ends every document) or padding."""
    where = f"--tokenizer {loaded.path}" if loaded.kind != "trained" else "the trained tokenizer"
    if o.lm:
        return eos_id_of(loaded.tokenizer, where=where, eos_token=loaded.eos_token)
    return pad_id_of(loaded.tokenizer, where=where, pad_token=loaded.pad_token)


def _trained_tokenizer(o: PrepareOptions, units_ds: Any, common: dict, plan: dict,
                       log: Callable[[str], None]) -> LoadedTokenizer:
    """A tokenizer trained on the training split's records, streamed from a second parse."""
    n_train = int(plan["split_rows"]["train"])
    log(f"training a {o.train_tokenizer} tokenizer (vocab {o.vocab_size:,}) on the {n_train:,} training records")
    texts = units_ds.map_batches(_training_texts, batch_size=1, fn_kwargs=common)

    def stream() -> Iterator[str]:
        with Meter("reading the training records", "records", total=n_train) as meter:
            for b in texts.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                meter.advance(len(b["text"]))
                yield from (str(t) for t in b["text"])

    tok = train_tokenizer(o.train_tokenizer, stream(), vocab_size=o.vocab_size, length=n_train, eos=o.lm)
    return LoadedTokenizer(tok, tok.to_str().encode(), "trained", None)


def _tokenizer_info(o: PrepareOptions, loaded: LoadedTokenizer, special: dict[str, int]) -> dict[str, Any]:
    """The manifest's ``tokenizer`` entry (``file`` relative to a split directory)."""
    source = (f"trained {o.train_tokenizer} on the training split" if loaded.kind == "trained"
              else f"loaded from {'model directory ' if loaded.kind == 'model_dir' else ''}{loaded.path}")
    vocab = plain(loaded.tokenizer).get_vocab_size(with_added_tokens=True)
    return {"file": f"../{TOKENIZER_FILE}", "sha256": sha256(loaded.data), "vocab_size": vocab, **special,
            "source": source}


def _summary(o: PrepareOptions, out: Location, plan: dict, tokenizer: dict, loaded: LoadedTokenizer) -> dict:
    """The fields every task's ``_raydeep_prepare.json`` has."""
    return {
        "format": "raydeep-prepare/1",
        "name": posixpath.basename(out.path),
        "input": o.input,
        "options": {k: v for k, v in asdict(o).items() if k not in ("storage", "input", "output")},
        "skipped": plan["skipped"],
        "first_skipped": plan["first_bad"] or None,
        "tokenizer": {**tokenizer, "file": TOKENIZER_FILE},
        "tokenizer_source": loaded.source,
        "splits": {},
    }


def _manifest_base(o: PrepareOptions, summary: dict, tokenizer: dict) -> dict:
    """The fields every split manifest has, whatever the task (``format`` and ``name`` lead it)."""
    return {"format": FORMAT, "name": summary["name"], "tokenizer": tokenizer,
            "tokenizer_source": summary["tokenizer_source"],
            "prepare": {"input": o.input, "seed": o.seed, "skipped": summary["skipped"],
                        "val_fraction": o.val_fraction, "test_fraction": o.test_fraction},
            "generator": {}}


def _write_rows(o: PrepareOptions, units_ds: Any, common: dict, plan: dict, loaded: LoadedTokenizer, out: Location,
                parts: str, log: Callable[[str], None]) -> tuple[dict, dict, list[str]]:
    """Classification: records padded or truncated to ``--max-len``, with labels; (manifests, summary, report)."""
    max_len = o.max_len or DEFAULT_MAX_LEN
    pad_id = _special_id(o, loaded)
    info = _tokenizer_info(o, loaded, {"pad_id": pad_id})
    log(f"tokenizing (max length {max_len}) and writing {plan['total']:,} rows to {out.show(parts)}")
    write_parts(units_ds, classification.encode_rows, {
        **common, "tokenizer_json": loaded.data.decode(), "max_len": max_len, "pad_id": pad_id}, o, out, parts,
        unit="records", total=plan["total"])
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=max_len, vocab_size=info["vocab_size"],
                          pad_id=pad_id)
    summary = _summary(o, out, plan, info, loaded) | {
        "task": classification.TASK, "label_names": plan["names"], "num_classes": len(plan["names"]),
        "max_len": max_len}
    base = _manifest_base(o, summary, info)
    manifests, report = {}, []
    for split in SPLITS:
        if plan["split_rows"][split] == 0:
            continue
        manifests[split] = classification.split_manifest(out, parts, split, base, feature, plan, max_len)
        m = manifests[split][1]
        summary["splits"][split] = {k: m[k] for k in ("num_rows", "label_histogram", "truncated")} | {
            "shards": len(m["shards"])}
        report.append(f"  {split}: {m['num_rows']:,} rows in {len(m['shards'])} shard(s), {m['truncated']:,} "
                      f"truncated; labels {dict(zip(plan['names'], m['label_histogram']))} (pad id {pad_id})")
    return manifests, summary, report


def _write_blocks(o: PrepareOptions, units_ds: Any, common: dict, plan: dict, loaded: LoadedTokenizer,
                  out: Location, parts: str, log: Callable[[str], None]) -> tuple[dict, dict, list[str]]:
    """Causal LM: documents packed into blocks of ``--block-size`` (``lm.py``); (manifests, summary, report)."""
    eos_id = _special_id(o, loaded)
    log(f"tokenizing {plan['total']:,} documents into blocks of {o.block_size} tokens (EOS id {eos_id}) in "
        f"{out.show(parts)}")
    write_parts(units_ds, lm.encode_blocks, _block_kwargs(o, loaded, eos_id, common["fs"]), o, out, parts,
                 unit="blocks", total=None)
    return _finish_blocks(o, plan, loaded, out, parts)


def _block_kwargs(o: PrepareOptions, loaded: LoadedTokenizer, eos_id: int, fs: Any) -> dict[str, Any]:
    """``lm.encode_blocks``'s keyword arguments."""
    return {"fs": fs, "fmt": o.format, "fields": o.fields, "tokenizer_json": loaded.data.decode(),
            "block_size": o.block_size, "eos_id": eos_id}


def _finish_blocks(o: PrepareOptions, plan: dict, loaded: LoadedTokenizer, out: Location,
                   parts: str) -> tuple[dict, dict, list[str]]:
    """Driver side after the blocks are written: the units' tails packed, each split's manifest, the
    summary and the report lines."""
    eos_id, n = _special_id(o, loaded), o.block_size
    info = _tokenizer_info(o, loaded, {"eos_id": eos_id})
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=n, vocab_size=info["vocab_size"],
                          pad_id=lm.NO_PADDING)
    summary = _summary(o, out, plan, info, loaded) | {"task": lm.TASK, "block_size": n, "eos_id": eos_id}
    base = _manifest_base(o, summary, info)
    manifests, report = {}, []
    for split in SPLITS:
        docs = plan["split_rows"][split]
        if docs == 0:
            continue
        dropped = lm.pack_tails(out, parts, split, block_size=n, shard_rows=o.shard_rows,
                                seed=o.seed if o.shuffle else None)
        manifests[split] = lm.split_manifest(out, parts, split, base=base, feature=feature, eos_id=eos_id,
                                             documents=docs, dropped=dropped)
        m = manifests[split][1]
        summary["splits"][split] = {k: m[k] for k in ("num_rows", "documents", "tokens", "dropped_tokens")} | {
            "shards": len(m["shards"])}
        report.append(f"  {split}: {m['num_rows']:,} blocks of {n} tokens in {len(m['shards'])} shard(s) from "
                      f"{docs:,} documents ({m['tokens']:,} tokens, {dropped:,} dropped)")
    for key in ("documents", "tokens", "dropped_tokens"):
        summary[key] = sum(s[key] for s in summary["splits"].values())
    return manifests, summary, report


def _scanned_counts(o: PrepareOptions, scanned: list[dict]) -> tuple[np.ndarray, int, int, str]:
    """(good records per unit, their total, bad records skipped, the first bad one): raises the first
    error, a bad record under ``--on-bad-record error``, or an input with no good record."""
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
    return counts, total, skipped, first_bad


def _per_unit(counts: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
    """The plan's per-unit slices (first record number, split codes, label ids) of the global arrays."""
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {"offsets": bounds[:-1],
            "codes": [codes[bounds[i]:bounds[i + 1]] for i in range(len(counts))],
            "label_ids": [ids[bounds[i]:bounds[i + 1]] for i in range(len(counts))]}


def _plan(o: PrepareOptions, scanned: list[dict], log: Callable[[str], None]) -> dict[str, Any]:
    """Driver side of the scan: raise the first error, map labels, assign splits."""
    counts, total, skipped, first_bad = _scanned_counts(o, scanned)
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
    return {"names": names, "total": total, "skipped": skipped, "first_bad": first_bad, "split_rows": split_rows,
            **_per_unit(counts, codes, ids)}


def _plan_documents(o: PrepareOptions, scanned: list[dict], log: Callable[[str], None]) -> dict[str, Any]:
    """Driver side of the scan for ``--task lm``: whole documents assigned to splits (seeded), before
    any packing, so that no document's tokens straddle two splits."""
    counts, total, skipped, first_bad = _scanned_counts(o, scanned)
    ids = np.zeros(total, dtype=np.int64)  # one "class": a plain seeded split of the documents
    codes = assign_splits(ids, 1, o.val_fraction, o.test_fraction, o.seed)
    split_rows = {s: int((codes == i).sum()) for i, s in enumerate(SPLITS)}
    for s, frac in (("val", o.val_fraction), ("test", o.test_fraction)):
        if frac > 0 and split_rows[s] == 0:
            raise DataError(f"--{s}-fraction {frac}: rounds to 0 of the {total:,} documents; raise it or add data")
    if skipped:
        log(f"skipped {skipped:,} bad record(s); first: {first_bad}")
    log(f"{total:,} documents; split {split_rows['train']:,} train / {split_rows['val']:,} val / "
        f"{split_rows['test']:,} test (by document, seed {o.seed})")
    return {"names": None, "total": total, "skipped": skipped, "first_bad": first_bad, "split_rows": split_rows,
            **_per_unit(counts, codes, ids)}
