"""``model.kind: hf``: a Hugging Face model from a local directory (or a hub id in transformers'
own cache), for classification, regression or causal language modelling.

The model is the real ``AutoModelFor*`` (``from_pretrained``, or ``from_config`` for
``pretrained: false``) behind a thin adapter that gives it raydeep's model contract:
``forward(input_ids [B, L]) -> logits`` with the attention mask derived from the data's
``pad_id`` (``-1``: packed blocks, no padding), as the built-in transformer masks padding.

Under ZeRO-3 the model is built inside transformers' DeepSpeed integration
(``HfDeepSpeedConfig`` alive before ``from_pretrained``): each parameter is partitioned over the
workers as it is created and loaded, so no worker ever holds the whole model.

Everything that can be checked without the weights is checked here and raises ValueError with
one line (the driver builds every model on the meta device before Ray starts): the directory,
config.json, a known architecture, weights present when ``pretrained``, the data's token ids
fitting the model's vocabulary and its sequence length fitting the position table.
"""

from __future__ import annotations

import contextlib

import os
import warnings
from typing import Any

import torch
from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models.registry import register

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_ZERO3_CONFIGS: list[Any] = []  # transformers keeps only a weak reference: keep each alive for the process


class HFModel(nn.Module):
    """The ``AutoModelFor*`` model, called with ``input_ids`` and an attention mask, returning logits."""

    def __init__(self, model: nn.Module, pad_id: int, task: str) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.task = task
        self.vocab_size = int(model.config.vocab_size)  # loop.value_limits checks the ids against it

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = None if self.pad_id < 0 else (input_ids != self.pad_id).long()
        extra = {"use_cache": False} if self.task == "causal_lm" else {}
        logits = self.model(input_ids=input_ids, attention_mask=mask, **extra).logits
        return logits.squeeze(-1) if self.task == "regression" else logits


