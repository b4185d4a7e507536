"""Config files as YAML: a file, the files its ``base:`` lines name, ``--set`` overrides, and
who set each key. Plain mappings only (``config.py`` validates the result), so this is a leaf.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from raydeep.errors import ConfigError

BASE_KEY = "base"
SET = "--set"  # the origin of a value given on the command line
DEFAULT = "default"  # the origin of a value no file and no --set gave

Origins = dict[tuple[str, ...], str]
"""Leaf key path (``("optim", "lr")``) -> who set it: a config file, named as the user or its
referring ``base:`` line gave it, or ``--set``. A value that is not a mapping is a leaf."""



def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.layers=6"`` -> (["model", "layers"], 6); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set model.layers=6")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str], origins: Origins | None = None) -> dict:
    """Each ``--set KEY=VALUE`` in order; the value replaces what is there (a mapping too: it is
    not merged). ``origins``, if given, records ``--set`` for what each one set."""
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == BASE_KEY:
            raise ConfigError(f"--set {text!r}: base: is read from a config file before --set applies; "
                              "write it in the file")
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {} if child is None else child
                if not isinstance(child, dict):
                    raise ConfigError(f"--set {text!r}: {'.'.join(path[:-1])} is not a section")
                node[part] = child
            node = child
        node[path[-1]] = value
        if origins is not None:
            _set_origins(origins, tuple(path), value, SET)
    return raw


def _leaves(value: Any, path: tuple[str, ...]):
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaves(child, path + (str(key),))
    else:
        yield path


def _set_origins(origins: Origins, path: tuple[str, ...], value: Any, source: str) -> None:
    """``source`` now owns ``path``: forget what was recorded under it, and any leaf that
    enclosed it (a ``null`` section that is now a mapping), then record ``value``'s leaves."""
    for key in [k for k in origins if k[:len(path)] == path or path[:len(k)] == k]:
        del origins[key]
    for leaf in _leaves(value, path):
        origins[leaf] = source


_ABSENT = object()  # a key the base does not have

# Mappings whose entries are values, not sections: a file's mapping replaces its base's whole.
# A search space is one decision; merging would search every parameter the base searched as
# well, and would mix two distributions of one parameter into an invalid entry.
REPLACED_WHOLE = {("tune", "space")}


def _replaces_whole(path: tuple[str, ...], base: dict, over: dict) -> bool:
    if path in REPLACED_WHOLE:
        return True
    return bool(path) and "name" in base and "name" in over and base["name"] != over["name"]


def merge(base: Any, over: Any, *, source: str = "", origins: Origins | None = None,
          path: tuple[str, ...] = ()) -> Any:
    """``over`` (a config file) laid over ``base`` (the file its ``base:`` names).

    * Two mappings merge key by key, recursively: the file keeps the base's keys it does not
      mention.
    * Anything else replaces: a list, a scalar, ``null``, and a value whose form differs in the
      two files. ``deepspeed: ds.json`` over ``deepspeed: {zero_stage: 2}`` (or the reverse)
      takes the file's form only: a user's ds_config.json is used as is, so keys from the
      other form would be ignored or contradict it.
    * A section whose ``name`` differs from the base's is another kind of thing and replaces
      the base's whole: ``schedule: {name: step, step_size: 2}`` over a cosine schedule does not
      inherit cosine's ``min_lr_ratio``; ``optim``, ``tune.scheduler`` and ``tune.search`` the
      same. With the same ``name``, or none in the file, the sections merge. (The run's own
      top-level ``name`` is a plain value.)
    * ``tune.space`` replaces whole (see ``REPLACED_WHOLE``).

    ``origins``, if given, records ``source`` for every leaf ``over`` set.
    """
    if isinstance(base, dict) and isinstance(over, dict) and not _replaces_whole(path, base, over):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base.get(key, _ABSENT), value, source=source, origins=origins, path=path + (str(key),))
        return out
    if origins is not None:
        _set_origins(origins, path, over, source)
    return over


def file_of(loc: tuple, origins: Origins | None, given: str) -> str:
    """The file that holds the key at ``loc``: the one that set it or the leaf enclosing it,
    else the one file that set everything under it; otherwise (a missing key, a check across
    files, a --set value) the file given."""
    if not origins:
        return given
    path = tuple(str(p) for p in loc)
    for i in range(len(path), 0, -1):
        if path[:i] in origins:
            return given if origins[path[:i]] == SET else origins[path[:i]]
    under = {source for key, source in origins.items() if key[:len(path)] == path}
    return under.pop() if len(under) == 1 and SET not in under else given


def load_raw(path: str | os.PathLike) -> Any:
    """One file's YAML, as written (``base:`` and all); ``{}`` for an empty file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{where} not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return raw if raw is not None else {}


def read_chain(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """``[(name, raw)]`` for the file given and each file its ``base:`` names in turn (a base's
    path is relative to the file that names it), without their ``base:`` keys. Names are as
    the user gave the first file, joined with each ``base:``."""
    chain: list[tuple[str, Any]] = []
    seen: set[Path] = set()
    name, p = str(path), Path(path)
    while True:
        raw = load_raw(p)
        seen.add(p.resolve())
        if not isinstance(raw, dict):
            if chain:
                raise ConfigError(f"{name}: expected a mapping of sections at the top level, got "
                                  f"{type(raw).__name__} (it is the base: of {chain[-1][0]})")
            return [(name, raw)]  # validate() says what is wrong with the file given
        base = raw.pop(BASE_KEY, None)
        chain.append((name, raw))
        if base is None:
            return chain
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{name}: base = {base!r}: expected the path of another config file, "
                              "relative to this one")
        nxt = p.parent / os.path.expanduser(base)
        nxt_name = os.path.normpath(nxt)
        if not nxt.is_file():
            raise ConfigError(f"{name}: base: {base}: config file not found ({nxt_name})")
        if nxt.resolve() in seen:
            cycle = " -> ".join([n for n, _ in chain] + [nxt_name])
            raise ConfigError(f"{name}: base: {base} makes a cycle: {cycle}")
        name, p = nxt_name, nxt


def flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30, allow_unicode=True)
    return text.removesuffix("...\n").strip()
