"""What bad input and faults get: each one run as a real ``raydeep`` command (issue 19, "Report").

    .venv/bin/python benchmarks/faults.py [--only NAME,NAME] [--skip-ray] [--markdown docs/faults.md]

Every case runs the console script as a subprocess in a fresh temp directory (its cwd, so the
commands show relative paths) with ``HOME`` set to an empty temp directory and a minimal
environment (PATH, the case's own variables). For each it records the command, the line the
user sees (the last stderr line starting with ``raydeep:``; ``$DIR`` stands for the case's
directory), the exit code, whether a traceback appeared, the wall time, and whether anything
was half-written: the case directory is hashed before and after, and a refused command must
leave it byte for byte as it was (no run dir, no output, an existing run untouched).

A case is *handled* when the command does what the README promises: a refused input exits
non-zero (2 for config and data errors) with a ``raydeep:`` line, no traceback and nothing
written; a fault raydeep recovers from exits 0 with the right result. Cases that need a long
real run (a killed worker, Ctrl-C mid-run, a killed sweep driver, two nodes) are not rerun
here: docs/faults.md names the integration tests that verify them.

Slow cases (``--skip-ray`` leaves them out) start the embedded local Ray as a user's
``raydeep train`` does: one tiny training run (the checkpoint the evaluate cases use), a
diverging run, an interrupted ``data prepare``. DeepSpeed's op build cache
(``TORCH_EXTENSIONS_DIR``) is shared by the cases of one invocation so it builds once.

Writes benchmarks/results/faults.json and prints the markdown table; ``--markdown PATH``
replaces the table between the ``<!-- faults:begin -->`` / ``<!-- faults:end -->`` markers.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import SYNTH, tiny_config, write_config  # noqa: E402

BIN = Path(sys.executable).parent
RESULTS = HERE / "results" / "faults.json"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
SECRET = "s3cr3t-t0ken-value"  # must never appear in anything raydeep prints


@dataclass
class Outcome:
    case: str
    command: str
    seen: str  # the last `raydeep:` line on stderr (or stdout's last line when it succeeded)
    exit: int | None
    traceback: bool
    wall_s: float
    intact: bool  # nothing half-written (verified, see `intact_note`)
    intact_note: str
    handled: bool
    why: str = ""  # what is wrong, when not handled
    expect: str = "refused"  # or "recovers"


@dataclass
class Run:
    """One finished subprocess, its case directory and how to show it."""

    dir: Path
    argv: list[str]
    env_shown: dict[str, str]
    rc: int | None
    out: str
    err: str
    wall_s: float
    leftover_procs: bool = False
    timed_out_s: float | None = None  # no answer within this many seconds: we pressed Ctrl-C
    last_before: str = ""  # the last stderr line on screen when we did
    ignored_ctrl_c: bool = False  # still running 120 s after that Ctrl-C: killed (SIGKILL)

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out + self.err

    def seen(self, placeholders: dict[str, str]) -> str:
        line = self._seen()
        for real, shown in placeholders.items():
            line = line.replace(real, shown)
        return line

    def _seen(self) -> str:
        if self.timed_out_s is not None:
            after = [x for x in self.err.splitlines() if x.startswith("raydeep:")]
            then = ("still running 120 s later; killed" if self.ignored_ctrl_c
                    else after[-1] if after else "nothing")
            return f"(no answer in {self.timed_out_s:g} s; on screen: {self.last_before[:160]}; after Ctrl-C: {then})"
        lines = [x for x in self.err.splitlines() if x.startswith("raydeep:")]
        if lines:
            line = lines[-1]
        else:
            tail = [x for x in self.out.splitlines() if x.strip()]
            line = tail[-1].strip() if tail else ""
        return line

    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env_shown.items())
        cmd = "raydeep " + " ".join(shlex.quote(a) for a in self.argv)
        return f"{env} {cmd}".strip()


# ---------------------------------------------------------------------------------------------
# Running a case


class Session:
    def __init__(self, root: Path):
        self.root = root
        self.n = 0
        self.extensions = root / "torch-extensions"
        self._trained: Path | None = None
        self._s3 = None
        self.nan_stopped: Path | None = None

    def case_dir(self) -> Path:
        self.n += 1
        d = self.root / f"c{self.n:02d}"
        d.mkdir()
        return d

    def run(self, d: Path, *argv: str, env: dict[str, str] | None = None, env_shown: dict[str, str] | None = None,
            timeout: float = 300, ray: bool = False, interrupt_when: Callable[[], bool] | None = None) -> Run:
        """``raydeep ARGV`` in ``d`` with an empty HOME; ``interrupt_when``: SIGINT once it holds."""
        home = Path(tempfile.mkdtemp(prefix="home-", dir=self.root))
        full = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
                "TORCH_EXTENSIONS_DIR": str(self.extensions)}
        if not ray:  # Ray's socket paths must stay short: Ray cases keep the system temp dir
            tmp = d.parent / f"{d.name}-tmp"
            tmp.mkdir()
            full["TMPDIR"] = str(tmp)
        full.update(env or {})
        t0 = time.perf_counter()
        out_f, err_f = open(d.parent / f"{d.name}.out", "w+"), open(d.parent / f"{d.name}.err", "w+")
        proc = subprocess.Popen([str(BIN / "raydeep"), *argv], cwd=d, env=full, stdout=out_f, stderr=err_f,
                                start_new_session=True)
        leftover, timed_out, last_before, ignored_ctrl_c = False, False, "", False
        try:
            deadline = time.time() + timeout
            interrupted = False
            while proc.poll() is None:
                if time.time() > deadline and not timed_out:
                    # No answer: do what a user would, Ctrl-C, and record what was on screen by then.
                    timed_out = True
                    err_f.flush()
                    shown = [x for x in Path(err_f.name).read_text().splitlines() if x.strip()]
                    last_before = shown[-1] if shown else ""
                    proc.send_signal(signal.SIGINT)
                    deadline = time.time() + 120
                elif time.time() > deadline:
                    ignored_ctrl_c = True  # Ctrl-C did not end it either: kill it, as a user would next
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                if interrupt_when is not None and not interrupted and interrupt_when():
                    proc.send_signal(signal.SIGINT)  # as the project's Ctrl-C test does
                    interrupted = True
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            # What the command started must end with it (Ray's local node included): wait for its
            # process group to empty, up to 90 s on a loaded machine.
            end = time.time() + 90
            while _group_alive(proc.pid):
                if time.time() > end:
                    leftover = True
                    break
                time.sleep(0.2)
        finally:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)  # only the group this script started
            proc.wait()
        out_f.seek(0), err_f.seek(0)
        return Run(d, list(argv), env_shown or {}, proc.returncode, out_f.read(), err_f.read(), round(wall, 1),
                   leftover, timeout if timed_out else None, last_before, ignored_ctrl_c)

    # fixtures -----------------------------------------------------------------------------

    def trained(self) -> Path:
        """A finished real tiny run (2 workers, ZeRO-1, 1 epoch) on the embedded local Ray."""
        if self._trained is None:
            d = self.case_dir()
            write_config(d / "run.yaml", tiny_config())
            r = self.run(d, "train", "run.yaml", "--run-dir", "run", timeout=900, ray=True)
            if r.rc != 0:
                raise RuntimeError(f"the tiny training run failed ({r.rc}): {r.err[-2000:]}")
            print(f"  (fixture: a tiny real run trained in {r.wall_s} s)", file=sys.stderr)
            self._trained = d / "run"
        return self._trained

    def s3(self):
        if self._s3 is None:
            from tests.s3 import start_s3  # imports tests.conftest: it sets variables only for this process

            d = self.root / "s3"
            d.mkdir()
            self._s3 = start_s3(d)
            fs = self._s3.filesystem()
            fs.mkdir("data")
            local = self.root / "s3-train"
            local.mkdir()
            pq.write_table(_tokens([0, 1, 2, 3] * 4), local / "part-00000.parquet")
            fs.put(str(local / "part-00000.parquet"), "data/train/part-00000.parquet")
        return self._s3

    def close(self) -> None:
        if self._s3 is not None:
            from tests.s3 import stop_s3

            stop_s3(self._s3.proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader counts as gone once reaped; children that remain keep the group alive
    return _group_members(pgid) != []


def _group_members(pgid: int) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(p.name))
    return found


def snapshot(d: Path) -> dict[str, str]:
    """Every path under ``d`` with a hash of its content (directories as 'dir')."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out


