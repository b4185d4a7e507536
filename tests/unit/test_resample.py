import numpy as np
import pyarrow as pa
import pytest

from raydeep.datasets.resample import resampled_blocks, resampled_rows
from raydeep.trainers.class_weights import expected_sampled_counts, sampling_rates

COUNTS = [1000, 100, 10]


@pytest.mark.parametrize("sampling", ["oversample", "undersample", "sqrt"])
def test_every_draw_is_within_one_row_of_the_expected_class_counts(sampling):
    labels = np.repeat(np.arange(3), COUNTS)
    rates = sampling_rates(COUNTS, sampling)
    expected = np.asarray(expected_sampled_counts(COUNTS, sampling))
    totals = np.zeros(3)
    trials = 200
    for t in range(trials):
        index = resampled_rows(labels, rates, np.random.default_rng(t))
        counts = np.bincount(labels[index], minlength=3)
        assert np.all(np.abs(counts - expected) < 1), counts
        totals += counts
    assert np.allclose(totals / trials, expected, rtol=0.01)  # and exact on average


def test_each_row_gets_its_extra_copy_with_the_rates_probability():
    labels = np.zeros(10, dtype=np.int64)
    picks = np.zeros(10)
    for t in range(2000):
        picks += np.bincount(resampled_rows(labels, [1.3], np.random.default_rng(t)), minlength=10)
    assert np.allclose(picks / 2000, 1.3, atol=0.05)  # every row equally: 1 copy + 0.3


def test_resampling_is_seeded_and_copies_do_not_sit_together():
    labels = np.repeat(np.arange(2), [50, 5])
    rates = sampling_rates([50, 5], "oversample")
    a = resampled_rows(labels, rates, np.random.default_rng(1))
    assert np.array_equal(a, resampled_rows(labels, rates, np.random.default_rng(1)))
    assert not np.array_equal(a, resampled_rows(labels, rates, np.random.default_rng(2)))
    # oversampling to the head: the tail's 5 rows become exactly 50 (integer rate 10), shuffled in
    assert np.bincount(labels[a]).tolist() == [50, 50] and not np.array_equal(np.sort(a), a)


def test_a_streamed_blocks_draw_is_keyed_on_the_epoch():
    block = pa.table({"label": pa.array(np.repeat(np.arange(2), [60, 40]), pa.int64()), "id": np.arange(100)})
    rates = sampling_rates([60, 40], "undersample")

    def drawn(epoch):
        (out,) = resampled_blocks([block], rates, (7, epoch, 0))
        assert np.bincount(out["label"].to_numpy()).tolist() == [40, 40]
        assert (out["label"].to_numpy() == (out["id"].to_numpy() >= 60)).all()  # rows stay whole
        return sorted(out["id"].to_pylist())

    assert drawn(0) == drawn(0) and drawn(0) != drawn(1)
