"""``raydeep generate``: continue a prompt with a causal language model, to look at what it learned.

The model comes from a run or checkpoint (consolidated as ``raydeep export`` does, with the same
tokenizer) or from an exported Hugging Face directory (``from_pretrained``). Decoding is
transformers' own ``generate``: greedy at temperature 0, else sampled (softmax of logits /
temperature, optionally only the top k), reproducible under a seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raydeep.datasets.storage import StorageConfig, is_s3
from raydeep.errors import RaydeepError
from raydeep.trainers.checkpoints import STATE_FILE
from raydeep.trainers.evaluate import located_checkpoint
from raydeep.trainers.export import find_tokenizer, hf_config_of, load_hf_checkpoint, quiet_transformers, standalone

KEY = "generate"
DEVICES = ("cpu", "cuda", "auto")
LM_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")  # class-name endings of transformers' causal LMs


@dataclass
class Generated:
    text: str  # prompt and continuation, decoded together
    prompt_ids: list[int]
    new_ids: list[int]  # at most max_new_tokens; fewer when the model ended the text (EOS)


def check_options(max_new_tokens: int, temperature: float, top_k: int | None, device: str) -> None:
    if max_new_tokens < 1:
        raise RaydeepError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if temperature < 0:
        raise RaydeepError(f"--temperature {temperature}: must be 0 (greedy) or more (sampled)")
    if top_k is not None and top_k < 1:
        raise RaydeepError(f"--top-k {top_k}: must be at least 1")
    if top_k is not None and temperature == 0:
        raise RaydeepError("--top-k samples among the k likeliest tokens; it needs --temperature > 0")
    if device not in DEVICES:
        raise RaydeepError(f"--device {device}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RaydeepError("--device cuda: no CUDA device is visible to torch here; use --device cpu")


def is_exported(path: str) -> bool:
    """A Hugging Face directory (config.json, no raydeep checkpoint or run files)."""
    p = Path(path).expanduser()
    return (not is_s3(path) and (p / "config.json").is_file() and not (p / STATE_FILE).is_file()
            and not (p / "summary.json").is_file())


def _exported(path: str) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # heavy: only this command

    local = str(Path(path).expanduser())
    config = AutoConfig.from_pretrained(local, local_files_only=True)
    arch = (getattr(config, "architectures", None) or ["?"])[0]
    if not arch.endswith(LM_ARCHITECTURES):
        raise RaydeepError(f"{KEY}: {path}: a {arch} model; generate needs a causal language model "
                           "(e.g. GPT2LMHeadModel, LlamaForCausalLM)")
    try:
        tok = AutoTokenizer.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RaydeepError(f"{KEY}: {path}: no usable tokenizer in the directory ({first})") from None
    return AutoModelForCausalLM.from_pretrained(local, local_files_only=True, dtype=torch.float32), tok


def _from_checkpoint(path: str, storage: StorageConfig | None) -> tuple[nn.Module, Any]:
    if not is_s3(path) and (Path(path).expanduser() / "adapter_config.json").is_file():
        raise RaydeepError(f"{KEY}: {path}: LoRA adapters without their base; export with --merge and "
                           "generate from that directory")
    with located_checkpoint(path, storage) as where:
        cfg = hf_config_of(where.local, where.uri, key=KEY)
        if cfg.model.task != "causal_lm":
            raise RaydeepError(f"{KEY}: {where.uri}: a model.task: {cfg.model.task} checkpoint; generate needs a "
                               "causal_lm model")
        ck = load_hf_checkpoint(where.local, where.uri, key=KEY)
    tok, source = find_tokenizer(ck.cfg, ck.feature, storage or where.storage, key=KEY)
    if tok is None:
        raise RaydeepError(f"{KEY}: {ck.uri}: no tokenizer to turn the prompt into ids: {source}")
    return standalone(ck), tok


def load_lm(path: str, storage: StorageConfig | None = None) -> tuple[nn.Module, Any]:
    """(causal LM in eval mode, its tokenizer) from an exported directory, a run or a checkpoint."""
    model, tok = _exported(path) if is_exported(path) else _from_checkpoint(path, storage)
    return model.eval(), tok


def generate(model: nn.Module, tok: Any, prompt: str, *, max_new_tokens: int = 40, temperature: float = 0.0,
             top_k: int | None = None, seed: int | None = None, device: str = "auto") -> Generated:
    """Continue ``prompt``: greedy at ``temperature`` 0, else sampled (``seed`` makes it repeatable)."""
    check_options(max_new_tokens, temperature, top_k, device)
    where = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise RaydeepError("--prompt: empty (the tokenizer gave no tokens); give some text to continue")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit and ids.shape[1] + max_new_tokens > limit:
        raise RaydeepError(f"--prompt ({ids.shape[1]} tokens) + --max-new-tokens {max_new_tokens} exceed the "
                           f"model's {limit} positions")
    eos = tok.eos_token_id if tok.eos_token_id is not None else model.config.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": 1.0} \
        if temperature > 0 else {"do_sample": False}
    model = model.to(where)
    if seed is not None:
        torch.manual_seed(seed)  # seeds every device's generator
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(where), attention_mask=torch.ones_like(ids).to(where),
                             max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, **sampling)
    new = out[0, ids.shape[1]:].tolist()
    if eos is not None and eos in new:  # generate pads after EOS only in batches; cut at the first EOS
        new = new[: new.index(eos) + 1]
    text = tok.decode(ids[0].tolist() + new, skip_special_tokens=True)
    return Generated(text=text, prompt_ids=ids[0].tolist(), new_ids=new)


def generate_command(path: str, prompt: str, *, max_new_tokens: int = 40, temperature: float = 0.0,
                     top_k: int | None = None, seed: int | None = None, device: str = "auto",
                     storage: StorageConfig | None = None) -> Generated:
    """Load ``path`` (run, checkpoint or exported directory) and print the continued prompt."""
    check_options(max_new_tokens, temperature, top_k, device)  # before seconds of loading
    if not is_s3(path) and not os.path.exists(os.path.expanduser(path)):
        raise RaydeepError(f"{KEY}: {path}: no such file or directory")
    quiet_transformers()
    model, tok = load_lm(path, storage)
    result = generate(model, tok, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      seed=seed, device=device)
    print(result.text)
    return result
