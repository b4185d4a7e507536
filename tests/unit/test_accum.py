"""The worker's lockstep over batches, the stopped-run return value, and the accumulation window a
checkpoint cuts (issue 19, items 5 and 9), without Ray: gloo process groups on this machine."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import ray.exceptions
from ray.train import Result

from raydeep.errors import DataError, RaydeepError
from raydeep.trainers.loop import StopRun, lockstep, raydeep_line
from raydeep.trainers.reporting import STOPPED, STOPPED_KIND, finished


def result(return_value, metrics=None) -> Result:
    """A fit's result as Ray Train builds it: the latest checkpoint's metrics, the worker's return."""
    return Result(metrics=metrics, checkpoint=None, error=None, path="/tmp/run", return_value=return_value)


def test_finished_raises_the_line_of_a_stopped_run_and_passes_a_result():
    """The final metrics come from the last report (the latest checkpoint's), how the run ended from
    the return value: each leaves the worker once."""
    ended = {"resumed_from_step": None, "stopped_early": True}
    assert finished(result(ended, {"epoch": 1, "val/loss": 0.5})) == {"epoch": 1, "val/loss": 0.5, **ended}
    assert finished(result(None)) == {}
    with pytest.raises(RaydeepError, match="^data.train: f.parquet: row 3: bad$"):
        finished(result({STOPPED: "data.train: f.parquet: row 3: bad"}, {"epoch": 0}))


def test_raydeep_line_finds_the_error_behind_ray_and_chained_wrappers():
    err = DataError("data.train: f.parquet: row 3: 'features' holds nan")
    assert raydeep_line(err) == str(err)
    wrapped = ray.exceptions.RayTaskError("ReadParquetShards", "Traceback ...\nDataError: ...", err)
    assert raydeep_line(wrapped.as_instanceof_cause()) == str(err)  # not Ray's traceback text
    try:
        try:
            raise wrapped.as_instanceof_cause()
        except Exception as exc:
            raise RuntimeError("Split 1 epoch 0 get() failed") from exc
    except RuntimeError as outer:
        assert raydeep_line(outer) == str(err)
    assert raydeep_line(ValueError("not ours")) is None


def test_lockstep_without_a_process_group_is_the_batches_or_stops_with_the_line():
    assert list(lockstep(iter(range(3)), "cpu")) == [0, 1, 2]

    def bad():
        yield 1
        raise DataError("data.val: v.parquet: row 9: bad")

    taken = []
    with pytest.raises(StopRun, match="row 9"):
        for b in lockstep(bad(), "cpu"):
            taken.append(b)
    assert taken == [1]
    with pytest.raises(ZeroDivisionError):  # not deterministic data: Ray Train's to handle
        list(lockstep((1 / 0 for _ in range(1)), "cpu"))


LOCKSTEP = r"""
import os, sys
import torch.distributed as dist
from raydeep.errors import DataError
from raydeep.trainers.loop import StopRun, lockstep
rank = int(sys.argv[2])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK=str(rank), WORLD_SIZE="2")
dist.init_process_group("gloo")
def batches(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise DataError(f"data.train: part-3.parquet: row 37: held by rank {rank}")
        yield i
# unequal ends: both stop at the shorter
assert list(lockstep(batches(5 if rank == 0 else 3), "cpu")) == [0, 1, 2]
# rank 1 cannot read its third batch while rank 0 can: both stop there with rank 1's line
taken = []
try:
    for b in lockstep(batches(5, fail_at=2 if rank == 1 else None), "cpu"):
        taken.append(b)
        dist.all_reduce(__import__("torch").ones(1))  # the step's collective: no rank is left in one
except StopRun as stop:
    print(f"rank {rank} took {taken} stopped: {stop}", flush=True)
dist.destroy_process_group()
"""


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_every_rank_stops_at_the_batch_one_rank_cannot_read_with_its_line(tmp_path):
    script = tmp_path / "lockstep.py"
    script.write_text(LOCKSTEP)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script), port, str(r)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for rank, (out, _) in enumerate(outs):
        assert out.strip() == (f"rank {rank} took [0, 1] stopped: data.train: part-3.parquet: row 37: "
                               "held by rank 1"), outs


