"""A run's outputs in ``run.storage``: mirrored there as the run goes, and copied back by ``pull``.

With ``run.storage`` set, Ray Train writes the checkpoints to ``<run.storage>/<storage name>/``
while the driver writes everything else (config.yaml, run.json, metrics.jsonl, summary.json, the
plots, tensorboard/) in the local run dir, which for a Ray Job is the job's temporary working dir
on the head, removed with the Ray session. ``Mirror`` copies those files beside the checkpoints,
so the storage folder is the whole run directory: metrics.jsonl and tensorboard/ whenever
metrics.jsonl changes (once per epoch), everything when the run ends, however it ends, with
summary.json last (its presence still marks a finished run). A sweep's dir goes to its own
storage folder once the sweep has finished (``mirror_once``).

Each file is written whole or not at all: on S3 one object per file (a PUT, or a multipart upload,
appears only once complete); on a filesystem a temporary name renamed over the file. Mirroring
never fails a run: a failed copy is one warning line, and the local run dir is still there.

``pull`` copies any run or sweep folder (``s3://...`` or a path) to a local directory, without the
``checkpoint_*`` folders unless asked: ``raydeep pull`` and ``raydeep jobs fetch``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs
from rich.console import Console

from raydeep.cluster.job_outputs import announce
from raydeep.datasets.storage import StorageConfig, endpoint_url, is_s3, resolve_storage, s3_errors
from raydeep.errors import DataError
from raydeep.trainers.follow import METRICS
from raydeep.trainers.report import SUMMARY  # written last by the driver and by a sweep: copied last
from raydeep.trainers.tracking import TENSORBOARD

RUN_FILE = "run.json"  # driver.RUN_FILE (the driver imports this module)
COPY_CHUNK = 8 << 20


def output_files(folder: Path) -> list[str]:
    """The run dir's files to mirror, as POSIX paths relative to it: all but hidden ones (an
    atomic write's temporary ``.name.tmp``) and ``checkpoint_*`` folders (Ray Train's own)."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "checkpoint_")))
        rel = Path(root).relative_to(folder)
        names += [(rel / f).as_posix() for f in sorted(files) if not f.startswith(".")]
    return sorted(names, key=lambda n: (n == SUMMARY, n))


def _per_epoch(rel: str) -> bool:
    return rel == METRICS or rel.startswith(TENSORBOARD + "/")


