"""The bundled data sets, generated on first use into the cache, and the ``datasets://NAME/SPLIT?k=v``
URIs that name them (``resolve_bundled``)."""

from __future__ import annotations

import math
import os
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from raydeep.datasets.bundled.digits import ensure_digits_lt
from raydeep.datasets.bundled.seed_regression import ensure_seed_regression
from raydeep.datasets.bundled.synthetic import ensure_synthetic_text
from raydeep.errors import DataError

BUNDLED_SCHEME = "datasets://"
SPLIT_NAMES = ("train", "val", "test")


def default_cache_dir() -> str:
    return os.environ.get("RAYDEEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "raydeep")


def _int_param(v: str) -> int:
    return int(v)


def _float_param(v: str) -> float:
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(v)
    return x


# name -> (the generator, the URI parameters it takes and how each is parsed)
BUNDLED: dict[str, tuple[Callable[..., str], dict[str, Callable[[str], Any]]]] = {
    "digits-lt": (ensure_digits_lt, {"imbalance_ratio": _float_param, "seed": _int_param,
                                     "val_per_class": _int_param, "test_per_class": _int_param}),
    "synthetic-text": (ensure_synthetic_text, {"rows": _int_param, "num_classes": _int_param,
                                               "seq_len": _int_param, "vocab_size": _int_param,
                                               "imbalance_ratio": _float_param, "seed": _int_param}),
    "seed-regression": (ensure_seed_regression, {"rows": _int_param, "val_rows": _int_param,
                                                 "noise": _float_param, "slope": _float_param,
                                                 "intercept": _float_param, "seed": _int_param}),
}


def resolve_bundled(uri: str, *, key: str, cache_dir: str | None = None) -> str:
    """``datasets://NAME/SPLIT?k=v`` -> the split's directory, generating the set on first use."""
    parts = urlsplit(uri)
    name, split = parts.netloc, parts.path.strip("/")
    if name not in BUNDLED:
        raise DataError(f"{key}: {uri}: unknown bundled data set {name!r}; known: {', '.join(BUNDLED)}")
    if split not in SPLIT_NAMES:
        raise DataError(f"{key}: {uri}: split must be one of {', '.join(SPLIT_NAMES)}, "
                        f"e.g. {BUNDLED_SCHEME}{name}/train; got {split!r}")
    ensure, allowed = BUNDLED[name]
    params: dict[str, Any] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k not in allowed:
            raise DataError(f"{key}: {uri}: unknown parameter {k!r}; allowed: {', '.join(allowed)}")
        if k in params:
            raise DataError(f"{key}: {uri}: parameter {k!r} given twice")
        try:
            params[k] = allowed[k](v)
        except ValueError:
            kind = "an integer" if allowed[k] is _int_param else "a finite number"
            raise DataError(f"{key}: {uri}: {k} = {v!r}: expected {kind}") from None
    try:
        root = ensure(cache_dir or default_cache_dir(), **params)
    except ValueError as exc:
        raise DataError(f"{key}: {uri}: {exc}") from None
    return os.path.join(root, split)
