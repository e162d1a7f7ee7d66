"""Tests over repeats against values computed by hand.

a = [0.80, 0.82, 0.78], b = [0.75, 0.79, 0.76]: d = [0.05, 0.03, 0.02], mean(d) = 1/30,
var(d) = (0.05² + 0.03² + 0.02² - 3 * (1/30)²) / 2 = 7/30000.

- paired: t² = mean² / (var / 3) = (1/900) / (7/90000) = 100/7, t = 3.7796447;
  with 2 degrees of freedom the two-sided p is 1 - t / sqrt(t² + 2) = 1 - sqrt(100/114) = 0.0634140.
- Nadeau-Bengio with n_train = 90, n_test = 30: factor 1/3 + 30/90 = 2/3, so
  t² = (1/900) / (7/30000 * 2/3) = 50/7, t = 2.6726124; p = 1 - sqrt(50/64) = 0.1161165.
"""

import math

import pytest

from triptych.errors import InvalidArgumentError
from triptych.evaluation.repeated import (
    CORRECTED_T,
    PAIRED_T,
    RepeatScore,
    compare_repeats,
    corrected_resampled_t_test,
    mean_sd,
    paired_t_test,
)

A, B = [0.80, 0.82, 0.78], [0.75, 0.79, 0.76]


def test_mean_and_sample_sd_by_hand():
    mean, sd = mean_sd(A)
    assert mean == pytest.approx(0.80)
    assert sd == pytest.approx(0.02)  # deviations ±0.02, 0: sqrt(0.0008 / 2)
    assert mean_sd([0.5]) == (0.5, None)


def test_paired_t_test_by_hand():
    result = paired_t_test(A, B)
    assert result["n"] == 3 and result["df"] == 2
    assert result["mean_diff"] == pytest.approx(1 / 30)
    assert result["sd_diff"] == pytest.approx(math.sqrt(7 / 30000))
    assert result["statistic"] == pytest.approx(math.sqrt(100 / 7))
    assert result["p_value"] == pytest.approx(1 - math.sqrt(100 / 114))


def test_corrected_resampled_t_test_by_hand():
    result = corrected_resampled_t_test(A, B, n_train=90, n_test=30)
    assert result["df"] == 2
    assert result["statistic"] == pytest.approx(math.sqrt(50 / 7))
    assert result["p_value"] == pytest.approx(1 - math.sqrt(50 / 64))
    # The correction only ever widens: its p-value is above the naive paired test's.
    assert result["p_value"] > paired_t_test(A, B)["p_value"]


def test_equal_differences_have_no_spread_to_test():
    assert paired_t_test([0.5, 0.6], [0.5, 0.6])["p_value"] == 1.0
    assert paired_t_test([0.3, 0.1 + 0.2], [0.1, 0.1])["p_value"] == 0.0  # 0.1 + 0.2 != 0.3: float noise, no spread
    result = paired_t_test([0.6, 0.7], [0.5, 0.6])
    assert result["statistic"] == math.inf and result["p_value"] == 0.0


def test_refuses_unaligned_or_single_pairs():
    with pytest.raises(InvalidArgumentError, match="aligned"):
        paired_t_test([0.1, 0.2], [0.1])
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        paired_t_test([0.1], [0.2])
    with pytest.raises(InvalidArgumentError, match="n_train"):
        corrected_resampled_t_test(A, B, n_train=0, n_test=30)


def _scores(values, splits, n_train=90, n_test=30):
    return [RepeatScore(seed, v, split, n_train, n_test) for seed, (v, split) in enumerate(zip(values, splits))]


def test_compare_repeats_on_one_split_is_the_paired_test():
    result = compare_repeats(_scores(A, "sss"), _scores(B, "sss"))
    assert result["test"] == PAIRED_T and result["error"] is None and result["seeds"] == [0, 1, 2]
    assert result["p_value"] == pytest.approx(1 - math.sqrt(100 / 114))


def test_compare_repeats_over_resplits_is_the_corrected_test():
    result = compare_repeats(_scores(A, "xyz"), _scores(B, "xyz"))
    assert result["test"] == CORRECTED_T and result["n_train"] == 90 and result["n_test"] == 30
    assert result["p_value"] == pytest.approx(1 - math.sqrt(50 / 64))


def test_compare_repeats_pairs_by_seed_and_refuses_what_is_not_paired():
    b_shifted = [RepeatScore(seed + 1, s.score, s.split, 90, 30) for seed, s in enumerate(_scores(B, "sss"))]
    result = compare_repeats(_scores(A, "sss"), b_shifted)  # seeds 1, 2 in common
    assert result["seeds"] == [1, 2] and result["n"] == 2
    assert compare_repeats(_scores(A[:1], "s"), _scores(B, "sss"))["error"].startswith("needs at least 2 seeds")
    mismatched = compare_repeats(_scores(A, "sss"), _scores(B, "sst"))
    assert mismatched["test"] is None and "different splits" in mismatched["error"]
