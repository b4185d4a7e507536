"""The model registry, the Transformer, the CNN and the LSTM: shapes, masking, learning, errors, sizes."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydeep.config import ModelConfig
from raydeep.datasets.schema import FeatureSpec
from raydeep.trainers.models import MODELS, build_model, count_parameters
from raydeep.trainers.models.registry import register
from raydeep.trainers.models.cnn import ConvClassifier
from raydeep.trainers.models.transformer import TransformerClassifier

TOKENS = FeatureSpec(column="input_ids", kind="tokens", seq_len=12, vocab_size=50, pad_id=0)
DIGITS = FeatureSpec(column="pixels", kind="image", image_shape=(1, 8, 8))
CIFAR = FeatureSpec(column="pixels", kind="image", image_shape=(3, 32, 32))


def tiny(kind: str = "transformer", **kw) -> ModelConfig:
    base = dict(kind=kind, num_classes=3, d_model=32, layers=2, heads=4, dropout=0.0, max_len=64)
    base.update(kw)
    return ModelConfig(**base)


def padded_tokens(rows: int, length: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    """Random ids in [1, vocab) with a random number of trailing pads (at least one real token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, vocab, (rows, length), generator=g)
    real = torch.randint(1, length + 1, (rows,), generator=g)
    return x.masked_fill(torch.arange(length)[None, :] >= real[:, None], 0)


# ---------------------------------------------------------------------------------------------
# Registry and sizes


def test_registry_names_and_dispatch() -> None:
    # every kind the config accepts is registered, and nothing else
    assert set(MODELS) == set(typing.get_args(ModelConfig.model_fields["kind"].annotation))
    assert isinstance(build_model(tiny(), TOKENS), TransformerClassifier)
    assert isinstance(build_model(tiny("cnn"), DIGITS), ConvClassifier)


def test_unknown_kind_and_double_registration_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown model.kind 'mlp'; registered kinds: cnn, hf, linear, "):
        build_model(ModelConfig.model_construct(kind="mlp", num_classes=2), DIGITS)
    with pytest.raises(ValueError, match="already registered"):
        register("cnn")(lambda cfg, feature: torch.nn.Identity())
    assert MODELS["cnn"].__name__ == "build_cnn"