def diff(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"{name}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}"
             for name, v in (("added", added), ("removed", removed), ("changed", changed)) if v]
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# Inputs


def _tokens(labels, n: int | None = None, label_type=pa.int64()) -> pa.Table:
    n = len(labels) if n is None else n
    return pa.table({"input_ids": pa.array([[1, 2, 3, 0]] * n, type=pa.list_(pa.int32())),
                     "label": pa.array(labels, type=label_type)})


def token_data(d: Path, train: pa.Table | None = None, *, num_classes: int = 4) -> Path:
    """``train/`` (the given table, or a good one), ``val/`` (good) and ``run.yaml`` reading them."""
    for split, table in (("train", train), ("val", None)):
        (d / split).mkdir()
        if table is None:
            table = _tokens([i % num_classes for i in range(16)])
        if table is not False:
            pq.write_table(table, d / split / "part-00000.parquet")
    cfg = tiny_config(data={"train": "train", "val": "val"})
    cfg["model"].update(vocab_size=64, num_classes=num_classes)
    return write_config(d / "run.yaml", cfg)


def feature_data(d: Path, rows: list[list[float]], *, fixed: bool = True) -> Path:
    """A regression split whose ``features`` rows are ``rows`` (train) and a good val split."""
    def table(x: list[list[float]]) -> pa.Table:
        flat = pa.array([v for r in x for v in r], pa.float32())
        col = (pa.FixedSizeListArray.from_arrays(flat, len(x[0])) if fixed
               else pa.array(x, type=pa.list_(pa.float32())))
        return pa.table({"features": col, "label": pa.array(np.linspace(0, 1, len(x)))})

    pq.write_table(table(rows), d / "train.parquet")
    pq.write_table(table([[1.0] * 64 for _ in range(20)]), d / "val.parquet")
    cfg = tiny_config(data={"train": "train.parquet", "val": "val.parquet", "batch_size": 10})
    cfg["model"] = {"kind": "linear", "task": "regression"}
    return write_config(d / "run.yaml", cfg)


