import numpy as np
import pytest

from training.calibration import ScoreCalibration, conformal_p_values, threshold_at_fpr
from training.errors import DataError


def test_threshold_hand_computed():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    # j scores above t, the largest j with (j + 1) / 101 <= a
    # a = 1%: (0 + 1) / 101 <= 0.01 < 2 / 101 -> j = 0 -> t = 100 (rate 1/101)
    assert threshold_at_fpr(scores, 0.01) == 100.0
    # a = 10%: 10 / 101 <= 0.1 < 11 / 101 -> j = 9 -> t = 91 (92..100 above)
    assert threshold_at_fpr(scores, 0.10) == 91.0
    # a = 0.5%: even j = 0 gives 1/101 > 0.005 -> the largest score
    assert threshold_at_fpr(scores, 0.005) == 100.0
    # order does not matter
    assert threshold_at_fpr(scores[::-1], 0.10) == 91.0


def test_achievable_rate_hand_computed():
    cal = ScoreCalibration.fit(np.arange(1, 101, dtype=float), 0.10)
    assert cal.achievable_fpr == pytest.approx(10 / 101) and cal.meets_target
    small = ScoreCalibration.fit(np.arange(1, 11, dtype=float), 0.01)  # 10 scores: too few
    assert small.method == "conformal" and small.threshold == 10.0
    assert small.achievable_fpr == pytest.approx(1 / 11) and not small.meets_target


def test_tail_extends_the_threshold_beyond_the_scores_when_they_are_too_few():
    rng = np.random.default_rng(1)
    scores = rng.exponential(size=60)  # 60 < 1/0.01 - 1: no conformal threshold at 1%
    cal = ScoreCalibration.fit(scores, 0.01)
    assert cal.method == "tail" and cal.threshold >= scores.max()
    # what it promises is what exchangeability gives a threshold at or above the largest
    # score, not the tail model's estimate
    assert cal.achievable_fpr == pytest.approx(1 / 61) and not cal.meets_target
    # exponential tail: P(S > t) = exp(-t), so the 1% point is about 4.6 (this sample's
    # largest score, 8.4, already lies beyond the fitted point and is kept)
    assert 3.0 < cal.threshold < 10.0
    fresh = rng.exponential(size=200_000)
    assert np.mean(fresh > cal.threshold) < 0.03
    again = ScoreCalibration.from_dict(cal.to_dict())
    assert again.method == "tail" and again.threshold == cal.threshold
    off = ScoreCalibration.fit(scores, 0.01, tail=False)
    assert off.method == "conformal" and off.threshold == scores.max()


def test_p_values_hand_computed():
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    p = conformal_p_values(cal, np.array([0.0, 1.0, 2.5, 4.0, 5.0]))
    # (1 + #{c >= s}) / 5
    np.testing.assert_allclose(p, [5 / 5, 5 / 5, 3 / 5, 2 / 5, 1 / 5])


def test_round_trip_and_validation():
    cal = ScoreCalibration.fit(np.array([3.0, 1.0, 2.0]), 0.5)
    again = ScoreCalibration.from_dict(cal.to_dict())
    assert again.threshold == cal.threshold
    np.testing.assert_array_equal(again.scores, [1.0, 2.0, 3.0])
    with pytest.raises(DataError):
        ScoreCalibration.fit(np.array([1.0, np.nan]), 0.1)
    with pytest.raises(DataError):
        threshold_at_fpr(np.array([1.0]), 1.5)


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_flagged_fraction_on_fresh_normals_is_near_target(fpr):
    rng = np.random.default_rng(0)
    cal = ScoreCalibration.fit(rng.standard_normal(4000), fpr)
    fresh = rng.standard_normal(20000)
    flagged = np.mean(fresh > cal.threshold)
    assert abs(flagged - fpr) < 3 * np.sqrt(fpr * (1 - fpr) / 4000) + 0.002
    assert flagged <= cal.achievable_fpr + 3 * np.sqrt(fpr / 4000)
    # p-values of fresh normals are (close to) uniform: P(p <= a) <= a + slack
    p = cal.p_values(fresh)
    assert np.mean(p <= fpr) <= fpr + 0.01


def test_p_values_of_fresh_normals_are_super_uniform_over_calibration_sets():
    """P(p <= a) <= a, averaged over many small calibration sets (hand-checkable bound)."""
    rng = np.random.default_rng(5)
    hits = {a: 0 for a in (0.05, 0.1, 0.25)}
    trials = 4000
    for _ in range(trials):
        cal = ScoreCalibration.fit(rng.standard_normal(19), 0.25)
        p = cal.p_values(rng.standard_normal(1))[0]
        for a in hits:
            hits[a] += p <= a
    for a, h in hits.items():
        assert h / trials <= a + 3 * np.sqrt(a / trials)