def resolve(path: str) -> str:
    """``model.path`` as transformers should open it: a local directory (checked), else a hub id."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ValueError(f"model.path = {path!r}: no config.json in this directory (expected a Hugging Face "
                             "model directory, as save_pretrained writes it)")
        return expanded
    if os.path.exists(expanded) or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ValueError(f"model.path = {path!r}: not a directory (expected a Hugging Face model directory "
                         "or a hub id such as org/name)")
    return path  # a hub id: transformers resolves it from its cache (or the hub, when online)


def load_hf_config(path: str) -> Any:
    """The model's ``PretrainedConfig``; ValueError with transformers' first line if it cannot be read."""
    from transformers import AutoConfig  # heavy optional import: only hf models need transformers

    where = resolve(path)
    try:
        return AutoConfig.from_pretrained(where)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"model.path = {path!r}: transformers cannot read its config ({first})") from None


def check_fit(cfg: ModelConfig, hf_config: Any, feature: FeatureSpec) -> None:
    """The data's tokens must index the model's embedding and fit its position table."""
    if feature.kind != "tokens":
        raise ValueError(f"model.kind 'hf' reads token ids, but column {feature.column!r} holds {feature.kind}")
    vocab = int(getattr(hf_config, "vocab_size", 0) or 0)
    if feature.vocab_size is not None and vocab and feature.vocab_size > vocab:
        raise ValueError(f"the data's tokenizer has {feature.vocab_size} ids but {cfg.path}'s vocabulary "
                         f"{vocab}: prepare the data with this model's tokenizer (data prepare --tokenizer "
                         f"{cfg.path})")
    positions = getattr(hf_config, "max_position_embeddings", None)
    if positions and feature.seq_len and feature.seq_len > positions:
        raise ValueError(f"sequences of {feature.seq_len} tokens exceed {cfg.path}'s max_position_embeddings "
                         f"({positions}); prepare the data with a smaller --max-len / --block-size")
    if cfg.pretrained and os.path.isdir(os.path.expanduser(cfg.path or "")):
        d = os.path.expanduser(cfg.path or "")
        if not any(os.path.isfile(os.path.join(d, f)) for f in WEIGHT_FILES):
            raise ValueError(f"model.pretrained: true, but {cfg.path} holds no weights ({', '.join(WEIGHT_FILES)}); "
                             "set model.pretrained: false to train from its config")


def check_data_tokenizer(cfg: ModelConfig, split_uri: str) -> None:
    """A hf model's data must be tokenized by the model's own tokenizer: same size is not enough
    (ids would index other tokens' embeddings, silently). Compared when both sides are local
    files: the model directory's tokenizer.json and the one ``data prepare`` wrote beside the split."""
    model_dir = os.path.expanduser(cfg.path or "")
    data_root = os.path.dirname(os.path.abspath(os.path.expanduser(split_uri.rstrip("/"))))
    mine, theirs = os.path.join(model_dir, "tokenizer.json"), os.path.join(data_root, "tokenizer.json")
    if cfg.kind != "hf" or "://" in split_uri or not (os.path.isfile(mine) and os.path.isfile(theirs)):
        return
    from tokenizers import Tokenizer  # deferred with transformers: only hf runs read tokenizers here

    if Tokenizer.from_file(mine).get_vocab(with_added_tokens=True) != \
            Tokenizer.from_file(theirs).get_vocab(with_added_tokens=True):
        raise ValueError(f"{split_uri} was tokenized with {theirs}, whose tokens and ids differ from the model's "
                         f"{mine}; prepare the data with --tokenizer {cfg.path}")


def auto_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # see load_hf_config

    return AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification


def head_config(cfg: ModelConfig, hf_config: Any, feature: FeatureSpec) -> Any:
    """The config with raydeep's head: ``num_labels`` outputs, the data's padding id (decoders pick
    the last real token of a padded row by it)."""
    if cfg.task != "causal_lm":
        hf_config.num_labels = cfg.output_dim
        hf_config.problem_type = "regression" if cfg.task == "regression" else "single_label_classification"
    if feature.pad_id >= 0:
        hf_config.pad_token_id = feature.pad_id
    return hf_config


def zero3_construction(ds_config: dict[str, Any] | None) -> None:
    """Before building under ZeRO-3: tell transformers, so it partitions parameters as they load."""
    if not ds_config or int(ds_config.get("zero_optimization", {}).get("stage", 0)) != 3:
        return
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig  # see load_hf_config

    if not deepspeed.comm.is_initialized():  # zero.Init reads the world size from DeepSpeed's comm,
        deepspeed.init_distributed(auto_mpi_discovery=False)  # which wraps Ray Train's process group
    _ZERO3_CONFIGS.append(HfDeepSpeedConfig(ds_config))


@register("hf", partitioned=True)
def build_hf(cfg: ModelConfig, feature: FeatureSpec, ds_config: dict[str, Any] | None = None) -> nn.Module:
    hf_config = head_config(cfg, load_hf_config(cfg.path or ""), feature)
    check_fit(cfg, hf_config, feature)
    auto = auto_class(cfg.task)
    on_meta = torch.empty(0).device.type == "meta"  # the driver's shape check: no weights read
    zero3_construction(None if on_meta else ds_config)
    if cfg.pretrained and not on_meta:
        try:
            with quiet_transformers():
                model, info = auto.from_pretrained(resolve(cfg.path or ""), config=hf_config, dtype=torch.float32,
                                                   output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a weight's shape differs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"model.path = {cfg.path!r}: transformers cannot load its weights ({first})") from None
        line = loading_line(cfg.path or "", info)
        if line:
            print(line, flush=True)  # one line per worker (Ray folds identical ones)
    else:
        model = auto.from_config(hf_config, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora is not None:
        model = with_lora(model, cfg)
    return HFModel(model, feature.pad_id, cfg.task)


@contextlib.contextmanager
def quiet_transformers():
    """transformers at ERROR, without progress bars, for a load: each worker otherwise prints a
    weight-loading bar and a multi-line LOAD REPORT table (``loading_line`` says what matters)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def loading_line(path: str, info: dict[str, Any]) -> str | None:
    """One line for what ``from_pretrained`` did not take from the checkpoint (a new head's
    weights, typically) and what of the checkpoint it left unused; None when it matched."""
    def names(keys: Any) -> str:
        keys = sorted(keys or [])
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    parts = []
    if info.get("missing_keys"):
        parts.append(f"newly initialised (not in the checkpoint): {names(info['missing_keys'])}")
    if info.get("mismatched_keys"):
        parts.append(f"re-initialised (shape differs): {names(k for k, *_ in info['mismatched_keys'])}")
    if info.get("unexpected_keys"):
        parts.append(f"unused from the checkpoint: {names(info['unexpected_keys'])}")
    return f"raydeep: model.path {path}: " + "; ".join(parts) if parts else None


def with_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """``model`` with peft's LoRA adapters: the base frozen; a classifier's new head trains too
    (peft's SEQ_CLS task keeps it in ``modules_to_save``)."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model  # optional: the raydeep[lora] extra
    except ImportError:
        raise ValueError("model.lora needs peft, which is not installed: pip install 'raydeep[lora]'") from None
    lora = cfg.lora
    task = TaskType.CAUSAL_LM if cfg.task == "causal_lm" else TaskType.SEQ_CLS
    from transformers.pytorch_utils import Conv1D

    # GPT-2-style models keep their projections in transformers' Conv1D (weights stored transposed):
    # peft needs fan_in_fan_out for them, and warns once per module when it has to guess.
    transposed = any(isinstance(m, Conv1D) for m in model.modules())
    try:
        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates
            warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            return get_peft_model(model, LoraConfig(task_type=task, r=lora.r, lora_alpha=lora.alpha,
                                                    lora_dropout=lora.dropout, target_modules=lora.target_modules,
                                                    fan_in_fan_out=transposed))
    except ValueError as exc:  # e.g. a target module name the model does not have
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"model.lora: {first}") from None