def test_cnn_parameter_count_by_hand() -> None:
    conv1 = 1 * 32 * 3 * 3 + 32  # 320
    conv2 = 32 * 64 * 3 * 3 + 64  # 18_496
    conv3 = 64 * 64 * 3 * 3 + 64  # 36_928
    dense = (64 * 2 * 2) * 64 + 64  # 8x8 -> 4x4 -> 2x2, 64 channels: 16_448
    head = 64 * 10 + 10  # 650
    assert conv1 + conv2 + conv3 + dense + head == 72_842
    assert count_parameters(build_model(ModelConfig(kind="cnn", num_classes=10), DIGITS)) == 72_842
    # 32x32 -> 16 -> 8: only the first conv and the dense layer change.
    cifar = (3 * 32 * 9 + 32) + conv2 + conv3 + (64 * 8 * 8 * 64 + 64) + head
    assert count_parameters(build_model(ModelConfig(kind="cnn", num_classes=10), CIFAR)) == cifar == 319_178


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_transformer_parameter_count_by_formula(pooling: str) -> None:
    cfg = tiny(pooling=pooling, mlp_ratio=2.0, num_classes=5)
    d, hidden, layers, vocab, max_len, k = 32, 64, 2, 50, 64, 5
    block = (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (2 * d) + (d * hidden + hidden) + (hidden * d + d)
    expected = vocab * d + max_len * d + layers * block + 2 * d + (d * k + k) + (d if pooling == "cls" else 0)
    assert count_parameters(build_model(cfg, TOKENS)) == expected


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_transformer_tokens_shape(pooling: str) -> None:
    model = build_model(tiny(pooling=pooling), TOKENS)
    out = model(padded_tokens(5, 12))
    assert out.shape == (5, 3) and out.dtype == torch.float32
    # int32, as list<int32> parquet columns arrive, works too.
    assert model(padded_tokens(5, 12).int()).shape == (5, 3)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_transformer_images_flat_and_4d(pooling: str) -> None:
    model = build_model(tiny(pooling=pooling, patch_size=2), DIGITS).eval()
    x = torch.rand(4, 1, 8, 8)
    flat, full = model(x.reshape(4, 64)), model(x)
    assert flat.shape == full.shape == (4, 3)
    torch.testing.assert_close(flat, full)


def test_transformer_rgb_images() -> None:
    model = build_model(tiny(patch_size=4), CIFAR)
    assert model(torch.rand(2, 3 * 32 * 32)).shape == (2, 3)


@pytest.mark.parametrize("feature", [DIGITS, CIFAR], ids=["1x8x8", "3x32x32"])
def test_cnn_shapes(feature: FeatureSpec) -> None:
    model = build_model(ModelConfig(kind="cnn", num_classes=10), feature).eval()
    c, h, w = feature.image_shape
    x = torch.rand(3, c, h, w)
    flat, full = model(x.reshape(3, -1)), model(x)
    assert flat.shape == full.shape == (3, 10)
    torch.testing.assert_close(flat, full)


# ---------------------------------------------------------------------------------------------
# Masking


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_trailing_padding_does_not_change_logits(pooling: str) -> None:
    torch.manual_seed(0)
    # Dropout on, to show eval mode switches all of it (attention dropout included) off.
    model = build_model(tiny(pooling=pooling, dropout=0.2), TOKENS).eval()
    x, longer = padded_twice(6, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(longer), model(x), atol=1e-5, rtol=0)


def test_padding_mask_is_what_makes_it_invariant() -> None:
    # The same model with a different pad id treats the zeros as real tokens: logits move.
    # (Guards the test above against passing because padding happens not to matter.)
    torch.manual_seed(0)
    model = build_model(tiny(), TOKENS).eval()
    x = padded_tokens(6, 12)
    longer = torch.cat([x, torch.zeros(6, 20, dtype=x.dtype)], dim=1)
    model.pad_id = 49
    with torch.no_grad():
        assert (model(longer) - model(x)).abs().max() > 1e-3


def padded_twice(rows: int, length: int, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same padded rows, and them with ``extra`` more trailing pads (pad id 0)."""
    x = padded_tokens(rows, length)
    return x, torch.cat([x, torch.zeros(rows, extra, dtype=x.dtype)], dim=1)


def assert_empty_row_trains(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Row 1 made all padding: logits and every gradient stay finite."""
    x[1] = 0
    logits = model(x)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_all_padding_row_is_finite_forward_and_backward(pooling: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny(pooling=pooling, dropout=0.1), TOKENS).train()
    x = padded_tokens(4, 12)
    assert_empty_row_trains(model, x)
    # The real rows do not depend on the empty one.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[[0, 2, 3]], model(x[[0, 2, 3]]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Learning


def train_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_transformer_learns_which_token_marks_the_class() -> None:
    torch.manual_seed(0)
    # Class c's sequences contain marker token 40 + c somewhere among filler tokens 1..9,
    # then padding: only attention to the marker (not its position) can separate them.
    rows, length = 48, 12
    y = torch.arange(rows) % 3
    x = padded_tokens(rows, length, vocab=10, seed=1)
    lengths = (x != 0).sum(1)
    where = (torch.rand(rows) * lengths).long()
    x[torch.arange(rows), where] = 40 + y
    model = build_model(tiny(), TOKENS)
    first, last = train_steps(model, x, y, steps=40, lr=3e-3)
    assert first > 0.9  # about ln 3 = 1.10 at init
    assert last < 0.1 * first
    assert (model.eval()(x).argmax(1) == y).all()


@pytest.mark.parametrize("kind", ["transformer", "cnn"])
def test_image_models_learn_bright_half(kind: str) -> None:
    torch.manual_seed(0)
    # Class 0 is bright on the top half, class 1 on the bottom half.
    y = torch.arange(32) % 2
    x = torch.rand(32, 1, 8, 8) * 0.2
    x[y == 0, :, :4] += 0.8
    x[y == 1, :, 4:] += 0.8
    model = build_model(tiny(kind, num_classes=2), DIGITS)
    first, last = train_steps(model, x.reshape(32, 64), y, steps=30, lr=3e-3)
    assert last < 0.2 * first


# ---------------------------------------------------------------------------------------------
# Errors


def test_token_model_needs_a_vocab_size() -> None:
    no_vocab = FeatureSpec(column="input_ids", kind="tokens", seq_len=12)
    with pytest.raises(ValueError, match="set model.vocab_size"):
        build_model(tiny(), no_vocab)
    assert build_model(tiny(vocab_size=77), no_vocab).vocab_size == 77
    with pytest.raises(ValueError, match=r"model.vocab_size \(20\) is smaller than the data's vocab_size \(50\)"):
        build_model(tiny(vocab_size=20), TOKENS)


def test_sequence_longer_than_position_table() -> None:
    model = build_model(tiny(max_len=16), TOKENS)
    with pytest.raises(ValueError, match=r"sequence length 17 exceeds model.max_len \(16\)"):
        model(torch.ones(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sequence length 12 .*max_len \(8\)"):
        build_model(tiny(max_len=8), TOKENS)


def test_cls_needs_one_more_position() -> None:
    assert build_model(tiny(max_len=12), TOKENS)  # mean pooling: 12 tokens fit 12 positions
    with pytest.raises(ValueError, match=r"sequence length 12 plus 1 for the CLS token exceeds model.max_len \(12\)"):
        build_model(tiny(max_len=12, pooling="cls"), TOKENS)
    model = build_model(tiny(max_len=13, pooling="cls"), TOKENS)
    with pytest.raises(ValueError, match="sequence length 13 plus 1"):
        model(torch.ones(1, 13, dtype=torch.long))


def test_image_errors() -> None:
    with pytest.raises(ValueError, match=r"\(8x8\) must be divisible by model.patch_size \(3\)"):
        build_model(tiny(patch_size=3), DIGITS)
    with pytest.raises(ValueError, match=r"256 positions.*max_len \(64\)"):
        build_model(tiny(patch_size=2), CIFAR)
    model = build_model(tiny(), DIGITS)
    with pytest.raises(ValueError, match=r"\[B, 64\] or \[B, 1, 8, 8\], got \[2, 63\]"):
        model(torch.rand(2, 63))
    with pytest.raises(ValueError, match=r"got \[2, 3, 8, 8\]"):
        model(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="expected float pixels"):
        model(torch.ones(2, 64, dtype=torch.long))


def test_token_model_rejects_pixels() -> None:
    model = build_model(tiny(), TOKENS)
    with pytest.raises(ValueError, match="expected integer token ids"):
        model(torch.rand(2, 12))


def test_cnn_errors() -> None:
    with pytest.raises(ValueError, match="'cnn' classifies images.*model.kind: transformer"):
        build_model(tiny("cnn"), TOKENS)
    with pytest.raises(ValueError, match="at least 4x4, got 3x8"):
        build_model(tiny("cnn"), FeatureSpec(column="pixels", kind="image", image_shape=(1, 3, 8)))
    model = build_model(tiny("cnn"), DIGITS)
    with pytest.raises(ValueError, match="expected float pixels"):
        model(torch.ones(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \[2, 60\]"):
        model(torch.rand(2, 60))


# ---------------------------------------------------------------------------------------------
# The LSTM (the seed project's text model)


def tiny_lstm(**kw) -> ModelConfig:
    return tiny("lstm", **{"d_model": 16, **kw})


def test_lstm_is_registered_and_exposes_its_vocabulary() -> None:
    from raydeep.trainers.models.lstm import LSTMClassifier

    model = build_model(tiny_lstm(), TOKENS)
    assert isinstance(model, LSTMClassifier) and MODELS["lstm"].__name__ == "build_lstm"
    assert model.vocab_size == 50  # loop.value_limits checks each batch's ids against it
    assert build_model(tiny_lstm(vocab_size=77), TOKENS).vocab_size == 77
    with pytest.raises(ValueError, match=r"model.vocab_size \(20\) is smaller than the data's vocab_size \(50\)"):
        build_model(tiny_lstm(vocab_size=20), TOKENS)
    with pytest.raises(ValueError, match="set model.vocab_size"):
        build_model(tiny_lstm(), FeatureSpec(column="input_ids", kind="tokens", seq_len=12))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_lstm_parameter_count_by_formula(bidirectional: bool) -> None:
    cfg = tiny_lstm(bidirectional=bidirectional, layers=2, num_classes=5)
    d, vocab, k, dirs = 16, 50, 5, 2 if bidirectional else 1

    def layer(inp: int) -> int:  # four gates: W_ih, W_hh and two biases each, per direction
        return dirs * 4 * (inp * d + d * d + 2 * d)

    assert count_parameters(build_model(cfg, TOKENS)) == vocab * d + layer(d) + layer(dirs * d) + dirs * d * k + k


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_lstm_output_shape(task: str) -> None:
    cfg = tiny_lstm() if task == "classification" else tiny_lstm(task="regression", num_classes=None)
    model = build_model(cfg, TOKENS)
    out = model(padded_tokens(5, 12).int())  # int32, as list<int32> parquet columns arrive
    assert out.shape == (5, cfg.output_dim) and out.dtype == torch.float32


@pytest.mark.parametrize("bidirectional", [True, False])
def test_lstm_padding_to_another_length_does_not_change_logits(bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_lstm(bidirectional=bidirectional, dropout=0.2), TOKENS).eval()
    x, longer = padded_twice(6, 12, 20)
    with torch.no_grad():
        short_logits, long_logits = model(x), model(longer)
        torch.testing.assert_close(long_logits, short_logits, atol=1e-6, rtol=0)
        # One row alone gives what it gave in the batch (no dependence on the others' lengths).
        torch.testing.assert_close(model(x[2:3]), short_logits[2:3], atol=1e-6, rtol=0)
        # Guard: with another pad id the zeros are read as tokens and the logits move, so the
        # equality above comes from the mask, not from padding happening not to matter.
        model.pad_id = 49
        assert (model(longer) - model(x)).abs().max() > 1e-3


def test_lstm_reads_only_real_tokens_wherever_the_pads_are() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_lstm(), TOKENS).eval()
    x = padded_tokens(4, 12, seed=3)
    spread = torch.zeros(4, 30, dtype=x.dtype)
    spread[:, 1:25:2] = x  # the same tokens in the same order, with a pad before and between each
    with torch.no_grad():
        torch.testing.assert_close(model(spread), model(x), atol=1e-6, rtol=0)


def test_lstm_all_padding_row_is_finite_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_lstm(dropout=0.1), TOKENS).train()
    x = padded_tokens(4, 12)
    assert_empty_row_trains(model, x)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[1], model.head.bias)  # the empty row pools to zero
        torch.testing.assert_close(model(x)[[0, 2, 3]], model(x[[0, 2, 3]]), atol=1e-6, rtol=0)


def test_lstm_without_padding_reads_every_id() -> None:
    # pad_id -1 (packed blocks): id 0 is an ordinary token.
    unpadded = FeatureSpec(column="input_ids", kind="tokens", seq_len=12, vocab_size=50, pad_id=-1)
    torch.manual_seed(0)
    model = build_model(tiny_lstm(), unpadded).eval()
    x = padded_tokens(3, 12)
    with torch.no_grad():
        assert (model(x) - model(torch.where(x == 0, torch.ones_like(x), x))).abs().max() > 1e-4


def test_lstm_bf16_weights_take_integer_ids() -> None:
    # Under DeepSpeed bf16 the weights are bf16 and the ids stay integers: the embedding sets the dtype.
    model = build_model(tiny_lstm(), TOKENS).to(torch.bfloat16)
    out = model(padded_tokens(3, 12))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_lstm_learns_which_class_has_most_markers() -> None:
    from raydeep.datasets.bundled.synthetic import generate_tokens

    # The bundled synthetic-text generator: the class is the one with the most marker tokens among
    # filler, with distractors; new rows (not the training rows) must come out far above chance.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    spec = dict(num_classes=4, seq_len=16, vocab_size=64)

    def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.integers(0, 4, n)
        return torch.from_numpy(generate_tokens(y, rng=rng, **spec)), torch.from_numpy(y)

    (x, y), (x_new, y_new) = rows(256), rows(256)
    model = build_model(tiny_lstm(num_classes=4, layers=1, d_model=32),
                        FeatureSpec(column="input_ids", kind="tokens", seq_len=16, vocab_size=64, pad_id=0))
    first, last = train_steps(model, x, y, steps=60, lr=1e-2)
    assert first > 1.2  # about ln 4 = 1.39 at init
    assert last < 0.3 * first
    with torch.no_grad():
        accuracy = (model.eval()(x_new).argmax(1) == y_new).float().mean().item()
    assert accuracy > 0.7, accuracy  # chance is 0.25


def test_lstm_builds_on_the_meta_device_as_the_driver_checks_it() -> None:
    from raydeep.config import validate
    from raydeep.trainers.plan import check_model

    with torch.device("meta"):
        model = build_model(tiny_lstm(), TOKENS)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert count_parameters(model) == count_parameters(build_model(tiny_lstm(), TOKENS))
    cfg = validate({"data": {"train": "unused", "val": "unused"}, "model": {"kind": "lstm", "num_classes": 3, "d_model": 16}}, "t")
    check_model(cfg, TOKENS)  # no error


def test_lstm_refuses_images_and_numbers_in_one_line() -> None:
    from raydeep.config import validate
    from raydeep.errors import ConfigError
    from raydeep.trainers.plan import check_model

    with pytest.raises(ValueError, match=r"^model.kind 'lstm' reads token ids, but column 'pixels' holds image; "
                                         r"use model.kind: cnn or transformer for images$"):
        build_model(tiny_lstm(), DIGITS)
    numeric = FeatureSpec(column="features", kind="numeric", num_features=4)
    with pytest.raises(ValueError, match=r"holds numeric; use model.kind: linear for numeric features$"):
        build_model(tiny_lstm(), numeric)
    cfg = validate({"data": {"train": "unused", "val": "unused"}, "model": {"kind": "lstm", "num_classes": 3}}, "t")
    with pytest.raises(ConfigError) as info:
        check_model(cfg, DIGITS)  # what the driver says before Ray starts
    assert "\n" not in str(info.value) and "model.kind = 'lstm' on data.train (image in 'pixels')" in str(info.value)
    model = build_model(tiny_lstm(), TOKENS)
    with pytest.raises(ValueError, match="expected integer token ids"):
        model(torch.rand(2, 12))