class Mirror:
    """Keeps ``dest`` (a folder in ``fs``) a copy of ``run_dir``'s output files.

    ``start`` runs a thread that copies metrics.jsonl and tensorboard/ whenever metrics.jsonl
    changes; ``close`` stops it and copies every file that changed since its last copy (call it
    again after writing more: it copies only what changed)."""

    def __init__(self, run_dir: Path, dest: str, fs: pafs.FileSystem, uri: str, *,
                 console: Console | None = None, interval_s: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.dest = dest.rstrip("/")
        self.fs = fs
        self.uri = uri
        self.console = console or Console(stderr=True)
        self.interval_s = interval_s
        self.copied: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) when copied
        self.warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = fs.type_name == "local"  # a rename is atomic there; on S3 each object is

    def start(self) -> Mirror:
        self._thread = threading.Thread(target=self._follow, name="raydeep-mirror", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sync()

    def sync(self, only: Callable[[str], bool] | None = None) -> int:
        """Copy the files that changed (those ``only`` accepts); returns how many were copied."""
        n = 0
        try:
            for rel in output_files(self.run_dir):
                if only is not None and not only(rel):
                    continue
                src = self.run_dir / rel
                try:
                    st = src.stat()
                except FileNotFoundError:  # replaced or removed between the listing and now
                    continue
                stamp = (st.st_size, st.st_mtime_ns)
                if self.copied.get(rel) == stamp:
                    continue
                self._put(src, f"{self.dest}/{rel}")
                self.copied[rel] = stamp
                n += 1
        except Exception as exc:  # noqa: BLE001 - mirroring never fails the run
            self._warn(exc)
        return n

    def _follow(self) -> None:
        last = None
        while not self._stop.wait(self.interval_s):
            try:
                st = (self.run_dir / METRICS).stat()
            except FileNotFoundError:
                continue
            if (st.st_size, st.st_mtime_ns) != last:
                last = (st.st_size, st.st_mtime_ns)
                self.sync(_per_epoch)

    def _put(self, src: Path, dest: str) -> None:
        parent = dest.rsplit("/", 1)[0]
        target = dest
        if self._local:
            self.fs.create_dir(parent, recursive=True)
            target = f"{parent}/.{dest.rsplit('/', 1)[1]}.mirror-tmp"
        with open(src, "rb") as f, self.fs.open_output_stream(target) as out:
            while chunk := f.read(COPY_CHUNK):
                out.write(chunk)
        if self._local:
            self.fs.move(target, dest)

    def _warn(self, exc: BaseException) -> None:
        if not self.warned:
            self.warned = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.console.print(f"[yellow]could not copy the run's outputs to {self.uri} ({type(exc).__name__}: "
                               f"{first[:300]}); they are in {self.run_dir}", soft_wrap=True)


class NoMirror:
    """A run without run.storage: its run dir is Ray Train's storage folder already."""

    def start(self) -> NoMirror:
        return self

    def close(self) -> None:
        pass


def run_outputs(run_dir: Path, storage: str | None, storage_path: str, storage_fs: pafs.FileSystem | None,
                name: str, storage_cfg: StorageConfig | None = None, *, kind: str = "train",
                console: Console | None = None) -> Mirror | NoMirror:
    """The started mirror of a run dir to ``<storage>/<name>`` (``NoMirror`` without run.storage); a
    Ray Job's driver also prints where the outputs are, for ``raydeep jobs fetch``."""
    uri = f"{storage.rstrip('/')}/{name}" if storage else None
    announce(uri, str(Path(run_dir).resolve()), kind=kind, endpoint_url=endpoint_url(storage_cfg) if is_s3(storage)
             else None, region=storage_cfg.region if storage_cfg is not None and is_s3(storage) else None)
    if not storage:
        return NoMirror()
    fs = storage_fs or pafs.LocalFileSystem()
    return Mirror(run_dir, f"{storage_path.rstrip('/')}/{name}", fs, uri, console=console).start()


def mirror_once(folder: Path, remote: str | None, path: str, fs: pafs.FileSystem | None,
                storage_cfg: StorageConfig | None = None, *, kind: str = "tune",
                console: Console | None = None) -> None:
    """Copy a finished sweep's dir to its storage folder ``path`` (``remote``: its URI; None: the
    sweep has no storage of its own and nothing is copied). A job's driver says where it went."""
    announce(remote, str(Path(folder).resolve()), kind=kind,
             endpoint_url=endpoint_url(storage_cfg) if is_s3(remote) else None,
             region=storage_cfg.region if storage_cfg is not None and is_s3(remote) else None)
    if remote:
        Mirror(folder, path, fs or pafs.LocalFileSystem(), remote, console=console).close()


# ---------------------------------------------------------------------------------------------
# Copying a run back: raydeep pull / raydeep jobs fetch


def pull(source: str, dest: str | os.PathLike, storage: StorageConfig | None = None, *,
         checkpoints: bool = False, key: str = "pull") -> list[str]:
    """Copy the run (or sweep) folder ``source`` (``s3://bucket/prefix/name`` or a path) into ``dest``,
    byte for byte; ``checkpoint_*`` folders only with ``checkpoints``. Returns the files copied
    (relative paths). A key that would land outside ``dest`` (``..``) is refused: a shared bucket's
    contents are not trusted. ``dest`` may exist, but not holding another run."""
    path, fs = resolve_storage(source, storage, key=key)
    fs = fs or pafs.LocalFileSystem()
    dest = Path(dest)
    with s3_errors(source, key=key, storage=storage) if is_s3(source) else contextlib.nullcontext():
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.Directory:
            raise DataError(f"{key}: {source}: {'no such folder' if info.type == pafs.FileType.NotFound else 'not a folder'}"
                            f"{' (nothing under that prefix)' if is_s3(source) else ''}")
        files = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
        wanted = []
        root = dest.resolve()
        base = path.rstrip("/")
        for i in files:
            rel = i.path[len(base):].lstrip("/") if i.path.startswith(base) else i.path
            parts = PurePosixPath(rel).parts
            if not parts:
                continue
            if not checkpoints and any(p.startswith("checkpoint_") for p in parts[:-1]):
                continue
            if ".." in parts or PurePosixPath(rel).is_absolute() or not (root / rel).resolve().is_relative_to(root):
                raise DataError(f"{key}: {source}/{rel}: refused: the key leaves the folder")
            wanted.append(rel)
        if not wanted:
            raise DataError(f"{key}: {source}: the folder holds no files")
        _refuse_another_run(fs, base, dest, source, key)
        for rel in sorted(wanted, key=lambda n: (n == SUMMARY, n)):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, fs.open_input_stream(f"{base}/{rel}") as f:
                    while chunk := f.read(COPY_CHUNK):
                        out.write(chunk)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return sorted(wanted)


def _refuse_another_run(fs: pafs.FileSystem, base: str, dest: Path, source: str, key: str) -> None:
    here = dest / RUN_FILE
    if not here.is_file():
        if dest.is_dir() and any(dest.iterdir()) and not (dest / SUMMARY).exists() and not (dest / "sweep.json").exists():
            raise DataError(f"{key}: {dest}: exists and is not a copy of a run; pick a new directory")
        return
    try:
        with fs.open_input_stream(f"{base}/{RUN_FILE}") as f:
            theirs = f.read()
    except (FileNotFoundError, OSError):
        theirs = b""
    if theirs and theirs != here.read_bytes():
        raise DataError(f"{key}: {dest}: holds another run ({RUN_FILE} differs from {source}'s); pick a new directory")