WINDOW = r"""
import os, sys
os.environ["DS_ACCELERATOR"] = "cpu"
import torch, torch.distributed as dist
from raydeep.trainers.engine import isolate_extension_builds
isolate_extension_builds()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo")
from raydeep.config import Config
from raydeep.trainers.engine import create_engine, deepspeed_config
from raydeep.trainers.loop import AccumulationWindow
cfg = Config.model_validate({"name": "t", "data": {"train": "x", "val": "y", "batch_size": 4},
    "model": {"kind": "linear", "task": "classification", "num_classes": 3},
    "optim": {"name": "adamw", "lr": 0.05, "grad_accum": 4},
    "deepspeed": {"zero_stage": int(sys.argv[3]), "precision": "fp32"}})
ds = deepspeed_config(cfg, world_size=1, device="cpu")
def build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    return create_engine(cfg, model, ds, "cpu")
torch.manual_seed(1)
xs, ys = torch.randn(12, 4, 8), torch.randint(0, 3, (12, 4))
def step(engine, window, i, x=None, y=None):
    x, y = (xs[i], ys[i]) if x is None else (x, y)
    window.before_forward()
    engine.backward(torch.nn.functional.cross_entropy(engine(x), y))
    engine.step()
    window.took(x, y, 0)
engine = build(); window = AccumulationWindow(engine)
torch.manual_seed(7)
for i in range(6):  # micro-batches 5 and 6 open a window the checkpoint cuts
    step(engine, window, i)
engine.save_checkpoint(sys.argv[2], tag="t")
state = window.state_dict()
assert state["micro_steps"] == 6 and len(state["batches"]) == 2, state["micro_steps"]
torch.manual_seed(8)  # what the next epoch's reseed does
for i in range(6, 12):
    step(engine, window, i)
expected = [p.detach().clone() for p in engine.module.parameters()]
assert engine.global_steps == 3

for replay in (True, False):
    resumed = build(); window = AccumulationWindow(resumed)
    resumed.load_checkpoint(sys.argv[2], tag="t")
    if replay:
        window.load_state_dict(state)
        for x, y, epoch in window.replay():
            resumed.backward(torch.nn.functional.cross_entropy(resumed(x), y))
            resumed.step()
    torch.manual_seed(8)
    for i in range(6, 12):
        step(resumed, window, i)
    same = all(torch.equal(a, b) for a, b in zip(expected, resumed.module.parameters()))
    print(f"replay={replay} global_steps={resumed.global_steps} same={same}", flush=True)
"""


@pytest.mark.slow
def test_a_replayed_window_resumes_exactly_where_dropping_it_does_not(tmp_path):
    """ZeRO-2, grad_accum 4, dropout: 6 micro-batches, a checkpoint, 6 more; a resumed engine that
    replays the 2 saved micro-batches ends with the same weights bit for bit and 3 optimizer steps;
    one that does not (DeepSpeed alone) steps at other micro-batches and ends elsewhere."""
    script = tmp_path / "window.py"
    script.write_text(WINDOW)
    proc = subprocess.run([sys.executable, str(script), free_port(), str(tmp_path / "ckpt"), "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("replay=")]
    assert lines == ["replay=True global_steps=3 same=True", "replay=False global_steps=2 same=False"], proc.stdout


def test_a_stopped_runs_error_keeps_its_class():
    """A DataError a worker found exits 2 like one the driver found: its class crosses the return."""
    with pytest.raises(DataError, match="^data.train: f.parquet: row 3: bad$"):
        finished(result({STOPPED: "data.train: f.parquet: row 3: bad", STOPPED_KIND: "DataError"}))
    with pytest.raises(RaydeepError) as exc:
        finished(result({STOPPED: "the training loss is nan", STOPPED_KIND: "SomethingElse"}))
    assert type(exc.value) is RaydeepError

    def bad():
        raise DataError("data.val: v.parquet: row 9: bad")
        yield  # a generator

    with pytest.raises(StopRun) as stop:
        list(lockstep(bad(), "cpu"))
    assert stop.value.kind == "DataError" and str(stop.value) == "data.val: v.parquet: row 9: bad"