# ---------------------------------------------------------------------------------------------
# The cases: each returns an Outcome


CASES: list[tuple[str, bool, Callable[[Session], Outcome]]] = []


def case(name: str, *, ray: bool = False):
    def register(fn):
        CASES.append((name, ray, fn))
        return fn

    return register


def refused(name: str, r: Run, before: dict[str, str], *, code: int | None = 2, needles: tuple[str, ...] = (),
            placeholders: dict[str, str] | None = None, extra: Callable[[Run], str] | None = None,
            intact_note: str = "case dir unchanged (no run dir, no output)") -> Outcome:
    """A refused input: exit ``code`` (any non-zero when None), a raydeep: line, no traceback,
    the case directory unchanged, and ``extra(r)`` returning '' (else what is wrong)."""
    ph = {str(r.dir) + "/": "$DIR/", str(r.dir): "$DIR", str(r.dir.parent): "$TMP", **(placeholders or {})}
    seen = r.seen(ph)
    after = snapshot(r.dir)
    changes = diff(before, after)
    # raydeep's own temporary folders (downloads, checkpoint staging) must be gone; other
    # libraries' caches there (torch's torchinductor_*) are not the command's output.
    leftovers = [p.name for p in (r.dir.parent / f"{r.dir.name}-tmp").glob("*raydeep*")]
    intact = not changes and not leftovers
    note = intact_note if intact else "; ".join(filter(None, [changes, leftovers and f"left in TMPDIR: {leftovers}"]))
    why = []
    if r.timed_out_s is not None:
        why.append(f"no answer within {r.timed_out_s:g} s, then Ctrl-C: "
                   + ("still running 120 s later (killed)" if r.ignored_ctrl_c else f"exit {r.rc} after it"))
    elif r.rc == 0 or r.rc is None:
        why.append(f"exit {r.rc} on bad input")
    elif code is not None and r.rc != code:
        why.append(f"exit {r.rc}, expected {code}")
    if r.traceback:
        why.append("a traceback was printed")
    if not any(x.startswith("raydeep:") for x in r.err.splitlines()):
        why.append("no raydeep: line")
    why += [f"line lacks {n!r}" for n in needles if n not in r.err]
    if not intact:
        why.append("half-written: " + note)
    if r.leftover_procs:
        why.append("processes it started still ran 90 s after it exited")
    if extra is not None and (msg := extra(r)):
        why.append(msg)
    return Outcome(name, r.command(), seen, r.rc, r.traceback, r.wall_s, intact, note, not why, "; ".join(why))


