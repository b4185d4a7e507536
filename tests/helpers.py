"""Tiny configs for tests: real components, sized to run in seconds."""

from __future__ import annotations

from pathlib import Path

import yaml

SYNTH = "datasets://synthetic-text/{split}?rows={rows}&num_classes=4&seq_len=16&vocab_size=64&imbalance_ratio=5&seed=0"
DIGITS = "datasets://digits-lt/{split}?imbalance_ratio=10&seed=0"


def tiny_config(**sections) -> dict:
    """A 2-worker run on synthetic text, 1 epoch; ``sections`` update the defaults one level deep."""
    cfg = {
        "name": "tiny",
        "data": {"train": SYNTH.format(split="train", rows=400), "val": SYNTH.format(split="val", rows=400),
                 "batch_size": 16, "shuffle_buffer": 64},
        "model": {"kind": "transformer", "num_classes": 4, "d_model": 32, "layers": 1, "heads": 2,
                  "max_len": 32, "dropout": 0.0},
        "optim": {"lr": 3.0e-3},
        "deepspeed": {"zero_stage": 1},
        "scaling": {"num_workers": 2},
        "run": {"epochs": 1, "seed": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_tensorboard(logdir) -> dict:
    """What TensorBoard's own reader finds in ``logdir`` (one run): {"scalars": {tag: [(step, value)]},
    "text": {tag: str}, "images": {tag: (width, height)}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags.get("scalars", [])}
    text = {}
    for t in tags.get("tensors", []):
        if acc.SummaryMetadata(t).plugin_data.plugin_name == text_metadata.PLUGIN_NAME:
            value = tensor_util.make_ndarray(acc.Tensors(t)[-1].tensor_proto)
            text[t.removesuffix("/text_summary")] = value.reshape(-1)[0].decode()
    images = {t: (acc.Images(t)[-1].width, acc.Images(t)[-1].height) for t in tags.get("images", [])}
    return {"scalars": scalars, "text": text, "images": images}


def read_sample_log(directory: Path) -> dict[int, list[tuple[int, int, str, list[int]]]]:
    """rank -> [(epoch, global step, loss, sample ids)] as written (``loop.SampleLog``, ``RAYDEEP_SAMPLE_LOG``)."""
    out = {}
    for path in sorted(Path(directory).glob("ids_r*.txt")):
        lines = []
        for line in path.read_text().splitlines():
            epoch, step, loss, *ids = line.split()
            lines.append((int(epoch), int(step), loss, [int(i) for i in ids]))
        out[int(path.stem.removeprefix("ids_r"))] = lines
    return out


def exactly_once_but_redone(log: dict[int, list], samples_per_epoch: list[int]) -> set[int]:
    """The global steps some rank trained twice (a group restarted from a checkpoint behind where it
    stopped), after checking that each was the same step again (the same samples, the same loss),
    that no step is missing, and that, counting each step once, every epoch trained on every one of
    its samples exactly once."""
    redone: set[int] = set()
    ids: dict[int, list[int]] = {}
    for rank, lines in log.items():
        first: dict[int, tuple] = {}
        for epoch, step, loss, batch in lines:
            if step in first:
                assert first[step] == (epoch, loss, batch), f"rank {rank} redid step {step} differently"
                redone.add(step)
            else:
                first[step] = (epoch, loss, batch)
        assert sorted(first) == list(range(1, len(first) + 1)), f"rank {rank} skipped a step"
        for epoch, _, batch in first.values():
            ids.setdefault(epoch, []).extend(batch)
    assert sorted(ids) == list(range(len(samples_per_epoch)))
    for epoch, got in ids.items():
        assert len(got) == len(set(got)) == samples_per_epoch[epoch], epoch
    return redone


def elastic_exactly_once(log: dict[int, list], resumed_at: int) -> tuple[dict[int, list[int]], int]:
    """(epoch -> the samples trained, each once; the old group's steps past the checkpoint) for a run
    stopped after global step ``resumed_at``'s checkpoint and resumed on ONE worker (an elastic
    resume): the old ranks' steps up to that checkpoint, then the new rank 0's lines (appended to
    ``ids_r0.txt`` after the old rank 0's). Asserts no sample twice in an epoch and no step missing."""
    old_rank0 = log[0]
    cut = next((i for i in range(1, len(old_rank0)) if old_rank0[i][1] <= old_rank0[i - 1][1]), None)
    if cut is None:  # the old group stopped at the checkpoint: every line past it is the new rank's
        cut = next((i for i, line in enumerate(old_rank0) if line[1] > resumed_at), len(old_rank0))
    new = old_rank0[cut:]
    assert [line[1] for line in new] == list(range(resumed_at + 1, resumed_at + 1 + len(new))), "a step is missing"
    per_epoch: dict[int, list[int]] = {}
    redone = 0
    for rank, lines in log.items():
        mine = lines[:cut] if rank == 0 else lines
        assert [line[1] for line in mine] == list(range(1, len(mine) + 1)), f"old rank {rank} skipped a step"
        redone = max(redone, sum(1 for line in mine if line[1] > resumed_at))
        for epoch, _, _, batch in (line for line in mine if line[1] <= resumed_at):
            per_epoch.setdefault(epoch, []).extend(batch)
    for epoch, _, _, batch in new:
        per_epoch.setdefault(epoch, []).extend(batch)
    for epoch, got in per_epoch.items():
        assert len(got) == len(set(got)), f"epoch {epoch}: a sample trained twice"
    return per_epoch, redone
