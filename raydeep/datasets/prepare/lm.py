"""``raydeep data prepare --task lm``: documents packed into blocks of exactly ``--block-size`` tokens.

Within a split, every document is tokenized and followed by the tokenizer's EOS id, the
documents are concatenated, and the stream is cut into blocks; the final partial block is
dropped. Documents were assigned to splits before this (on the driver), so none straddles two.

The packing is spread over the encode tasks without sending tokens through the driver: each
work unit (a file; text-dirs: a group of files) cuts its own stream into blocks and keeps back
its last, partial block (its *tail*). The tails go to a ``split=SPLIT.tail`` partition, each row
led by its unit number; the driver concatenates them in unit order and cuts them the same way
(``pack_tails``: at most one partial block per unit reaches it). Every token is in exactly one
block or among the ``< block_size`` dropped ones, so the counts are those of packing the whole
stream at once; only where a unit's last block sits in the order differs. Blocks are ``input_ids`` only: no padding (the feature's ``pad_id`` is
``NO_PADDING``), so a mask ``ids != pad_id`` keeps every position, EOS included.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raydeep.datasets.manifest import shard_name
from raydeep.datasets.prepare.inputs import Location
from raydeep.datasets.prepare.raw_records import FieldNames, good_records
from raydeep.datasets.prepare.tokenizer import encode_documents, tokenizer_from_json
from raydeep.datasets.prepare.units import SPLITS, rows, text_chunks, unit_plan
from raydeep.datasets.schema import TOKENS_COLUMN, FeatureSpec, tokens_array
from raydeep.errors import DataError

TASK = "causal_lm"  # the manifest's task name
NO_PADDING = -1  # the feature's pad_id: every block is full, no id is padding
TAIL = ".tail"  # split=train.tail: the units' partial last blocks, packed on the driver


class BlockCutter:
    """Token arrays appended in order and cut into ``[k, block_size]`` blocks, the rest kept."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, ids: np.ndarray) -> None:
        self.parts.append(ids)
        self.size += len(ids)

    def full_blocks(self) -> np.ndarray:
        """Every whole block so far (``[0, block_size]`` when none); the remainder stays."""
        n = self.block_size
        flat = self.rest()
        k = flat.size // n
        self.parts, self.size = [flat[k * n:]], flat.size - k * n
        return flat[:k * n].reshape(k, n)

    def rest(self) -> np.ndarray:
        """The tokens not yet in a block, in order."""
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int32)


def encode_blocks(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, tokenizer_json: str, block_size: int,
                  eos_id: int) -> Iterator[pa.Table]:
    """Ray task: each unit's documents tokenized, EOS-ended and cut per split into full blocks
    (rows of split ``SPLIT``), and the unit's tails (rows of split ``SPLIT.tail``: unit, tokens...)."""
    tok = tokenizer_from_json(tokenizer_json)
    for row in rows(batch):
        files, _, codes, _ = unit_plan(row)
        cutters = [BlockCutter(block_size) for _ in SPLITS]
        for texts, start, stop in text_chunks(good_records(fs, files, fmt, fields, None), files, codes.size):
            yield from _add_documents(cutters, tok, texts, codes[start:stop], eos_id)
        tails = [(s, c.rest()) for s, c in zip(SPLITS, cutters) if c.size]
        if tails:
            unit = np.int32(row["unit"])
            yield pa.table({TOKENS_COLUMN: pa.array([np.concatenate([[unit], t]) for _, t in tails],
                                                    pa.list_(pa.int32())),
                            "split": pa.array([s + TAIL for s, _ in tails], pa.string())})


def _add_documents(cutters: list[BlockCutter], tok: Any, texts: list[str], codes: np.ndarray,
                   eos_id: int) -> Iterator[pa.Table]:
    """Append a chunk of documents to their splits' streams; yield each split's full blocks."""
    for ids, code in zip(encode_documents(tok, texts, eos_id=eos_id), codes):
        cutters[code].add(ids)
    for split, cutter in zip(SPLITS, cutters):
        blocks = cutter.full_blocks()
        if len(blocks):
            yield pa.table({TOKENS_COLUMN: tokens_array(blocks, cutter.block_size),
                            "split": pa.array([split] * len(blocks), pa.string())})