TRAIN = ("train", "run.yaml", "--run-dir", "out")


def refusal(name: str, *, ray: bool = False, timeout: float | None = None, **expect):
    """A case whose input must be refused: ``setup(s, d)`` writes the case directory ``d`` and
    returns the command's arguments (None: ``raydeep train run.yaml --run-dir out``); the command
    then runs and ``refused`` judges it (``expect``: its keyword arguments)."""
    def register(setup: Callable[[Session, Path], tuple[str, ...] | None]):
        def run(s: Session) -> Outcome:
            d = s.case_dir()
            args = setup(s, d) or TRAIN
            before = snapshot(d)
            r = s.run(d, *args, **({} if timeout is None else {"timeout": timeout}))
            return refused(name, r, before, **expect)

        CASES.append((name, ray, run))
        return setup

    return register


def recovered(name: str, r: Run, ok: str, intact: bool, note: str, seen: str | None = None) -> Outcome:
    """A fault raydeep recovers from: exit 0 and ``ok`` == '' (else what is wrong)."""
    why = [x for x in [r.rc != 0 and f"exit {r.rc}", r.traceback and "a traceback was printed", ok,
                       not intact and "half-written: " + note] if x]
    ph = {str(r.dir) + "/": "$DIR/", str(r.dir): "$DIR"}
    return Outcome(name, r.command(), seen if seen is not None else r.seen(ph), r.rc, r.traceback, r.wall_s,
                   intact, note, not why, "; ".join(why), expect="recovers")


# config ------------------------------------------------------------------------------------


@refusal("config: unknown key", needles=("model.layrs", "did you mean 'layers'"))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    cfg = tiny_config()
    cfg["model"]["layrs"] = 3
    write_config(d / "run.yaml", cfg)


