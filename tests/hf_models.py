"""Tiny Hugging Face models for tests: random-init configs saved with ``save_pretrained``, so the
code under test loads them through the real ``from_pretrained`` path (never from the hub).

Three shapes of the field's models: a BERT-like encoder, a GPT-2-like and a Llama-like decoder,
each with a byte-level BPE tokenizer trained on the given texts and saved beside the weights.
"""

from __future__ import annotations

from pathlib import Path

ARCHS = ("bert", "gpt2", "llama")
WIDTH, LAYERS, HEADS, POSITIONS = 32, 2, 2, 128


def tiny_tokenizer(texts: list[str], vocab_size: int = 300):
    """A fast tokenizer (byte-level BPE) trained on ``texts``, with pad and eos tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="<|endoftext|>")


def hf_config(arch: str, vocab_size: int, *, pad_id: int = 0, eos_id: int = 1):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if arch == "bert":
        return BertConfig(vocab_size=vocab_size, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, intermediate_size=2 * WIDTH, max_position_embeddings=POSITIONS,
                          pad_token_id=pad_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
                          bos_token_id=eos_id, eos_token_id=eos_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
                           max_position_embeddings=POSITIONS, bos_token_id=eos_id, eos_token_id=eos_id,
                           pad_token_id=pad_id)
    raise ValueError(arch)


def save_tiny_model(out: Path, arch: str, *, vocab_size: int | None = None, tokenizer=None, seed: int = 0) -> Path:
    """A random-init ``arch`` model (an encoder's base model, a decoder's LM head model) with
    ``tokenizer`` (or none) saved into ``out``; its vocabulary is the tokenizer's unless given."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    vocab = vocab_size or len(tokenizer)
    torch.manual_seed(seed)
    config = hf_config(arch, vocab)
    model = AutoModel.from_config(config) if arch == "bert" else AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
