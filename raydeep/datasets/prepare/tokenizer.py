"""Hugging Face ``tokenizers``: train a BPE or WordPiece tokenizer, load a ``tokenizer.json`` (a file,
or a model directory's), and turn texts into fixed-length ``input_ids`` rows or EOS-ended documents.

Trained tokenizers put ``[PAD]`` at id 0 (the data contract's default ``pad_id``). A loaded
tokenizer's padding token is its model directory's ``pad_token``, else its own padding setting,
else the first of ``PAD_CANDIDATES`` it knows; its end-of-sequence token likewise (``eos_token``,
else ``EOS_CANDIDATES``). Padding and truncation are done here, not by the tokenizer, so that the
untruncated length of every sequence is known and the manifest can say how many were truncated.
The tokenizer's post-processor (e.g. BERT's ``[CLS] ... [SEP]``) applies: ``encode_batch`` adds
special tokens by default.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raydeep.errors import DataError

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
EOS_TOKEN = "<|endoftext|>"  # added to a tokenizer trained for --task lm
PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>", "[SEP]")
KINDS = ("bpe", "wordpiece")
TOKENIZER_FILE = "tokenizer.json"
# A model directory without tokenizer.json may still hold a slow tokenizer transformers can convert.
SLOW_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int, length: int | None = None,
                    eos: bool = False) -> Any:
    """A new tokenizer trained on ``texts`` (the training split only: see prepare); ``eos``: with an
    ``<|endoftext|>`` special token, which separates documents in packed causal-LM blocks."""
    specials = [EOS_TOKEN] if eos else []
    # deferred: tokenizers is heavy and only prepare and inspect of a token split need it
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "bpe":
        # Byte-level: every string is representable, so there is no unknown token.
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, *specials], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, UNK_TOKEN, *specials],
                                            show_progress=False)
    else:
        raise DataError(f"--train-tokenizer {kind!r}: expected one of {', '.join(KINDS)}")
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def load_tokenizer(text: str, *, where: str) -> Any:
    """A tokenizer from the contents of a ``tokenizer.json``; DataError naming ``where`` if not one."""
    from tokenizers import Tokenizer  # deferred: see train_tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{where}: not a Hugging Face tokenizer.json ({first})") from None


def pad_id_of(tok: Any, *, where: str, pad_token: str | None = None) -> int:
    """The padding id: the model directory's ``pad_token``, the tokenizer's padding setting, or a
    known padding token; DataError naming ``where`` when there is none."""
    if pad_token is not None and tok.token_to_id(pad_token) is not None:
        return int(tok.token_to_id(pad_token))
    padding = tok.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in PAD_CANDIDATES:
        i = tok.token_to_id(token)
        if i is not None:
            return int(i)
    raise DataError(f"{where}: the tokenizer has no padding token (its padding setting is off and it has none of "
                    f"{', '.join(PAD_CANDIDATES)}); add one, e.g. tokenizer.add_special_tokens(['[PAD]'])")


def eos_id_of(tok: Any, *, where: str, eos_token: str | None = None) -> int:
    """The end-of-sequence id: the model directory's ``eos_token``, else the first of
    ``EOS_CANDIDATES`` the tokenizer knows; DataError naming ``where`` when there is none."""
    if eos_token is not None:
        i = tok.token_to_id(eos_token)
        if i is None:
            raise DataError(f"{where}: its eos_token {eos_token!r} is not in the tokenizer's vocabulary")
        return int(i)
    for token in EOS_CANDIDATES:
        i = tok.token_to_id(token)
        if i is not None:
            return int(i)
    raise DataError(f"{where}: the tokenizer has no end-of-sequence token (no eos_token in a model directory's "
                    f"{_SPECIAL_FILES[0]}, and none of {', '.join(EOS_CANDIDATES)}); --task lm ends every document "
                    "with one: add it, e.g. tokenizer.add_special_tokens(['<|endoftext|>'])")


def plain(tok: Any) -> Any:
    """The tokenizer with its own padding and truncation off (we pad and count truncation ourselves)."""
    tok.no_padding()
    tok.no_truncation()
    return tok


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(tok: Any, texts: Sequence[str], *, max_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``([N, max_len] int32 ids padded with pad_id, [N] int32 untruncated lengths)``."""
    encodings = tok.encode_batch(list(texts))
    ids = np.full((len(encodings), max_len), pad_id, dtype=np.int32)
    lengths = np.empty(len(encodings), dtype=np.int32)
    for i, enc in enumerate(encodings):
        row = enc.ids
        lengths[i] = len(row)
        n = min(len(row), max_len)
        ids[i, :n] = row[:n]
    return ids, lengths


def decode(tok: Any, ids: Sequence[int], pad_id: int, *, special: bool = False) -> str:
    """The text of ``ids`` without padding; ``special``: with special tokens (EOS) shown."""
    return tok.decode([int(i) for i in ids if int(i) != pad_id], skip_special_tokens=not special)