@refusal("config: a bad value", needles=("deepspeed.zero_stage = 4",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    write_config(d / "run.yaml", tiny_config())
    return ("train", "run.yaml", "--set", "deepspeed.zero_stage=4", "--run-dir", "out")


@refusal("config: missing file", needles=("nope.yaml",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    return ("train", "nope.yaml", "--run-dir", "out")


# data --------------------------------------------------------------------------------------


@refusal("data: corrupt parquet (garbage bytes)", needles=("part-00000.parquet",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d, False)
    (d / "train" / "part-00000.parquet").write_bytes(b"PAR1" + random.Random(0).randbytes(2000))


@refusal("data: string labels for classification", needles=("label",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d, _tokens(["a", "b", "c", "d"] * 4, label_type=pa.string()))


@refusal("data: float labels for classification", needles=("label",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d, _tokens([0.5, 1.5, 2.0, 3.0] * 4, label_type=pa.float64()))


@refusal("data: label out of range for model.num_classes", needles=("label 7 outside [0, 4)",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d, _tokens([0, 1, 2, 3, 7, 0, 1, 2]))


@refusal("data: a NaN in a float features column", needles=("row 137", "nan"))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    rows = [[1.0] * 64 for _ in range(200)]
    rows[137][5] = float("nan")  # 1 of 200x64 values, as issue 19 saw
    feature_data(d, rows)


@refusal("data: ragged list rows (60 and 64 values)", needles=("train.parquet",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    rows = [[1.0] * (60 if i % 7 == 3 else 64) for i in range(200)]
    feature_data(d, rows, fixed=False)


@refusal("data: an empty split (0 rows)", needles=("data.train",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d, _tokens([]))


@refusal("data: an empty directory", needles=("data.train",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d, False)


# run dirs and Ray ----------------------------------------------------------------------------


@refusal("run dir holds an interrupted run, no --resume",
         ray=True, needles=("--resume",),
         intact_note="case dir unchanged (the old run's checkpoints, config.yaml, run.json as they were)")
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    # What a real run leaves when it is killed: a real run's dir without its summary.json.
    token_data(d)
    shutil.copytree(s.trained(), d / "out")
    (d / "out" / "summary.json").unlink()


@refusal("run dir holds a finished run, no --resume",
         ray=True, needles=("finished run",), intact_note="case dir unchanged (the finished run as it was)")
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d)
    shutil.copytree(s.trained(), d / "out")


@refusal("--resume of a dir that is not a run",
         needles=("config.yaml",), intact_note="case dir unchanged (notes/ as it was)")
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    (d / "notes").mkdir()
    (d / "notes" / "todo.txt").write_text("not a run\n")
    return ("train", "--resume", "notes")


@refusal("unreachable --address", timeout=150, code=None, needles=("127.0.0.1:9",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    token_data(d)
    return ("train", "run.yaml", "--address", "127.0.0.1:9", "--run-dir", "out")


@refusal("unreachable dashboard (submit --address)",
         timeout=150, code=None, needles=("cannot reach a Ray dashboard",))
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    write_config(d / "run.yaml", tiny_config())
    (d / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return ("submit", "run.yaml", "--address", "http://127.0.0.1:9")


@refusal("submit --pip with credentials in an index URL",
         timeout=300, code=None, needles=("credentials",), placeholders={SECRET: "<secret>"},
         extra=lambda r: "the secret was printed" if SECRET in r.out + r.err else "")
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    write_config(d / "run.yaml", tiny_config())
    (d / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    pip = f"--index-url https://deploy:{SECRET}@pypi.example.com/simple requests"
    return ("submit", "run.yaml", "--pip", pip, "--address", "http://127.0.0.1:9")


# checkpoints ---------------------------------------------------------------------------------


def _torn_copy(s: Session, d: Path) -> tuple[Path, Path]:
    """A copy of the real run plus what a crash between rank 0's and rank 1's upload leaves: a
    newer checkpoint_* folder Ray never registered, rank 1's ZeRO shard missing; no summary."""
    run = d / "run"
    shutil.copytree(s.trained(), run)
    summary = json.loads((run / "summary.json").read_text())
    registered = run / Path(summary["latest_checkpoint"]).name
    torn = run / "checkpoint_2099-01-01_00-00-00.000000"
    shutil.copytree(registered, torn)
    (torn / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    (run / "summary.json").unlink()
    return run, torn


@refusal("evaluate a torn checkpoint (rank 1's shard missing)",
         ray=True, code=None, needles=("incomplete checkpoint", "rank 1"),
         intact_note="case dir unchanged (no evaluation.json)")
def _(s: Session, d: Path) -> tuple[str, ...] | None:
    run, torn = _torn_copy(s, d)
    token_data(d)
    return ("evaluate", str(torn.relative_to(d)), "--data", SYNTH.format(split="val", rows=400))


@case("evaluate a run dir whose newest checkpoint is torn", ray=True)
def _(s: Session) -> Outcome:
    d = s.case_dir()
    run, torn = _torn_copy(s, d)
    before = snapshot(d)
    r = s.run(d, "evaluate", "run", "--data", SYNTH.format(split="val", rows=400), "--out", "eval.json")
    after = snapshot(d)
    added = set(after) - set(before)
    intact = added <= {"eval.json"} and all(after.get(k) == v for k, v in before.items())
    result = json.loads((d / "eval.json").read_text()) if (d / "eval.json").is_file() else {}
    used = Path(result.get("checkpoint", "")).name
    ok = "" if used and used != torn.name else f"evaluated {used or 'nothing'}, not the registered checkpoint"
    return recovered("evaluate a run dir whose newest checkpoint is torn", r, ok, intact,
                     "only eval.json added; the run dir unchanged" if intact else diff(before, after),
                     seen=f"eval.json: checkpoint {used} (the registered one; the torn folder skipped)")


class _RunsCode:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would carry."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@case("evaluate a checkpoint holding a code-running pickle", ray=True)
def _(s: Session) -> Outcome:
    import torch

    d = s.case_dir()
    summary = json.loads((s.trained() / "summary.json").read_text())
    ckpt = d / "ckpt"
    shutil.copytree(s.trained() / Path(summary["latest_checkpoint"]).name, ckpt)
    states = ckpt / "engine" / "mp_rank_00_model_states.pt"
    marker = d.parent / f"{d.name}-pickle-ran"
    state = torch.load(states, weights_only=False)  # our own file, from the run above
    state["extra"] = _RunsCode(str(marker))
    torch.save(state, states)
    before = snapshot(d)
    r = s.run(d, "evaluate", "ckpt", "--data", SYNTH.format(split="val", rows=400))
    return refused("evaluate a checkpoint holding a code-running pickle", r, before, code=None,
                   needles=("refused",), extra=lambda r: "the pickle ran" if marker.exists() else "",
                   intact_note="case dir unchanged, and the pickle's command never ran")


# S3 ----------------------------------------------------------------------------------------


def _s3_case(s: Session, name: str, train: str, env: dict[str, str], env_shown: dict[str, str],
             needles: tuple[str, ...], storage: str | None = None) -> Outcome:
    server = s.s3()
    d = s.case_dir()
    cfg = tiny_config(data={"train": train, "val": "s3://data/train"})
    cfg["model"]["vocab_size"] = 64
    if storage:
        cfg["run"]["storage"] = storage
    write_config(d / "run.yaml", cfg)
    before = snapshot(d)
    full = {**server.env(), **env}
    r = s.run(d, "train", "run.yaml", "--run-dir", "out", env=full, env_shown=env_shown, timeout=300)
    secrets = (server.secret, env.get("AWS_SECRET_ACCESS_KEY", server.secret))
    return refused(name, r, before, needles=needles, placeholders={server.endpoint: "$S3"},
                   extra=lambda r: "a secret was printed" if any(x in r.out + r.err for x in secrets) else "")


@case("S3: missing bucket")
def _(s: Session) -> Outcome:
    return _s3_case(s, "S3: missing bucket", "s3://no-such-bucket/train", {}, {"AWS_ENDPOINT_URL": "$S3"},
                    ("bucket 'no-such-bucket' does not exist",))


@case("S3: wrong credentials")
def _(s: Session) -> Outcome:
    return _s3_case(s, "S3: wrong credentials", "s3://data/train",
                    {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": SECRET},
                    {"AWS_ENDPOINT_URL": "$S3", "AWS_ACCESS_KEY_ID": "AKIAWRONG...", "AWS_SECRET_ACCESS_KEY": "..."},
                    ("rejected the credentials",))


@case("S3: run.storage in a missing bucket")
def _(s: Session) -> Outcome:
    return _s3_case(s, "S3: run.storage in a missing bucket", "s3://data/train", {}, {"AWS_ENDPOINT_URL": "$S3"},
                    ("no-such-bucket",), storage="s3://no-such-bucket/runs")


# faults mid-run ---------------------------------------------------------------------------------


def _interrupted_prepare(s: Session, name: str, when: str) -> Outcome:
    """``data prepare`` gets a SIGINT (as the project's Ctrl-C test sends it) ``when``:
    'temp' once its output's temp folder exists (shards being written), 'writing' as soon as it
    prints that it is tokenizing and writing (Ray Data's write starting)."""
    d = s.case_dir()
    rng = random.Random(0)
    words = [f"w{i}" for i in range(400)]
    with open(d / "in.jsonl", "w") as f:
        for i in range(30_000):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(4, 30))),
                                "label": ["sport", "tech", "food"][i % 3]}) + "\n")
    before = snapshot(d)
    out_file = d.parent / f"{d.name}.out"
    fired: list[str] = []

    def trigger() -> bool:
        if when == "temp" and any(d.glob(".ds.tmp-*")):
            fired.append("its temp folder .ds.tmp-* existed")
        elif when == "writing" and out_file.exists() and "and writing" in out_file.read_text():
            fired.append("it had printed 'tokenizing ... and writing'")
        return bool(fired)

    r = s.run(d, "data", "prepare", "--input", "in.jsonl", "--format", "jsonl", "--output", "ds",
              "--train-tokenizer", "bpe", "--shard-rows", "1000", timeout=600, ray=True, interrupt_when=trigger,
              env={"PYTHONUNBUFFERED": "1"})  # unbuffered: its lines reach the log as printed
    if not fired:
        raise RuntimeError(f"prepare ended (exit {r.rc}) before the interrupt condition held")
    out = refused(name, r, before, code=130, needles=("interrupted",),
                  intact_note="no ds/, no .ds.tmp-* folder, in.jsonl unchanged")
    out.intact_note += f" (SIGINT sent once {fired[0]})"
    return out


@case("data prepare: Ctrl-C while its shards are written", ray=True)
def _(s: Session) -> Outcome:
    return _interrupted_prepare(s, "data prepare: Ctrl-C while its shards are written", "temp")


@case("data prepare: Ctrl-C as its write starts", ray=True)
def _(s: Session) -> Outcome:
    return _interrupted_prepare(s, "data prepare: Ctrl-C as its write starts", "writing")


@case("training loss goes non-finite", ray=True)
def _(s: Session) -> Outcome:
    from tests.integration.test_nonfinite import diverging_config

    d = s.case_dir()
    write_config(d / "run.yaml", diverging_config(max_failures=1))
    r = s.run(d, "train", "run.yaml", "--run-dir", "run", timeout=900, ray=True)
    # The run started, so its dir exists; what must not: a summary, final weights or plots
    # presenting the NaN run as finished, or a retry.
    present = sorted(p.name for p in (d / "run").iterdir()) if (d / "run").exists() else []
    bad = [p for p in present if p in ("summary.json", "weights.pt", "model.pt") or p.endswith(".png")]
    note = (f"no summary.json, weights or plots (run dir holds: {', '.join(present[:6])})" if not bad
            else f"written as if finished: {bad}")
    out = refused("training loss goes non-finite", r, snapshot(d), code=1, needles=("training loss is",),
                  intact_note=note, extra=lambda r: "retried" if "resumed at" in r.out + r.err else "")
    out.intact = not bad
    out.intact_note = note
    if bad:
        out.handled = False
        out.why = (out.why + "; " if out.why else "") + note
    s.nan_stopped = d
    return out


@case("a new run into the dir a non-finite run stopped in", ray=True)
def _(s: Session) -> Outcome:
    # What the stop line suggests: lower optim.lr and run again (same command, same --run-dir).
    d = s.nan_stopped
    if d is None:
        raise RuntimeError("needs the non-finite case first")
    # The stopped run saved no checkpoint (it stopped in epoch 1), so there is nothing to resume:
    # the rerun trains in the same directory and finishes.
    r = s.run(d, "train", "run.yaml", "--set", "optim.lr=0.001", "--run-dir", "run", timeout=900, ray=True)
    summary = d / "run" / "summary.json"
    ok = "" if summary.is_file() else "no summary.json: the rerun did not finish"
    if not ok:
        final = json.loads(summary.read_text())["final"]
        if not all(math.isfinite(final.get(k, float("nan"))) for k in ("train/loss", "val/rmse")):
            ok = f"the rerun's losses are not finite: {final}"
    return recovered("a new run into the dir a non-finite run stopped in (nothing to resume)", r, ok, True,
                     "the stopped run's dir reused: it held no checkpoint",
                     seen=next((x.strip() for x in reversed(r.out.splitlines()) if x.startswith("wall time")), ""))


# ---------------------------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: list[Outcome]) -> str:
    rows = ["| case | command | what the user sees | exit | nothing half-written | handled |",
            "|---|---|---|---|---|---|"]
    for o in outcomes:
        handled = "yes" if o.handled else f"**not handled**: {o.why}"
        intact = ("yes: " if o.intact else "**no**: ") + o.intact_note
        tb = " (traceback)" if o.traceback else ""
        rows.append(f"| {cell(o.case)} | `{cell(o.command)}` | `{cell(o.seen)}`{tb} | {o.exit} | {cell(intact)} | "
                    f"{cell(handled)} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated case names (substrings)")
    ap.add_argument("--skip-ray", action="store_true", help="leave out the cases that start Ray")
    ap.add_argument("--markdown", type=Path, help="write the table into this doc between the faults markers")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (printed)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="raydeep-faults-"))
    s = Session(root)
    outcomes: list[Outcome] = []
    try:
        for name, ray, fn in CASES:
            if args.only and not any(x in name for x in args.only.split(",")):
                continue
            if args.skip_ray and ray:
                continue
            print(f"- {name} ...", file=sys.stderr, flush=True)
            try:
                o = fn(s)
            except Exception as exc:  # noqa: BLE001 - the script's own failure to set up a case
                o = Outcome(name, "", f"(the script failed: {type(exc).__name__}: {exc})", None, False, 0.0, False,
                            "not checked", False, "the script could not run this case")
            print(f"  exit {o.exit}, {o.wall_s} s, {'handled' if o.handled else 'NOT HANDLED: ' + o.why}\n"
                  f"  {o.seen}", file=sys.stderr, flush=True)
            outcomes.append(o)
    finally:
        s.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0
    handled = sum(o.handled for o in outcomes)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    command = f".venv/bin/python benchmarks/faults.py {argv}".strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "raydeep"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    load = os.getloadavg()[0]
    md = (f"**{len(outcomes)} tried, {handled} handled.** {when}, `{command}` on {commit}"
          f"{' (with uncommitted changes to raydeep/)' if dirty else ''}, {wall:.0f} s wall, "
          f"load average {load:.1f} at the end.\n\n" + table(outcomes))
    print(md)
    if not args.only:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"date": when, "command": command, "commit": commit, "raydeep_dirty": dirty,
                                       "wall_s": round(wall, 1), "load_1m_end": round(load, 2),
                                       "tried": len(outcomes), "handled": handled,
                                       "cases": [asdict(o) for o in outcomes]}, indent=2) + "\n")
    if args.markdown:
        doc = args.markdown.read_text()
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.markdown.write_text(f"{head}{BEGIN}\n{md}\n{END}{tail}")
    print(f"wall {wall:.1f} s: {len(outcomes)} tried, {handled} handled", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
