"""Where ``raydeep data prepare`` reads and writes: local paths and S3 prefixes behind one fsspec
interface (``Location``), and ``--input`` resolved to the sorted list of files to parse."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs as pafs

from raydeep.datasets.storage import StorageConfig, arrow_filesystem, is_s3, s3_filesystem, strip_s3
from raydeep.errors import DataError

_EXTENSIONS = {"jsonl": (".jsonl", ".json", ".ndjson"), "csv": (".csv",), "parquet": (".parquet",)}


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
    """``uri`` (a local path, ``file://`` or ``s3://``) as a Location; DataError naming ``key`` otherwise."""
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


def list_inputs(loc: Location, fmt: str, *, labelled: bool = True) -> list[tuple[str, str | None]]:
    """``--input`` -> ``[(file path, label from its directory or None)]``, sorted.

    ``labelled`` False (unlabelled documents, ``--task lm``): text-dirs means every ``*.txt``
    under the directory, at any depth, and no directory names a label.
    """
    if fmt == "text-dirs":
        return _label_dirs(loc) if labelled else _text_tree(loc)
    fs, path, shown = loc.fs, loc.path, loc.uri
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


def _need_dir(loc: Location, expected: str) -> None:
    if not loc.fs.isdir(loc.path):
        what = "does not exist" if not loc.fs.exists(loc.path) else "is a file"
        raise DataError(f"--input {loc.uri}: {what}; --format text-dirs takes {expected}")


def _label_dirs(loc: Location) -> list[tuple[str, str | None]]:
    """``DIR/LABEL/*``: every visible file of each label subdirectory, labelled by it."""
    fs, path, shown = loc.fs, loc.path, loc.uri
    _need_dir(loc, "a directory with one subdirectory of text files per label")
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
        names = ", ".join(s.rsplit("/", 1)[-1] for s in subdirs[:5])
        raise DataError(f"--input {shown}: its label directories ({names}{', ...' if len(subdirs) > 5 else ''}) "
                        "hold no files (empty input)")
    return files


def _text_tree(loc: Location) -> list[tuple[str, str | None]]:
    """Every ``*.txt`` under the directory, recursively, sorted; hidden and ``_`` names (files or
    directories on the way) are skipped, as writers' side files are."""
    _need_dir(loc, "a directory of *.txt files (searched recursively) with --task lm")
    root = loc.path.rstrip("/")
    found = sorted(p for p in loc.fs.find(root)
                   if p.lower().endswith(".txt") and all(_visible(part) for part in p[len(root):].split("/") if part))
    if not found:
        raise DataError(f"--input {loc.uri}: no *.txt files under this directory (searched recursively)")
    return [(loc.show(p) if loc.s3 else p, None) for p in found]
