"""Confusion-matrix metrics against scikit-learn, and one example worked by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from raydeep.trainers.metrics import classification_metrics, confusion_matrix, flat_metrics


def random_case(seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Skewed random labels/preds in which some classes never occur as labels and some are never predicted."""
    g = np.random.default_rng(seed)
    n = int(g.integers(1, 200))
    ids = np.arange(k)
    # Drop up to a third of the classes from each side independently, so a class can be absent
    # from the labels only, from the predictions only, or from both.
    label_classes = g.choice(ids, size=max(1, k - int(g.integers(0, k // 3 + 1))), replace=False)
    pred_classes = g.choice(ids, size=max(1, k - int(g.integers(0, k // 3 + 1))), replace=False)
    labels = g.choice(label_classes, size=n, p=g.dirichlet(np.ones(len(label_classes)) * 0.5))
    preds = g.choice(pred_classes, size=n)
    agree = g.random(n) < 0.5  # better than chance, so the figures are not all near zero
    preds = np.where(agree & np.isin(labels, pred_classes), labels, preds)
    return torch.from_numpy(preds), torch.from_numpy(labels)


CASES = [(seed, k) for k in (2, 5, 10) for seed in range(8)]


@pytest.mark.parametrize(("seed", "k"), CASES)
def test_matches_sklearn(seed: int, k: int) -> None:
    preds, labels = random_case(seed, k)
    y_pred, y_true = preds.numpy(), labels.numpy()

    cm = confusion_matrix(preds, labels, k)
    assert cm.dtype == torch.int64 and cm.shape == (k, k)
    np.testing.assert_array_equal(cm.numpy(), skm.confusion_matrix(y_true, y_pred, labels=range(k)))

    got = classification_metrics(cm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced_accuracy_score warns about unsupported classes
        want = {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "macro_f1": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
            "macro_precision": skm.precision_score(y_true, y_pred, average="macro", zero_division=0),
            "macro_recall": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
        }
        p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    for key, value in want.items():
        assert type(got[key]) is float
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert [row["label"] for row in got["per_class"]] == [str(i) for i in range(k)]
    for name, ours, theirs in [
        ("precision", [row["precision"] for row in got["per_class"]], p),
        ("recall", [row["recall"] for row in got["per_class"]], r),
        ("f1", [row["f1"] for row in got["per_class"]], f),
    ]:
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12, err_msg=name)
    assert [row["support"] for row in got["per_class"]] == s.tolist()
    assert all(type(row["support"]) is int and type(row["f1"]) is float for row in got["per_class"])


def test_cases_cover_absent_classes() -> None:
    """The random cases above do exercise every kind of absence they claim to."""
    seen = {"no labels": False, "never predicted": False, "absent from both": False}
    for seed, k in CASES:
        preds, labels = random_case(seed, k)
        lab, pred = set(labels.tolist()), set(preds.tolist())
        for c in range(k):
            seen["no labels"] |= c not in lab and c in pred
            seen["never predicted"] |= c in lab and c not in pred
            seen["absent from both"] |= c not in lab and c not in pred
    assert all(seen.values()), seen


def test_hand_computed_three_classes() -> None:
    # true \ pred   0  1  2
    #   0 (cat)     3  1  0     support 4
    #   1 (dog)     1  2  1     support 4
    #   2 (emu)     0  0  0     support 0, but predicted once: precision 0, recall 0/0 -> 0
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    preds = torch.tensor([0, 0, 0, 1, 0, 1, 1, 2])
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[3, 1, 0], [1, 2, 1], [0, 0, 0]]

    got = classification_metrics(cm, ["cat", "dog", "emu"])
    # cat: P = 3/4, R = 3/4, F1 = 2*3/(4+4) = 3/4
    # dog: P = 2/3, R = 2/4, F1 = 2*2/(4+3) = 4/7
    # emu: P = 0/1, R = 0 (no support), F1 = 0/(0+1) = 0
    assert got["per_class"] == [
        {"label": "cat", "precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4},
        {"label": "dog", "precision": 2 / 3, "recall": 0.5, "f1": 4 / 7, "support": 4},
        {"label": "emu", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    ]
    assert got["accuracy"] == 5 / 8
    assert got["macro_f1"] == pytest.approx((3 / 4 + 4 / 7 + 0) / 3, abs=1e-15)  # 37/84
    assert got["macro_precision"] == pytest.approx((3 / 4 + 2 / 3 + 0) / 3, abs=1e-15)  # 17/36
    assert got["macro_recall"] == pytest.approx((3 / 4 + 1 / 2 + 0) / 3, abs=1e-15)  # 5/12
    # emu has no true samples, so balanced accuracy averages cat and dog only.
    assert got["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2, abs=1e-15)  # 5/8

    assert flat_metrics(got) == pytest.approx({
        "val/accuracy": 5 / 8,
        "val/macro_f1": 37 / 84,
        "val/balanced_accuracy": 5 / 8,
        "val/macro_precision": 17 / 36,
        "val/macro_recall": 5 / 12,
        "val/recall/cat": 0.75, "val/f1/cat": 0.75,
        "val/recall/dog": 0.5, "val/f1/dog": 4 / 7,
        "val/recall/emu": 0.0, "val/f1/emu": 0.0,
    }, abs=1e-15)
    assert list(flat_metrics(got, prefix="test/"))[0] == "test/accuracy"


def test_class_absent_from_labels_and_preds_is_left_out_of_macro_averages() -> None:
    # Class 2 never occurs: like sklearn's f1_score without labels=, it does not drag the
    # macro figures down; it still gets its (zero) row in per_class.
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), 3)
    got = classification_metrics(cm)
    assert got["macro_f1"] == got["macro_precision"] == got["macro_recall"] == got["balanced_accuracy"] == 1.0
    assert got["per_class"][2] == {"label": "2", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_confusion_matrix_sums_over_batches_and_accepts_numpy() -> None:
    preds, labels = random_case(3, 5)
    whole = confusion_matrix(preds, labels, 5)
    parts = sum(confusion_matrix(p, y, 5) for p, y in zip(preds.split(7), labels.split(7)))
    assert torch.equal(whole, parts)
    assert classification_metrics(whole.numpy()) == classification_metrics(whole)
    # Column vectors and int32 come out the same.
    assert torch.equal(confusion_matrix(preds.int()[:, None], labels[:, None], 5), whole)


def test_empty_and_bad_inputs() -> None:
    cm = confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 4)
    assert cm.tolist() == [[0] * 4] * 4
    empty = classification_metrics(cm)
    assert empty["accuracy"] == empty["macro_f1"] == empty["balanced_accuracy"] == 0.0
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\), got values in \[0, 3\]"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([-1, 1]), 3)
    with pytest.raises(ValueError, match="differ in size: 2 vs 3"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="square"):
        classification_metrics(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="2 label names for a 3-class"):
        classification_metrics(np.eye(3, dtype=np.int64), ["a", "b"])