def pack_tails(out: Location, parts: str, split: str, *, block_size: int, shard_rows: int,
               seed: int | None) -> int:
    """Driver: the units' tails of ``split`` in unit order, cut into blocks written beside Ray's
    parts (shuffled by ``seed`` unless None); returns the tokens dropped (the final partial block)."""
    cutter = BlockCutter(block_size)
    for tail in _read_tails(out.fs, posixpath.join(parts, f"split={split}{TAIL}")):
        cutter.add(tail[1:])
    blocks = cutter.full_blocks()
    if seed is not None:
        blocks = blocks[np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(blocks))]
    fs, split_dir = out.fs, posixpath.join(parts, f"split={split}")
    for i in range(0, len(blocks), shard_rows):
        fs.makedirs(split_dir, exist_ok=True)
        with fs.open(posixpath.join(split_dir, f"zz-tails-{i // shard_rows:05d}.parquet"), "wb") as f:
            pq.write_table(pa.table({TOKENS_COLUMN: tokens_array(blocks[i:i + shard_rows], block_size)}), f)
    return cutter.size


def _read_tails(fs: Any, tail_dir: str) -> list[np.ndarray]:
    """The tail rows (unit number, tokens...) under ``tail_dir``, sorted by unit; the directory is
    removed. Read as int32 arrays: at most one partial block per unit reaches the driver."""
    tails: list[np.ndarray] = []
    if not fs.exists(tail_dir):
        return tails
    for path in sorted(p for p in fs.ls(tail_dir, detail=False) if p.endswith(".parquet")):
        with fs.open(path, "rb") as f:
            column = pq.read_table(f, columns=[TOKENS_COLUMN]).column(TOKENS_COLUMN).combine_chunks()
        values, offsets = column.values.to_numpy(), column.offsets.to_numpy()  # offsets index .values
        tails += [values[a:b].astype(np.int32) for a, b in zip(offsets[:-1], offsets[1:])]
    fs.rm(tail_dir, recursive=True)
    return sorted(tails, key=lambda t: int(t[0]))


def split_manifest(out: Location, parts: str, split: str, *, base: dict, feature: FeatureSpec, eos_id: int,
                   documents: int, dropped: int) -> tuple[list[tuple[str, str]], dict]:
    """(``[(written part, final shard name)]``, the split's manifest), from the parts' footers; a
    split whose documents fill no block is a DataError naming ``--block-size``."""
    part_dir = posixpath.join(parts, f"split={split}")
    written = sorted(p for p in out.fs.ls(part_dir, detail=False) if p.endswith(".parquet")) \
        if out.fs.exists(part_dir) else []
    moves, shards = [], []
    for path in written:
        with out.fs.open(path, "rb") as f:
            n = pq.ParquetFile(f).metadata.num_rows
        if n:
            shards.append({"file": shard_name(len(shards)), "rows": n})
            moves.append((path, shards[-1]["file"]))
    n_rows = sum(s["rows"] for s in shards)
    n = feature.seq_len
    if n_rows == 0:
        more = "add data" if split == "train" else f"raise --{split}-fraction or add data"
        raise DataError(f"--block-size {n}: the {split} split's {documents:,} document(s) hold {dropped:,} tokens, "
                        f"fewer than one block; lower --block-size or {more}")
    manifest = {
        "format": base["format"], "name": base["name"], "split": split, "task": TASK, "feature": feature.to_dict(),
        "num_classes": None, "label_names": None, "num_rows": n_rows, "shards": shards, "eos_id": eos_id,
        "block_size": n, "documents": documents, "tokens": n_rows * n + dropped, "dropped_tokens": dropped,
        "columns": {TOKENS_COLUMN: f"{n} token ids: documents each ended by EOS id {eos_id}, concatenated and cut; "
                                   "no padding"},
        **base,
    }
    return moves, manifest
