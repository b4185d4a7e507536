"""A pre-LayerNorm Transformer encoder classifier over token ids or image patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models.inputs import as_images, image_shape_of
from raydeep.trainers.models.registry import register


class Block(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = dropout
        hidden = max(1, round(mlp_ratio * d_model))
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TransformerClassifier(nn.Module):
    """Embeds tokens (or patches), runs ``layers`` blocks, pools, and classifies.

    Token input is ``[B, L]`` integer ids where ``pad_id`` marks padding; padded positions are
    masked out of attention and of mean pooling, so trailing padding does not change the logits.
    Image input is ``[B, C*H*W]`` or ``[B, C, H, W]``, cut into ``patch_size`` squares.
    """

    def __init__(self, cfg: ModelConfig, feature: FeatureSpec) -> None:
        super().__init__()
        self.kind = feature.kind
        self.pooling = cfg.pooling
        self.max_len = cfg.max_len
        self.pad_id = feature.pad_id
        extra = 1 if cfg.pooling == "cls" else 0
        d = cfg.d_model

        if feature.kind == "tokens":
            vocab = cfg.vocab_size or feature.vocab_size
            if vocab is None:
                raise ValueError(
                    f"column {feature.column!r} records no vocab_size; set model.vocab_size "
                    "(e.g. --set model.vocab_size=30522)"
                )
            if feature.vocab_size is not None and vocab < feature.vocab_size:
                # Ids past the table fail as an IndexError on CPU and a device-side assert on GPU.
                raise ValueError(
                    f"model.vocab_size ({vocab}) is smaller than the data's vocab_size ({feature.vocab_size})"
                )
            self.vocab_size = int(vocab)
            self.embed: nn.Module = nn.Embedding(self.vocab_size, d)
            if feature.seq_len is not None:
                self._check_len(feature.seq_len)
        elif feature.kind == "image":
            self.image_shape = image_shape_of(feature)
            c, h, w = self.image_shape
            p = cfg.patch_size
            if h % p or w % p:
                raise ValueError(
                    f"image height and width ({h}x{w}) must be divisible by model.patch_size ({p})"
                )
            # A stride-p, kernel-p convolution is a linear map of each flattened p x p patch.
            self.embed = nn.Conv2d(c, d, kernel_size=p, stride=p)
            patches = (h // p) * (w // p)
            if patches + extra > cfg.max_len:
                raise ValueError(
                    f"{h}x{w} images in {p}x{p} patches make {patches} positions"
                    f"{' plus the CLS token' if extra else ''}, more than model.max_len ({cfg.max_len}); "
                    "raise model.max_len or model.patch_size"
                )
        else:
            raise ValueError(f"the transformer takes tokens or images, not {feature.kind!r}"
                             + ("; use model.kind: linear for numeric features" if feature.kind == "numeric" else ""))

        self.pos = nn.Parameter(torch.zeros(1, cfg.max_len, d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if cfg.pooling == "cls" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.output_dim)  # one output for task: regression
        self._init_weights(cfg.layers)

    def _init_weights(self, layers: int) -> None:
        # GPT-2's init: PyTorch's fan-in defaults give the embedding unit variance, which swamps
        # the small learned positions and makes early logits large; std 0.02 keeps every
        # residual-stream input on one scale.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos, std=0.02)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)
        # Each block adds two projections into the residual stream; shrinking them by
        # sqrt(2 * layers) keeps its variance from growing with depth (GPT-2, section 2.3).
        for block in self.blocks:
            for proj in (block.proj, block.fc2):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    def _check_len(self, length: int) -> None:
        extra = 1 if self.pooling == "cls" else 0
        if length + extra > self.max_len:
            cls_note = " plus 1 for the CLS token" if extra else ""
            raise ValueError(
                f"sequence length {length}{cls_note} exceeds model.max_len ({self.max_len}); "
                "raise model.max_len or truncate the data"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
                raise ValueError(f"expected integer token ids of shape [B, L], got {x.dtype} {list(x.shape)}")
            self._check_len(x.shape[1])
            real = x != self.pad_id  # [B, L]
            h = self.embed(x.long())
        else:
            img = as_images(x, self.image_shape, self.embed.weight.dtype)
            h = self.embed(img).flatten(2).transpose(1, 2)  # [B, patches, d]
            real = None

        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
            if real is not None:
                real = torch.cat([real.new_ones(real.shape[0], 1), real], dim=1)
        h = self.drop(h + self.pos[:, : h.shape[1]].to(h.dtype))

        attn_mask = None
        if real is not None:
            # A row that is all padding would give softmax over nothing (NaN, which then
            # spreads through the batch's gradients); let such rows attend everywhere instead.
            # Their pooled output is zero below, so what they attend to does not matter.
            keys = real | ~real.any(dim=1, keepdim=True)
            attn_mask = keys[:, None, None, :]  # [B, 1, 1, L]: broadcast over heads and queries
        for block in self.blocks:
            h = block(h, attn_mask)
        h = self.ln_f(h)

        if self.pooling == "cls":
            pooled = h[:, 0]
        elif real is None:
            pooled = h.mean(dim=1)
        else:
            weight = real.unsqueeze(-1).to(h.dtype)
            pooled = (h * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)
        return self.head(pooled)


@register("transformer")
def build_transformer(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module:
    return TransformerClassifier(cfg, feature)
