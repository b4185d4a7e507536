"""Raw input records for ``raydeep data prepare``: jsonl, csv, parquet and text-dirs -> (text, label).

Without a label field (``FieldNames.label`` None: the causal-LM task) a record is ``(text, None)``
and no label column, key or directory is looked for.

A record that cannot be used is yielded as a ``Bad`` naming the file and the line (jsonl,
csv), the row group and row (parquet) or the file (text-dirs), so that
``--on-bad-record error`` can stop with one line and ``--on-bad-record skip`` can count what
it dropped. A problem with the whole file (no such column in the header, not parquet at all,
not UTF-8 csv) raises ``DataError``: skipping cannot fix it.

Reading is deterministic, so two passes over the same files number the good records
identically (the prepare pipeline relies on it to give every record a stable id and split).
Files are opened through an fsspec filesystem (local or s3fs) and read as streams, never whole.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raydeep.errors import DataError

FORMATS = ("jsonl", "csv", "parquet", "text-dirs")
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Bad:
    """One unusable record (or ``rows`` of them: an unreadable parquet row group)."""

    path: str
    where: str  # "line 7", "row group 2, row 5", "" for a whole text-dirs file
    why: str
    rows: int = 1

    def __str__(self) -> str:
        return f"{self.path}: {self.where}: {self.why}" if self.where else f"{self.path}: {self.why}"


@dataclass(frozen=True)
class FieldNames:
    """The text and label field names; ``label`` None reads no label (unlabelled documents)."""

    text: str = "text"
    label: str | None = "label"

    def wanted(self) -> list[tuple[str, str]]:
        """``[(field, flag that sets it)]`` for the fields a record must have."""
        out = [(self.text, "--text-field")]
        return out + [(self.label, "--label-field")] if self.label is not None else out


Record = tuple[str, int | str | None]  # (text, label); label None without a label field


def normalize_label(value: Any, *, from_text: bool) -> int | str:
    """A label as an int or a non-empty string; ValueError says why not.

    Integral floats (3.0) become ints: JSON writers and pandas produce them. In text formats
    (csv, directory names) a string of digits is an int, since the format has no types.
    """
    if value is None:
        raise ValueError("no label (null)")
    if isinstance(value, bool):
        raise ValueError(f"label {value!r} is a boolean; expected an integer or a string")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        raise ValueError(f"label {value!r} is not an integer or a string")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty label")
        if from_text and _INT.fullmatch(text):
            return int(text)
        return text
    raise ValueError(f"label {value!r} is a {type(value).__name__}; expected an integer or a string")


def _check_text(value: Any) -> str:
    if value is None:
        raise ValueError("no text (null)")
    if not isinstance(value, str):
        raise ValueError(f"text is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise ValueError("empty text")
    return value


def read_records(fs: Any, path: str, fmt: str, fields: FieldNames = FieldNames(),
                 dir_label: str | None = None) -> Iterator[Record | Bad]:
    """Yield ``(text, label)`` for each usable record of one file, ``Bad`` for each unusable one."""
    if fmt == "jsonl":
        yield from _jsonl(fs, path, fields)
    elif fmt == "csv":
        yield from _csv(fs, path, fields)
    elif fmt == "parquet":
        yield from _parquet(fs, path, fields)
    elif fmt == "text-dirs":
        yield from _text_file(fs, path, dir_label if fields.label is not None else None, fields)
    else:
        raise DataError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def good_records(fs: Any, files: list, fmt: str, fields: FieldNames, known: set[str] | None
                 ) -> Iterator[Record | Bad]:
    """The records of a work unit's ``[(path, directory label)]`` files in order, with a label
    outside ``known`` (``--labels``) made a ``Bad`` too."""
    for path, dir_label in files:
        for rec in read_records(fs, path, fmt, fields, dir_label):
            if not isinstance(rec, Bad) and known is not None and str(rec[1]) not in known:
                rec = Bad(path, "", f"label {rec[1]!r} is not one of --labels ({', '.join(sorted(known))})")
            yield rec


def _jsonl(fs: Any, path: str, fields: FieldNames) -> Iterator[Record | Bad]:
    with fs.open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"line {n}"
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield Bad(path, where, f"not UTF-8 (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Bad(path, where, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                yield Bad(path, where, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield _pick(obj, path, where, fields, from_text=False)


def _pick(row: dict, path: str, where: str, fields: FieldNames, *, from_text: bool) -> Record | Bad:
    for name, flag in fields.wanted():
        if name not in row:
            keys = ", ".join(map(str, list(row)[:8])) or "none"
            return Bad(path, where, f"no {name!r} field (fields: {keys}); set {flag}")
    try:
        text = _check_text(row[fields.text])
        label = None if fields.label is None else normalize_label(row[fields.label], from_text=from_text)
    except ValueError as exc:
        return Bad(path, where, str(exc))
    return text, label


def _csv(fs: Any, path: str, fields: FieldNames) -> Iterator[Record | Bad]:
    with fs.open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader, None)
            if header is None:
                return  # an empty file has no records; the caller reports an empty input
            for name, flag in fields.wanted():
                if name not in header:
                    raise DataError(f"{path}: no column {name!r} in the csv header (columns: "
                                    f"{', '.join(header[:12])}); set {flag}")
            picks = [(name, header.index(name)) for name, _ in fields.wanted()]
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield Bad(path, f"line {reader.line_num}", f"malformed csv ({exc})")
                    continue
                if not row:
                    continue
                if len(row) != len(header):
                    yield Bad(path, f"line {reader.line_num}", f"expected {len(header)} fields, got {len(row)}")
                    continue
                yield _pick({name: row[i] for name, i in picks}, path, f"line {reader.line_num}",
                            fields, from_text=True)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: near line {reader.line_num + 1}: not UTF-8 (byte {exc.start} of a read "
                            "chunk); re-encode the file as UTF-8") from None


def _parquet(fs: Any, path: str, fields: FieldNames) -> Iterator[Record | Bad]:
    with fs.open(path, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
        schema = pf.schema_arrow
        _check_parquet_columns(path, schema, fields)
        names = [name for name, _ in fields.wanted()]
        for g in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(g, columns=names)
            except (pa.ArrowException, OSError) as exc:
                yield Bad(path, f"row group {g}", f"unreadable ({_first_line(exc)})",
                          rows=pf.metadata.row_group(g).num_rows)
                continue
            columns = [table.column(n).to_pylist() for n in names]
            for r, values in enumerate(zip(*columns)):
                yield _pick(dict(zip(names, values)), path, f"row group {g}, row {r}", fields, from_text=False)


def _check_parquet_columns(path: str, schema: pa.Schema, fields: FieldNames) -> None:
    """The fields exist with usable types: a whole-file problem, so DataError (skipping cannot fix it)."""
    for name, flag in fields.wanted():
        if name not in schema.names:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(schema.names[:12])}); set {flag}")
    text_type = schema.field(fields.text).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
        raise DataError(f"{path}: column {fields.text!r} is {text_type}, expected a string column")
    if fields.label is None:
        return
    label_type = schema.field(fields.label).type
    if not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)
            or pa.types.is_string(label_type) or pa.types.is_large_string(label_type)):
        raise DataError(f"{path}: column {fields.label!r} is {label_type}, expected integer or string labels")


def _text_file(fs: Any, path: str, dir_label: str | None, fields: FieldNames) -> Iterator[Record | Bad]:
    """One text file is one record: labelled by its directory, or a document (no label field)."""
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        text = codecs.decode(data, "utf-8-sig")
    except UnicodeDecodeError as exc:
        yield Bad(path, "", f"not UTF-8 text (byte {exc.start})")
        return
    try:
        label = None if fields.label is None else normalize_label(dir_label, from_text=True)
        yield _check_text(text), label
    except ValueError as exc:
        yield Bad(path, "", str(exc))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
