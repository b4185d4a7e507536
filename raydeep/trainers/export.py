"""``raydeep export``: a checkpoint of a ``model.kind: hf`` run as a Hugging Face model directory.

The checkpoint (a run's best, as ``raydeep evaluate`` picks it, local or on S3) is consolidated
from its ZeRO shards into the transformers model it was trained as, which ``save_pretrained``
writes with the run's label names in ``config.json`` and a tokenizer: the model directory's own
(``model.path``), else the ``tokenizer.json`` that ``raydeep data prepare`` put beside the
training split, else none, said in one line. A LoRA model (``model.lora``) saves its adapters,
or with ``merge`` the base weights with the adapters merged in. The directory appears whole or
not at all: it is written under a temporary name beside ``--out`` and renamed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from raydeep.config import Config
from raydeep.datasets.schema import FeatureSpec
from raydeep.datasets.storage import StorageConfig, is_s3, s3_errors, s3_filesystem, strip_s3
from raydeep.errors import RaydeepError
from raydeep.progress_bar import progress_console, size_text, step
from raydeep.trainers.checkpoints import STATE_FILE
from raydeep.trainers.evaluate import consolidated, load_model, located_checkpoint

# A model directory holds a tokenizer when it has one of these (a fast tokenizer, or slow-tokenizer
# vocabularies transformers converts).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
DATA_TOKENIZER = "tokenizer.json"  # raydeep data prepare writes OUTPUT/tokenizer.json beside OUTPUT/<split>/
EOS_CANDIDATES = ("</s>", "<|endoftext|>", "<eos>")
NO_ADAPTERS = "no LoRA adapters in this checkpoint"


@dataclass
class HFCheckpoint:
    """A consolidated hf checkpoint: the transformers model (a ``PeftModel`` under ``model.lora``)
    in eval mode on the CPU, and what the run recorded beside it."""

    model: nn.Module
    cfg: Config
    feature: FeatureSpec
    label_names: list[str] | None
    uri: str


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / STATE_FILE).read_text())


def hf_config_of(ckpt: Path, uri: str, *, key: str) -> Config:
    """The checkpoint's run config, refusing in one line a model that is not ``kind: hf`` (a
    built-in model has no transformers form)."""
    cfg = Config.model_validate(read_state(ckpt)["config"])
    if cfg.model.kind != "hf":
        raise RaydeepError(f"{key}: {uri}: a model.kind: {cfg.model.kind} checkpoint; only model.kind: hf "
                           "checkpoints have a Hugging Face form")
    return cfg


def load_hf_checkpoint(ckpt: Path, uri: str, *, key: str) -> HFCheckpoint:
    """Consolidate ``ckpt`` (any ZeRO stage, any world size) into its transformers model on the CPU."""
    hf_config_of(ckpt, uri, key=key)
    try:
        # zero_to_fp32's prints and progress bars, peft's and transformers' advice on building: none of it
        # is the command's output or actionable (a failure raises)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            wrapper, cfg, feature, state = load_model(ckpt)
    except ValueError as exc:  # the model directory the run was built from is gone or changed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RaydeepError(f"{key}: {uri}: cannot rebuild the model: {first}") from None
    return HFCheckpoint(wrapper.model, cfg, feature, state.get("label_names"), uri)


# ---------------------------------------------------------------------------------------------
# The tokenizer


def _model_dir_tokenizer(path: str | None) -> tuple[Any | None, str]:
    if not path:
        return None, "model.path is unset"
    local = os.path.expanduser(path)
    if os.path.isdir(local) and not any(os.path.isfile(os.path.join(local, f)) for f in TOKENIZER_FILES):
        return None, f"model.path {path} has no tokenizer files"
    from transformers import AutoTokenizer  # heavy: only hf checkpoints get here

    try:
        return AutoTokenizer.from_pretrained(local if os.path.isdir(local) else path, local_files_only=True), \
            f"the model directory's ({path})"
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"model.path {path}'s tokenizer does not load ({first})"


def data_tokenizer_uri(train: str) -> str | None:
    """Where ``raydeep data prepare`` put the tokenizer of the split ``train`` (its parent folder's
    ``tokenizer.json``); None for a bundled data set, which has none."""
    if train.startswith("datasets://"):
        return None
    split = train.rstrip("/")
    if split.endswith(".parquet") or any(c in split for c in "*?["):
        split = posixpath.dirname(split)  # a file or a glob: its folder is the split
    parent = posixpath.dirname(split)
    return posixpath.join(parent, DATA_TOKENIZER) if parent else DATA_TOKENIZER


def _data_tokenizer(cfg: Config, feature: FeatureSpec, storage: StorageConfig | None, *, key: str
                    ) -> tuple[Any | None, str]:
    uri = data_tokenizer_uri(cfg.data.train)
    if uri is None:
        return None, f"data.train {cfg.data.train} is a bundled data set without a tokenizer"
    with tempfile.TemporaryDirectory(prefix="raydeep-tok-") as tmp:
        if is_s3(uri):
            fs = s3_filesystem(storage or cfg.storage)
            with s3_errors(uri, key=key, storage=storage or cfg.storage):
                if not fs.isfile(strip_s3(uri)):
                    return None, f"data.train has no {uri}"
                local = os.path.join(tmp, DATA_TOKENIZER)
                fs.get(strip_s3(uri), local)
        elif os.path.isfile(uri):
            local = uri
        else:
            return None, f"data.train has no {uri}"
        from transformers import PreTrainedTokenizerFast  # see _model_dir_tokenizer

        try:
            tok = PreTrainedTokenizerFast(tokenizer_file=local)
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return None, f"{uri} does not load ({first})"
    # the special tokens the data was made with: padding by the manifest's pad id, documents ended by EOS
    vocab = tok.get_vocab()
    if feature.pad_id >= 0:
        tok.pad_token = tok.convert_ids_to_tokens(feature.pad_id)
    eos = next((t for t in EOS_CANDIDATES if t in vocab), None)
    if eos is not None:
        tok.eos_token = eos
    return tok, f"the prepared data's ({uri})"


def find_tokenizer(cfg: Config, feature: FeatureSpec, storage: StorageConfig | None = None, *,
                   key: str = "export") -> tuple[Any | None, str]:
    """``(tokenizer or None, where it came from or why there is none)``: the model directory's own,
    else the prepared training data's."""
    tok, why_not_model = _model_dir_tokenizer(cfg.model.path)
    if tok is not None:
        return tok, why_not_model
    tok, why_not_data = _data_tokenizer(cfg, feature, storage, key=key)
    if tok is not None:
        return tok, why_not_data
    return None, f"{why_not_model}, and {why_not_data}"


