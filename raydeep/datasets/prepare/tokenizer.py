"""Hugging Face ``tokenizers``: train a BPE or WordPiece tokenizer, load a ``tokenizer.json``, and
turn texts into fixed-length ``input_ids`` rows.

Trained tokenizers put ``[PAD]`` at id 0 (the data contract's default ``pad_id``). A loaded
tokenizer's padding token is its own padding setting, else the first of ``PAD_CANDIDATES`` it
knows. Padding and truncation are done here, not by the tokenizer, so that the untruncated
length of every sequence is known and the manifest can say how many were truncated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from raydeep.errors import DataError

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
PAD_CANDIDATES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")
KINDS = ("bpe", "wordpiece")


def train_tokenizer(kind: str, texts: Iterable[str], *, vocab_size: int, length: int | None = None) -> Any:
    """A new tokenizer trained on ``texts`` (the training split only: see prepare)."""
    # deferred: tokenizers is heavy and only prepare and inspect of a token split need it
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "bpe":
        # Byte-level: every string is representable, so there is no unknown token.
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, UNK_TOKEN],
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


def pad_id_of(tok: Any, *, where: str) -> int:
    padding = tok.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in PAD_CANDIDATES:
        i = tok.token_to_id(token)
        if i is not None:
            return int(i)
    raise DataError(f"{where}: the tokenizer has no padding token (its padding setting is off and it has none of "
                    f"{', '.join(PAD_CANDIDATES)}); add one, e.g. tokenizer.add_special_tokens(['[PAD]'])")


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


def decode(tok: Any, ids: Sequence[int], pad_id: int) -> str:
    return tok.decode([int(i) for i in ids if int(i) != pad_id])
