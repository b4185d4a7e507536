"""What a split's feature column holds, and the arrow types the data contract allows.

``FeatureSpec`` travels from the driver (where ``open_split`` inferred it) to every Ray Train
worker (which sizes its model from it), so it round-trips through plain JSON. Its dict form is
exactly the ``feature`` object of a ``_raydeep.json`` manifest: one format, not two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

LABEL_COLUMN = "label"
ID_COLUMN = "id"
TOKENS_COLUMN = "input_ids"
PIXELS_COLUMN = "pixels"
NUMERIC_COLUMN = "features"  # regression and tabular data: a vector of numbers per row
# Feature column -> kind. The order is the order we look for them in a schema.
FEATURE_COLUMNS: dict[str, Literal["tokens", "image", "numeric"]] = {
    TOKENS_COLUMN: "tokens", PIXELS_COLUMN: "image", NUMERIC_COLUMN: "numeric"}


@dataclass(frozen=True)
class FeatureSpec:
    """The model-facing description of one split's feature column."""

    column: str  # "input_ids", "pixels" or "features"
    kind: Literal["tokens", "image", "numeric"]
    seq_len: int | None = None  # tokens: every row is padded to this length
    vocab_size: int | None = None  # tokens, when a manifest records it
    pad_id: int = 0
    image_shape: tuple[int, int, int] | None = None  # images: (C, H, W) of the flat pixel list
    num_features: int | None = None  # numeric: values per row

    def __post_init__(self) -> None:
        if self.kind == "tokens":
            if self.seq_len is None or self.seq_len < 1:
                raise ValueError(f"tokens feature {self.column!r} needs seq_len >= 1, got {self.seq_len!r}")
            if self.vocab_size is not None and self.vocab_size < 2:
                raise ValueError(f"tokens feature {self.column!r}: vocab_size must be >= 2, got {self.vocab_size}")
        elif self.kind == "image":
            shape = self.image_shape
            if shape is None or len(shape) != 3 or any(int(s) < 1 for s in shape):
                raise ValueError(
                    f"image feature {self.column!r} needs image_shape (C, H, W) of positive ints, got {shape!r}"
                )
            # Frozen: normalise a list from JSON into the hashable tuple the annotation promises.
            object.__setattr__(self, "image_shape", tuple(int(s) for s in shape))
        elif self.kind == "numeric":
            if self.num_features is None or self.num_features < 1:
                raise ValueError(f"numeric feature {self.column!r} needs num_features >= 1, got {self.num_features!r}")
        else:
            raise ValueError(f"feature kind must be 'tokens', 'image' or 'numeric', got {self.kind!r}")

    @property
    def width(self) -> int:
        """Values per row: seq_len for tokens, C*H*W for images, num_features for numeric."""
        if self.kind == "tokens":
            return self.seq_len  # type: ignore[return-value]
        if self.kind == "numeric":
            return self.num_features  # type: ignore[return-value]
        return math.prod(self.image_shape)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "tokens":
            return {"column": self.column, "kind": "tokens", "seq_len": self.seq_len,
                    "vocab_size": self.vocab_size, "pad_id": self.pad_id}
        if self.kind == "numeric":
            return {"column": self.column, "kind": "numeric", "num_features": self.num_features}
        return {"column": self.column, "kind": "image", "shape": list(self.image_shape)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``; raises ValueError naming the missing or bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"feature must be a JSON object, got {type(d).__name__}")
        for field in ("column", "kind"):
            if field not in d:
                raise ValueError(f"feature has no {field!r}")
        shape = d.get("shape", d.get("image_shape"))
        return cls(
            column=str(d["column"]),
            kind=d["kind"],
            seq_len=None if d.get("seq_len") is None else int(d["seq_len"]),
            vocab_size=None if d.get("vocab_size") is None else int(d["vocab_size"]),
            pad_id=int(d.get("pad_id", 0)),
            image_shape=None if shape is None else tuple(shape),
            num_features=None if d.get("num_features") is None else int(d["num_features"]),
        )


def tokens_array(ids: Any, seq_len: int) -> pa.Array:
    """A ``list<int32>`` column from an ``[N, seq_len]`` integer array (already padded)."""
    flat = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
    offsets = np.arange(0, flat.size + 1, seq_len, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def pixels_array(pixels: Any, width: int) -> pa.Array:
    """A ``fixed_size_list<float32>[width]`` column from an ``[N, width]`` array."""
    flat = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_integer(
        t.value_type
    )


def is_numeric_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)
    )
