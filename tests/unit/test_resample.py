import numpy as np
import pytest

from raydeep.datasets.resample import resample_batch
from raydeep.trainers.class_weights import expected_sampled_counts, sampling_rates


@pytest.mark.parametrize("sampling", ["oversample", "undersample", "sqrt"])
def test_resampling_reaches_expected_class_counts(sampling):
    counts = [1000, 100, 10]
    labels = np.repeat(np.arange(3), counts)
    feats = np.arange(len(labels))
    rates = np.asarray(sampling_rates(counts, sampling))
    expected = np.asarray(expected_sampled_counts(counts, sampling))
    # Many independent batches: the mean class count converges to the exact expectation.
    totals = np.zeros(3)
    trials = 200
    for t in range(trials):
        out = resample_batch({"label": labels, "x": feats}, rates, seed=t)
        totals += np.bincount(out["label"], minlength=3)
        assert np.array_equal(labels[out["x"]], out["label"])  # rows stay whole
    assert np.allclose(totals / trials, expected, rtol=0.02, atol=0.5)


def test_resampling_is_seeded():
    labels = np.repeat(np.arange(2), [50, 5])
    rates = np.asarray(sampling_rates([50, 5], "oversample"))
    a = resample_batch({"label": labels}, rates, seed=1)["label"]
    b = resample_batch({"label": labels}, rates, seed=1)["label"]
    c = resample_batch({"label": labels}, rates, seed=2)["label"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # oversampling to the head: the tail's 5 rows become exactly 50 (integer rate 10)
    assert np.bincount(a).tolist() == [50, 50]
