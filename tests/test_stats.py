import math

import pytest
from scipy import stats as scipy_stats

from kdpipe.measure.stats import paired_gain, summarize, verdict


def test_summarize_matches_a_hand_computed_t_interval():
    s = summarize([70.0, 71.0, 72.0])
    assert s["mean"] == pytest.approx(71.0)
    assert s["std"] == pytest.approx(1.0)
    # t(0.975, df=2) = 4.302653; half-width = t * s / sqrt(n)
    assert s["ci95"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)


def test_one_value_has_no_interval():
    assert summarize([70.0]) == {"mean": 70.0, "std": 0.0, "ci95": None}


def test_paired_gain_is_a_paired_t_test_on_per_seed_differences():
    method, baseline = [70.5, 71.2, 69.9, 70.8], [70.0, 70.1, 69.5, 70.2]
    gain = paired_gain(method, baseline)
    assert gain["diffs"] == pytest.approx([0.5, 1.1, 0.4, 0.6])
    assert gain["mean"] == pytest.approx(0.65)
    assert gain["p_value"] == pytest.approx(scipy_stats.ttest_rel(method, baseline).pvalue)
    assert verdict(gain) == "gain"


def test_verdicts():
    assert verdict(paired_gain([70.0, 71.0, 69.0], [70.5, 69.5, 70.0])) == "noise"
    assert verdict(paired_gain([60.0, 61.0, 60.5], [70.0, 70.2, 70.9])) == "loss"
    assert verdict(paired_gain([71.0], [70.0])) == "no test"
    assert paired_gain([71.0, 72.0], [70.0, 71.0])["p_value"] == 0.0  # identical gains
    # a method that changes nothing (a zero weight): every difference 0, p = 1, noise
    same = paired_gain([70.0, 71.5, 69.0], [70.0, 71.5, 69.0])
    assert (same["mean"], same["p_value"], verdict(same)) == (0.0, 1.0, "noise")


def test_holm_matches_a_hand_computed_example():
    from kdpipe.measure.stats import holm

    # sorted: 0.01 * 4 = 0.04, 0.02 * 3 = 0.06, 0.03 * 2 = 0.06 (monotone), 0.5 * 1 = 0.5
    adjusted = holm([0.03, 0.5, 0.01, 0.02, None])
    assert adjusted[:4] == pytest.approx([0.06, 0.5, 0.04, 0.06]) and adjusted[4] is None
    assert holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])  # capped by monotonicity, then at 1
    assert holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])
