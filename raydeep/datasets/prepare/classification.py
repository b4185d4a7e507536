"""``raydeep data prepare`` (``--task classification``, the default): labelled records, each
tokenized and padded or truncated to ``--max-len``, with its label id, record id and untruncated
length; the manifest counts labels and truncations."""

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
from raydeep.datasets.prepare.tokenizer import encode, tokenizer_from_json
from raydeep.datasets.prepare.units import SPLITS, rows, text_chunks, unit_plan
from raydeep.datasets.schema import FeatureSpec, tokens_array

TASK = "text_classification"  # the manifest's task name


def encode_rows(batch: dict, *, fs: Any, fmt: str, fields: FieldNames, known: set[str] | None, tokenizer_json: str,
            max_len: int, pad_id: int) -> Iterator[Any]:
    """Classification: each record tokenized and padded or truncated to ``max_len``, with its label,
    id, untruncated length and split."""
    tok = tokenizer_from_json(tokenizer_json)

    def table(texts: list[str], start: int, stop: int, codes: np.ndarray, label_ids: np.ndarray, offset: int):
        ids, lengths = encode(tok, texts, max_len=max_len, pad_id=pad_id)
        return pa.table({
            "input_ids": tokens_array(ids, max_len),
            "label": pa.array(label_ids[start:stop], pa.int64()),
            "id": pa.array(np.arange(offset + start, offset + stop, dtype=np.int64)),
            "num_tokens": pa.array(lengths, pa.int32()),
            "split": pa.array(np.array(SPLITS, dtype=object)[codes[start:stop]], pa.string()),
        })

    for row in rows(batch):
        files, offset, codes, label_ids = unit_plan(row)
        for texts, start, stop in text_chunks(good_records(fs, files, fmt, fields, known), files, codes.size):
            yield table(texts, start, stop, codes, label_ids, offset)


def split_manifest(out: Location, parts: str, split: str, base: dict, feature: FeatureSpec, plan: dict,
                    max_len: int) -> tuple[list[tuple[str, str]], dict]:
    """Classification: (``[(written part, final shard name)]``, the split's manifest) from the
    written parts' label and length columns."""
    part_dir = posixpath.join(parts, f"split={split}")
    written = sorted(p for p in out.fs.ls(part_dir, detail=False) if p.endswith(".parquet"))
    k = len(plan["names"])
    hist = np.zeros(k, dtype=np.int64)
    truncated = 0
    shards = []
    moves = []
    for i, path in enumerate(written):
        with out.fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read(columns=["label", "num_tokens"])
        hist += np.bincount(table.column("label").to_numpy(), minlength=k)
        truncated += int((table.column("num_tokens").to_numpy() > max_len).sum())
        shards.append({"file": shard_name(i), "rows": table.num_rows})
        moves.append((path, shard_name(i)))
    manifest = {
        "format": base["format"], "name": base["name"], "split": split, "task": TASK,
        "feature": feature.to_dict(), "num_classes": k, "label_names": plan["names"], "num_rows": int(hist.sum()),
        "shards": shards, "label_histogram": hist.tolist(), "max_len": max_len, "truncated": truncated,
        "columns": {"input_ids": f"token ids, padded with {feature.pad_id} or truncated to max_len",
                    "label": "label id (see label_names)", "id": "record number, unique across splits",
                    "num_tokens": "token count before truncation"},
        **base,
    }
    return moves, manifest
