"""The statistics of tools/analysis/compare.py against values computed by hand."""
import pytest

from cbam_mmdet.runtime.sweep_stats import bootstrap_mean_interval, paired_difference, summarize


def test_summarize_mean_and_sample_std():
    summary = summarize([0.1, 0.2, 0.3])
    assert summary['n'] == 3
    assert summary['mean'] == pytest.approx(0.2)
    assert summary['std'] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / (3 - 1))


def test_summarize_without_spread():
    assert summarize([0.4]) == dict(n=1, mean=0.4, std=None)
    assert summarize([]) == dict(n=0, mean=None, std=None)


def test_two_differences_span_the_interval():
    # Resampled means of [a, b]: a (1/4), (a + b) / 2 (1/2), b (1/4); 1/4 > 2.5% on each side.
    assert bootstrap_mean_interval([-0.01, 0.03]) == pytest.approx((-0.01, 0.03))


def test_a_rare_extreme_falls_outside_the_interval():
    # Means of 4 draws from [0, 0, 0, 1] are k/4, k ~ Binomial(4, 1/4): P(k=0) = 0.316 holds the
    # 2.5% quantile; P(k <= 2) = 0.949 < 0.975 < P(k <= 3) = 0.996 puts the 97.5% one at 0.75.
    assert bootstrap_mean_interval([0.0, 0.0, 0.0, 1.0]) == pytest.approx((0.0, 0.75))


def test_interval_is_reproducible_and_seeded():
    values = [0.013, -0.002, 0.021, 0.008, 0.017]
    first = bootstrap_mean_interval(values, seed=3)
    assert bootstrap_mean_interval(values, seed=3) == first
    low, high = first
    assert min(values) <= low < sum(values) / len(values) < high <= max(values)


def test_interval_refuses_bad_input():
    with pytest.raises(ValueError, match='at least 2 values'):
        bootstrap_mean_interval([0.1])
    with pytest.raises(ValueError, match=r'confidence must be in \(0, 1\)'):
        bootstrap_mean_interval([0.1, 0.2], confidence=95)


def test_paired_difference_pairs_by_seed():
    baseline = {0: 0.10, 1: 0.20, 2: 0.30, 5: 0.5}
    variant = {2: 0.60, 0: 0.15, 1: 0.20, 3: 0.9}  # seeds 3 and 5 have no partner
    diff = paired_difference(baseline, variant)
    assert diff['seeds'] == [0, 1, 2] and diff['n'] == 3
    assert diff['differences'] == pytest.approx([0.05, 0.0, 0.3])
    assert diff['mean'] == pytest.approx(0.35 / 3)
    # The smallest and the largest difference each have a resample mean of probability
    # 1/27 > 2.5% (all three draws equal), so the 95% interval is [0, 0.3].
    assert (diff['ci_low'], diff['ci_high']) == pytest.approx((0.0, 0.3))


def test_paired_difference_without_enough_pairs():
    one = paired_difference({0: 0.1, 1: 0.2}, {1: 0.25})
    assert one['mean'] == pytest.approx(0.05) and one['ci_low'] is None and one['ci_high'] is None
    assert paired_difference({0: 0.1}, {1: 0.2}) is None
