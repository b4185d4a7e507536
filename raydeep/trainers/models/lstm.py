"""The seed project's (bi)LSTM text classifier: embedding -> packed LSTM -> masked mean -> head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models.registry import register


class LSTMClassifier(nn.Module):
    """Embeds token ids, runs a ``layers``-deep (bi)LSTM of ``d_model`` units per direction, mean-pools
    the outputs over the real tokens and maps them to ``output_dim`` values (logits, or one for regression).

    Padding is masked exactly: the LSTM reads packed sequences, so neither direction ever steps over a
    pad (a bidirectional LSTM over padded input would read the trailing pads first going backward,
    and the same sentence padded to two lengths would get two different logits).
    """

    def __init__(self, cfg: ModelConfig, feature: FeatureSpec) -> None:
        super().__init__()
        if feature.kind != "tokens":
            raise ValueError(
                f"model.kind 'lstm' reads token ids, but column {feature.column!r} holds {feature.kind}; "
                + ("use model.kind: linear for numeric features" if feature.kind == "numeric"
                   else "use model.kind: cnn or transformer for images")
            )
        vocab = cfg.vocab_size or feature.vocab_size
        if vocab is None:
            raise ValueError(f"column {feature.column!r} records no vocab_size; set model.vocab_size "
                             "(e.g. --set model.vocab_size=30522)")
        if feature.vocab_size is not None and vocab < feature.vocab_size:
            # Ids past the table fail as an IndexError on CPU and a device-side assert on GPU.
            raise ValueError(f"model.vocab_size ({vocab}) is smaller than the data's vocab_size ({feature.vocab_size})")
        self.vocab_size = int(vocab)  # loop.value_limits checks every batch's ids against it
        self.pad_id = feature.pad_id  # -1: the data has no padding
        d = cfg.d_model
        self.embed = nn.Embedding(self.vocab_size, d)
        self.lstm = nn.LSTM(d, d, num_layers=cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0)  # between layers only
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(d * (2 if cfg.bidirectional else 1), cfg.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"expected integer token ids of shape [B, L], got {x.dtype} {list(x.shape)}")
        real = x != self.pad_id  # [B, L]
        # Real tokens to the front, in order (a stable sort): packing reads a row's first `length`
        # positions, so this keeps the mask exact wherever the pads are, not only when trailing.
        order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices
        x, real = x.gather(1, order), real.gather(1, order)
        lengths = real.sum(dim=1)
        # Packing needs every length >= 1 and the lengths on the CPU; an all-padding row reads its
        # first pad, and its pooled vector is zeroed below (as the transformer zeroes it).
        packed = pack_padded_sequence(self.drop(self.embed(x.long())), lengths.clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # zeros past each length
        weight = real.unsqueeze(-1).to(h.dtype)
        pooled = (h * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)
        return self.head(self.drop(pooled))


@register("lstm")
def build_lstm(cfg: ModelConfig, feature: FeatureSpec) -> nn.Module:
    return LSTMClassifier(cfg, feature)
