"""Tokens/s and MFU of a ~350M-parameter GPT-style causal LM on one GPU, through raydeep's engine.

    .venv/bin/python benchmarks/gpu_mfu.py                     # one GPU, bf16, ZeRO-1; < 5 minutes
    .venv/bin/python benchmarks/gpu_mfu.py --device cpu --tiny # smoke test of the code path, no GPU

The model (GPT-2 medium's shape: 24 layers, d=1024, 16 heads, 1024 tokens, 50304-token vocab,
tied embeddings; ~355M parameters) is defined here, since raydeep's registry holds
classifiers; everything around it is raydeep's: ``Config`` validation, ``deepspeed_config``
(ZeRO-1, bf16), ``build_optimizer`` (AdamW) inside ``create_engine``, and the worker loop's
step (``engine(x)``, ``engine.backward``, ``engine.step``). No Ray: one process, one GPU, a
one-rank NCCL group (Ray Train would set up the same group for a one-worker run).

Data are random token ids already on the GPU: this measures the model step, not ingest.

MFU convention (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's ``estimate_mfu``):

    flops per token = 6 * N + 12 * L * H * Q * T
      N  parameters that take part in matmuls: all parameters except the position table
         (the tied token embedding is counted once, as the output projection)
      L  layers, H heads, Q head dimension, T sequence length; 12*L*H*Q*T is attention's
         QK^T and AV matmuls (2 flops per multiply-add, x3 for forward + backward), counted
         over the full T x T score matrix even though causal attention computes half of it
    MFU = tokens/s * flops per token / peak, peak = 989e12 (H100/H200 SXM dense bf16 tensor-core
         TFLOP/s, no sparsity)

Timing: ``--warmup`` steps are discarded (allocator growth, cuBLAS heuristics), then
``--steps`` steps are timed between two ``torch.cuda.synchronize()`` calls. Prints one JSON
object; a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

PEAK_FLOPS = 989e12  # H100/H200 SXM, dense bf16


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash attention on GPUs
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    """Pre-LN decoder; the output projection shares the token embedding's weights."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            nn.init.normal_(block.fc2.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # logits [B, T, vocab]


def flops_per_token(model: GPT, layers: int, heads: int, head_dim: int, seq_len: int) -> float:
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return 6 * n + 12 * layers * heads * head_dim * seq_len


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="a 2-layer, d=64 model: checks the code path in seconds")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--zero-stage", type=int, default=1)
    args = p.parse_args(argv)

    layers, d, heads, vocab = (2, 64, 4, 512) if args.tiny else (24, 1024, 16, 50304)
    seq_len = 64 if args.tiny else args.seq_len
    batch = 2 if args.tiny else args.batch
    if args.tiny:
        args.warmup, args.steps = 1, 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist

    if args.device == "cuda":
        torch.cuda.set_device(0)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=0, world_size=1)

    from raydeep.config import validate
    from raydeep.trainers.engine import create_engine, deepspeed_config

    cfg = validate({
        "name": "gpu-mfu",
        "data": {"train": "-", "val": "-", "batch_size": batch},
        # raydeep's model section describes its classifiers; the GPT above is built here instead
        "model": {"kind": "transformer", "num_classes": 2, "d_model": d, "layers": layers, "heads": heads},
        "optim": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.1, "grad_clip": 1.0},
        "deepspeed": {"zero_stage": args.zero_stage, "precision": "bf16"},
        "scaling": {"num_workers": 1, "use_gpu": args.device == "cuda"},
    }, "gpu_mfu.py")
    torch.manual_seed(0)
    model = GPT(vocab, d, layers, heads, seq_len)
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, layers, heads, d // heads, seq_len)
    print(f"{n_params / 1e6:.1f}M parameters; {batch * seq_len:,} tokens per step; "
          f"{fpt / 1e9:.2f} GFLOP per token", file=sys.stderr)
    t_init = time.time()
    engine = create_engine(cfg, model, deepspeed_config(cfg, world_size=1, device=args.device), args.device)
    init_s = time.time() - t_init

    gen = torch.Generator(device=engine.device).manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), device=engine.device, generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> torch.Tensor:
        logits = engine(x)
        loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        engine.backward(loss)
        engine.step()
        return loss.detach()

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0
    tokens_per_s = args.steps * batch * seq_len / elapsed
    result = {
        "what": "gpu_mfu", "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "parameters": n_params, "layers": layers, "d_model": d, "heads": heads, "seq_len": seq_len,
        "batch": batch, "zero_stage": args.zero_stage, "precision": "bf16",
        "engine_init_s": round(init_s, 2), "step_s": round(elapsed / args.steps, 4),
        "tokens_per_s": round(tokens_per_s, 1), "flops_per_token": fpt,
        "mfu": round(tokens_per_s * fpt / PEAK_FLOPS, 4), "peak_flops": PEAK_FLOPS,
        "final_loss": round(float(loss), 4),
        "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device == "cuda" else None,
    }
    print(f"{tokens_per_s:,.0f} tokens/s, {elapsed / args.steps * 1e3:.1f} ms/step, MFU {result['mfu']:.1%} "
          f"of {PEAK_FLOPS / 1e12:.0f} TFLOP/s", file=sys.stderr)
    print(json.dumps(result))
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
