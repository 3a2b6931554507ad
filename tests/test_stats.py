"""Summaries over seeds: the IQM equals its textbook formula, bootstrap intervals are repeatable, hold the point
estimate and narrow with more seeds, and compare's mean-se is the sample std / sqrt(n) it always was."""

import math
import statistics

import numpy as np
import pytest
from scipy.stats import norm

from rl_plasticity.compare.summary import SeedSummary
from rl_plasticity.run.stats import bootstrap_ci, iqm, mean_se

pytestmark = pytest.mark.filterwarnings("error")  # no NaN or degenerate-data warnings anywhere


def iqm_by_hand(values):
    """Mean of what is left after cutting floor(n/4) values off each end of the sorted list."""
    v, cut = sorted(values), len(values) // 4
    return statistics.mean(v[cut:len(v) - cut])


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([1, 2, 3, 4, 100, 5, 6, 7]) == 4.5  # (3 + 4 + 5 + 6) / 4: the outlier 100 is cut
    assert iqm([1, 2, 3]) == 2.0 and iqm([5.0]) == 5.0  # under 4 values nothing is cut
    assert iqm([0, 1, 2, 3, 40]) == 2.0  # 5 values keep their middle 3
    rng = np.random.default_rng(3)
    for n in range(1, 14):
        x = rng.normal(size=n) ** 3
        assert iqm(x) == pytest.approx(iqm_by_hand(x.tolist()), rel=1e-12)


def test_bootstrap_of_two_values_is_hand_checkable():
    # Resamples of [0, 1] have mean 0, 0.5 or 1 with chances 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1.
    assert bootstrap_ci([0.0, 1.0], np.mean, n_resamples=1000, seed=0) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], iqm, n_resamples=1000, seed=0) == (0.0, 1.0)  # 2 values: IQM = mean
    assert bootstrap_ci([2.0, 2.0, 2.0], iqm, n_resamples=200, seed=0) == (2.0, 2.0)
    assert bootstrap_ci([2.0], iqm, n_resamples=200, seed=0) is None  # one run: no interval


def test_bootstrap_is_repeatable_and_depends_on_its_seed():
    x = np.random.default_rng(1).normal(size=12)
    first = bootstrap_ci(x, iqm, n_resamples=300, seed=0)
    assert bootstrap_ci(x, iqm, n_resamples=300, seed=0) == first
    assert bootstrap_ci(x, iqm, n_resamples=300, seed=1) != first


@pytest.mark.parametrize("statistic", [iqm, np.mean])
def test_interval_holds_the_estimate_and_narrows_with_more_seeds(statistic):
    widths = []
    for n in (5, 20, 80):
        x = norm.ppf((np.arange(n) + 0.5) / n)  # evenly spread standard-normal values, no randomness
        low, high = bootstrap_ci(x, statistic, n_resamples=500, seed=0)
        assert low < statistic(x) < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(math.sqrt(80 / 5), rel=0.35)  # about 1/sqrt(n)


def test_mean_se_is_the_sample_std_over_sqrt_n():
    v = np.array([1.0, 2.0, 4.0, 8.5])
    row = SeedSummary("mean-se").summarise(v)
    assert row["mean"] == statistics.mean(v) and row["se"] == pytest.approx(statistics.stdev(v) / 2, rel=1e-15)
    assert row["se"] == pytest.approx(mean_se(v.tolist())["se"], rel=1e-12)  # the results files' helper agrees
    assert math.isnan(SeedSummary("mean-se").summarise(np.array([3.0]))["se"])


def test_ci_summaries_name_their_columns_and_leave_one_seed_without_a_band():
    s = SeedSummary("iqm-ci", bootstrap_samples=200)
    assert s.columns == ("iqm", "ci95_low", "ci95_high")
    row = s.summarise(np.array([1, 2, 3, 4, 100, 5, 6, 7], dtype=float))
    assert row["iqm"] == 4.5 and row["ci95_low"] <= 4.5 <= row["ci95_high"]
    alone = s.summarise(np.array([3.0]))
    assert alone["iqm"] == 3.0 and all(map(math.isnan, s.band(alone))) and s.format(alone) == "3"
    assert SeedSummary("mean-ci").columns == ("mean", "ci95_low", "ci95_high")


def test_unknown_stat_names_the_option():
    with pytest.raises(ValueError, match="stat: expected one of mean-se, iqm-ci, mean-ci, got 'median'"):
        SeedSummary("median")
