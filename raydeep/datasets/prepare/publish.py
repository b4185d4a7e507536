"""Publishing a prepared data set: the output must be free, and an interrupted prepare must leave
nothing that reads as complete.

Output is built in a hidden ``.NAME.tmp-*`` sibling. Locally the finished directory is renamed
into place (atomic). On S3, which cannot rename, each split gets a ``_raydeep.incomplete``
marker before its shards are copied in and loses it after its manifest is written;
``open_split`` refuses a split that still has one.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from raydeep.datasets.manifest import INCOMPLETE_NAME, MANIFEST_NAME, PREPARED_NAME
from raydeep.datasets.prepare.inputs import Location
from raydeep.datasets.prepare.tokenizer import TOKENIZER_FILE
from raydeep.datasets.storage import check_bucket
from raydeep.errors import DataError


def check_output(out: Location, *, overwrite: bool) -> None:
    """Refuse an existing ``--output`` unless ``--overwrite`` (S3: a missing bucket says so first)."""
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


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def commit(out: Location, tmp: str, parts: str, manifests: dict, tok_bytes: bytes, summary: dict, *,
           overwrite: bool) -> None:
    """Move each split's written parts to their shard names beside its manifest, add the tokenizer
    and the summary, and publish (see module doc). ``manifests``: split -> (moves, manifest)."""
    fs = out.fs
    if not out.s3:
        # Finish everything inside the hidden temp directory, then one rename publishes it.
        for split, (moves, manifest) in manifests.items():
            d = posixpath.join(tmp, split)
            fs.makedirs(d, exist_ok=True)
            for src, name in moves:
                os.rename(src, posixpath.join(d, name))
            fs.pipe_file(posixpath.join(d, MANIFEST_NAME), json_bytes(manifest))
        fs.pipe_file(posixpath.join(tmp, TOKENIZER_FILE), tok_bytes)
        fs.pipe_file(posixpath.join(tmp, PREPARED_NAME), json_bytes(summary))
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
        fs.pipe_file(posixpath.join(d, MANIFEST_NAME), json_bytes(manifest))
        fs.rm_file(posixpath.join(d, INCOMPLETE_NAME))
    fs.pipe_file(out.join(TOKENIZER_FILE), tok_bytes)
    fs.pipe_file(out.join(PREPARED_NAME), json_bytes(summary))  # last: the data set is complete
    remove_quietly(out, tmp)


def remove_quietly(out: Location, tmp: str) -> None:
    try:
        if out.fs.exists(tmp):
            out.fs.rm(tmp, recursive=True)
    except Exception:  # noqa: BLE001 - cleanup must not hide the error that got us here
        pass