# ---------------------------------------------------------------------------------------------
# Writing the directory


def check_out(out: str, overwrite: bool, *, key: str = "--out") -> Path:
    """``--out`` as a local path that may be written: absent, empty, or replaced by ``overwrite``."""
    if is_s3(out):
        raise RaydeepError(f"{key} {out}: export writes a local directory; copy it to S3 afterwards")
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise RaydeepError(f"{key} {out}: exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise RaydeepError(f"{key} {out}: exists and is not empty; pass --overwrite to replace it")
    return p


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """A temporary directory beside ``out`` to fill; renamed to ``out`` (replacing it) only when the
    block finishes, removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def with_labels(config: Any, label_names: list[str] | None) -> None:
    """The run's label names as transformers' ``id2label`` / ``label2id`` (pipelines print them)."""
    if label_names:
        config.id2label = {i: str(n) for i, n in enumerate(label_names)}
        config.label2id = {str(n): i for i, n in enumerate(label_names)}


def check_merge(cfg: Config, merge: bool, uri: str, *, key: str) -> None:
    """``--merge`` needs adapters; adapters alone need a base that exists outside the checkpoint."""
    lora = cfg.model.lora is not None
    if merge and not lora:
        raise RaydeepError(f"{key} --merge: {uri}: {NO_ADAPTERS}")
    if lora and not merge and not cfg.model.pretrained:
        raise RaydeepError(f"{key}: {uri}: LoRA on a randomly initialised base (model.pretrained: false): the "
                           "base weights exist only in this checkpoint, so adapters alone are no model; use --merge")


def standalone(ck: HFCheckpoint) -> nn.Module:
    """The plain transformers model: a LoRA model's adapters merged into its base weights (peft)."""
    return ck.model.merge_and_unload() if ck.cfg.model.lora is not None else ck.model


def save_model(model: nn.Module, ck: HFCheckpoint, dest: Path, *, adapters: bool) -> str:
    """``save_pretrained`` into ``dest``; returns what was written, in words."""
    if adapters:
        # adapters name their base: the directory the run loaded its pretrained weights from
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path = ck.cfg.model.path
        model.save_pretrained(str(dest))
        return f"LoRA adapters for {ck.cfg.model.path} (load with peft; --merge writes a standalone model)"
    with_labels(model.config, ck.label_names if ck.cfg.model.task == "classification" else None)
    model.save_pretrained(str(dest))
    arch = (model.config.architectures or [type(model).__name__])[0]
    n = sum(p.numel() for p in model.parameters())
    return f"{arch}, {n:,} parameters"


def quiet_transformers() -> None:
    """No per-shard progress bars from transformers on a command's console (errors still show)."""
    from transformers.utils import logging as hf_logging  # see _model_dir_tokenizer

    hf_logging.disable_progress_bar()


def export_command(path: str, out: str, *, merge: bool = False, overwrite: bool = False,
                   storage: StorageConfig | None = None) -> Path:
    """Write the hf checkpoint ``path`` (a run directory, checkpoint, or ``s3://`` of either) as a
    Hugging Face directory at ``out``; returns ``out``."""
    key = "export"
    dest = check_out(out, overwrite)  # before any download or consolidation
    quiet_transformers()
    progress = progress_console()  # stderr: stdout says what was written
    with located_checkpoint(path, storage) as where:
        cfg = hf_config_of(where.local, where.uri, key=key)  # refusals before the weights load
        check_merge(cfg, merge, where.uri, key=key)
        with step(f"consolidating {where.uri.rstrip('/').rsplit('/', 1)[-1]}", console=progress) as s:
            ck = load_hf_checkpoint(where.local, where.uri, key=key)
            s.result = consolidated(ck.model, read_state(where.local))
    adapters = cfg.model.lora is not None and not merge
    if merge:
        with step("merging the LoRA adapters into the base weights", console=progress) as s:
            model = standalone(ck)
            s.result = f"{sum(p.numel() for p in model.parameters()):,} parameters"
    else:
        model = ck.model if adapters else standalone(ck)
    tok, source = find_tokenizer(ck.cfg, ck.feature, storage or where.storage, key=key)
    with atomic_directory(dest) as tmp:
        with step(f"saving to {dest}", console=progress) as s:
            what = save_model(model, ck, tmp, adapters=adapters)
            if tok is not None:
                tok.save_pretrained(str(tmp))
            files = [p for p in tmp.rglob("*") if p.is_file()]
            s.result = f"{len(files)} files, {size_text(sum(p.stat().st_size for p in files))}"
    print(f"wrote {dest}: {what}, from {ck.uri}")
    if ck.label_names and ck.cfg.model.task == "classification" and not adapters:
        print(f"labels: {', '.join(ck.label_names)}")
    print(f"tokenizer: {source}" if tok is not None else f"no tokenizer written: {source}")
    return dest