def encode_documents(tok: Any, texts: Sequence[str], *, eos_id: int) -> list[np.ndarray]:
    """Each text's int32 ids ending with ``eos_id``: appended, unless the tokenizer's post-processor
    already ended the document with it (BERT's ``[SEP]``), so no document carries two."""
    out = []
    for enc in tok.encode_batch(list(texts)):
        ids = enc.ids
        if not ids or ids[-1] != eos_id:
            ids = [*ids, eos_id]
        out.append(np.asarray(ids, dtype=np.int32))
    return out


_CACHE: dict[str, Any] = {}


def tokenizer_from_json(text: str) -> Any:
    """A plain tokenizer from ``tokenizer.json`` text, kept per process: a Ray worker runs many
    encode tasks, and parsing a large vocabulary for each would dominate small tasks."""
    key = sha256(text.encode())
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = plain(load_tokenizer(text, where="tokenizer"))
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------
# --tokenizer PATH: a tokenizer.json, or a Hugging Face model directory


@dataclass
class LoadedTokenizer:
    """A tokenizer and where it came from: its ``tokenizer.json`` bytes (copied to OUTPUT), the
    manifest's ``tokenizer_source`` kind and path, and the special tokens a model directory names."""

    tokenizer: Any
    data: bytes
    kind: str  # "file", "model_dir" or "trained"
    path: str | None
    eos_token: str | None = None
    pad_token: str | None = None

    @property
    def source(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


def load_tokenizer_path(fs: Any, path: str, shown: str, *, local: bool) -> LoadedTokenizer:
    """``--tokenizer PATH`` through an fsspec filesystem: a ``tokenizer.json`` file, or a model
    directory (its ``tokenizer.json``, else its slow-tokenizer files through transformers, local only)."""
    where = f"--tokenizer {shown}"
    if fs.isfile(path):
        data = fs.cat_file(path)
        return LoadedTokenizer(load_tokenizer(_utf8(data, where), where=where), data, "file", shown)
    if not fs.isdir(path):
        raise DataError(f"{where}: no such file or directory (expected a Hugging Face tokenizer.json or a model "
                        "directory holding one)")
    eos, pad = _special_tokens(fs, path, where)
    if fs.isfile(posixpath.join(path, TOKENIZER_FILE)):
        data = fs.cat_file(posixpath.join(path, TOKENIZER_FILE))
        tok = load_tokenizer(_utf8(data, where), where=f"{where}/{TOKENIZER_FILE}")
        return LoadedTokenizer(tok, data, "model_dir", shown, eos, pad)
    slow = [n for n in SLOW_FILES if fs.isfile(posixpath.join(path, n))]
    if not slow:
        raise DataError(f"{where}: a directory with no {TOKENIZER_FILE} and no slow-tokenizer files "
                        f"({', '.join(SLOW_FILES)}); expected a Hugging Face model directory")
    if not local:
        raise DataError(f"{where}: has no {TOKENIZER_FILE}, and its slow tokenizer ({slow[0]}) loads only from a "
                        "local directory; copy the directory to local disk")
    return _slow_tokenizer(path, shown)


def _slow_tokenizer(path: str, shown: str) -> LoadedTokenizer:
    """A model directory's slow-tokenizer files converted to a fast tokenizer by transformers."""
    # transformers is a heavy optional import (seconds): only for a model directory without tokenizer.json.
    from transformers import AutoTokenizer

    where = f"--tokenizer {shown}"
    try:
        hf = AutoTokenizer.from_pretrained(path, local_files_only=True)  # never a hub download
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; one line either way
        raise DataError(f"{where}: transformers could not load its tokenizer ({_first_line(exc)})") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"{where}: transformers loaded a slow {type(hf).__name__} with no fast tokenizer behind it; "
                        f"save a {TOKENIZER_FILE} into the directory (e.g. with the tokenizers library)")
    data = backend.to_str().encode()
    return LoadedTokenizer(load_tokenizer(data.decode(), where=where), data, "model_dir", shown,
                           hf.eos_token, hf.pad_token)


def _special_tokens(fs: Any, path: str, where: str) -> tuple[str | None, str | None]:
    """(eos_token, pad_token) a model directory names in tokenizer_config.json, else special_tokens_map.json."""
    eos = pad = None
    for name in _SPECIAL_FILES:
        file = posixpath.join(path, name)
        if not fs.isfile(file):
            continue
        try:
            config = json.loads(fs.cat_file(file))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{where}/{name}: not valid JSON ({_first_line(exc)})") from None
        if isinstance(config, dict):
            eos = eos or _token(config.get("eos_token"))
            pad = pad or _token(config.get("pad_token"))
    return eos, pad


def _token(value: Any) -> str | None:
    """A special token as configs write it: a string, or an AddedToken dict with its ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise DataError(f"{where}: not a Hugging Face tokenizer.json (not UTF-8 text)") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
