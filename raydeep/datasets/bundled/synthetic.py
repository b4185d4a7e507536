"""``synthetic-text``: seeded token sequences whose class a tiny Transformer learns in an epoch or two.

Structure (so the generator provably carries signal, and a model must still look at content):
- token 0 is padding and nothing else;
- each class owns ``markers_per_class`` marker ids (class c: ``1 + c*M .. c*M + M``);
- every other id (``1 + K*M .. vocab_size-1``) is shared filler;
- a sequence has a random length in ``[max(seq_len//2, 5), seq_len]``, filler everywhere, 2-4 of
  its class's markers at random positions and, 30% of the time, one marker of another class as a
  distractor. The label is the class with the most markers, so counting (not mere presence) decides.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raydeep.datasets.bundled.digits import long_tail_counts
from raydeep.datasets.manifest import publish_dir, write_split
from raydeep.datasets.schema import FeatureSpec, tokens_array

NAME = "synthetic-text"
GENERATOR_VERSION = 1  # bump when the output changes, so old caches are not reused
SPLITS = ("train", "val", "test")
# Ids are unique across splits: split i owns [i * ID_STRIDE, (i+1) * ID_STRIDE).
ID_STRIDE = 1_000_000_000
MIN_LEN = 5  # room for 4 own markers + 1 distractor at distinct positions
DISTRACTOR_P = 0.3


def markers_per_class(num_classes: int, vocab_size: int) -> int:
    """Up to 4 markers per class, never more than half the vocabulary, so filler stays plentiful."""
    return max(1, min(4, (vocab_size - 1) // (2 * num_classes)))


def class_counts(rows: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """The long-tail counts with the largest head whose total fits in ``rows``."""
    if rows < num_classes:
        raise ValueError(f"rows ({rows}) must be >= num_classes ({num_classes})")
    lo, hi = 1, rows  # sum(long_tail_counts(1, ...)) == num_classes <= rows, so lo always fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(long_tail_counts(mid, num_classes, imbalance_ratio)) <= rows:
            lo = mid
        else:
            hi = mid - 1
    return long_tail_counts(lo, num_classes, imbalance_ratio)


def _check_params(rows: int, num_classes: int, seq_len: int, vocab_size: int, imbalance_ratio: float) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if rows < num_classes:
        raise ValueError(f"rows ({rows}) must be >= num_classes ({num_classes})")
    if rows >= ID_STRIDE:
        raise ValueError(f"rows must be < {ID_STRIDE}, got {rows}")
    if seq_len < MIN_LEN:
        raise ValueError(f"seq_len must be >= {MIN_LEN}, got {seq_len}")
    if vocab_size < 2 * num_classes + 2:
        raise ValueError(f"vocab_size ({vocab_size}) must be >= 2 * num_classes + 2 = {2 * num_classes + 2} "
                         "(pad, class markers and filler)")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")


def generate_tokens(labels: np.ndarray, *, num_classes: int, seq_len: int, vocab_size: int,
                    rng: np.random.Generator) -> np.ndarray:
    """An ``[N, seq_len]`` int32 array of padded sequences for the given labels."""
    n = len(labels)
    m = markers_per_class(num_classes, vocab_size)
    filler_lo = 1 + num_classes * m
    lengths = rng.integers(max(seq_len // 2, MIN_LEN), seq_len + 1, n)
    ids = rng.integers(filler_lo, vocab_size, (n, seq_len))
    beyond = np.arange(seq_len)[None, :] >= lengths[:, None]
    # Five distinct in-length positions per row: a random permutation restricted to the prefix.
    keys = rng.random((n, seq_len))
    keys[beyond] = 2.0
    pos = np.argsort(keys, axis=1)[:, :MIN_LEN]
    rows = np.arange(n)
    own_count = rng.integers(2, 5, n)
    own = 1 + labels[:, None] * m + rng.integers(0, m, (n, 4))
    for j in range(4):
        sel = j < own_count
        ids[rows[sel], pos[sel, j]] = own[sel, j]
    has_distractor = rng.random(n) < DISTRACTOR_P
    other = (labels + rng.integers(1, num_classes, n)) % num_classes
    distractor = 1 + other * m + rng.integers(0, m, n)
    ids[rows[has_distractor], pos[has_distractor, 4]] = distractor[has_distractor]
    ids[beyond] = 0
    return ids.astype(np.int32)


def write_synthetic_text(
    out_dir: str | os.PathLike,
    *,
    split: str,
    rows: int,
    num_classes: int,
    seq_len: int,
    vocab_size: int,
    imbalance_ratio: float,
    seed: int,
    shards: int = 4,
) -> dict:
    """Write one split of about ``rows`` rows (long-tailed by ``class_counts``); return its manifest.

    ``imbalance_ratio=1`` gives a balanced split. The split name is mixed into the seed, so
    the same user seed gives different rows (and disjoint ids) per split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _check_params(rows, num_classes, seq_len, vocab_size, imbalance_ratio)
    split_index = SPLITS.index(split)
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_index]))
    counts = class_counts(rows, num_classes, imbalance_ratio)
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), counts))
    tokens = generate_tokens(labels, num_classes=num_classes, seq_len=seq_len, vocab_size=vocab_size, rng=rng)
    n = len(labels)
    table = pa.table({
        "input_ids": tokens_array(tokens, seq_len),
        "label": pa.array(labels, pa.int64()),
        "id": pa.array(split_index * ID_STRIDE + np.arange(n, dtype=np.int64)),
    })
    feature = FeatureSpec(column="input_ids", kind="tokens", seq_len=seq_len, vocab_size=vocab_size, pad_id=0)
    generator = {"rows": rows, "num_classes": num_classes, "seq_len": seq_len, "vocab_size": vocab_size,
                 "imbalance_ratio": imbalance_ratio, "seed": seed,
                 "markers_per_class": markers_per_class(num_classes, vocab_size), "version": GENERATOR_VERSION}
    return write_split(out_dir, table, name=NAME, split=split, task="text_classification", feature=feature,
                       num_classes=num_classes, label_names=[str(c) for c in range(num_classes)],
                       generator=generator, shards=shards)


def ensure_synthetic_text(
    cache_dir: str,
    *,
    rows: int = 2000,
    num_classes: int = 4,
    seq_len: int = 32,
    vocab_size: int = 256,
    imbalance_ratio: float = 10.0,
    seed: int = 0,
) -> str:
    """Generate train (long-tailed, ~``rows``), val and test (balanced, ``rows//5`` each) once; return the root."""
    _check_params(rows, num_classes, seq_len, vocab_size, imbalance_ratio)
    if rows // 5 < num_classes:
        raise ValueError(f"rows // 5 ({rows // 5}) must be >= num_classes ({num_classes}) for balanced val/test")
    key = (f"v{GENERATOR_VERSION}-rows{rows}-classes{num_classes}-len{seq_len}-vocab{vocab_size}"
           f"-ratio{float(imbalance_ratio):g}-seed{seed}")
    common = dict(num_classes=num_classes, seq_len=seq_len, vocab_size=vocab_size, seed=seed)

    def build(tmp: Path) -> None:
        write_synthetic_text(tmp / "train", split="train", rows=rows, imbalance_ratio=imbalance_ratio, **common)
        for split in ("val", "test"):
            write_synthetic_text(tmp / split, split=split, rows=rows // 5, imbalance_ratio=1.0, shards=2, **common)

    return os.fspath(publish_dir(Path(cache_dir) / NAME / key, build))
