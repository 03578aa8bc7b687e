import numpy as np
import pytest

from training.calibration import ScoreCalibration, conformal_p_values, threshold_at_fpr
from training.errors import DataError


def test_threshold_hand_computed():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    # at most 1 of 100 above t -> t = 99 (only 100 is above)
    assert threshold_at_fpr(scores, 0.01) == 99.0
    # at most 10 above -> t = 90
    assert threshold_at_fpr(scores, 0.10) == 90.0
    # 0.5% of 100 = 0.5 -> nothing may be above -> t = max
    assert threshold_at_fpr(scores, 0.005) == 100.0
    # order does not matter
    assert threshold_at_fpr(scores[::-1], 0.10) == 90.0


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
    # p-values of fresh normals are (close to) uniform: P(p <= a) <= a + slack
    p = cal.p_values(fresh)
    assert np.mean(p <= fpr) <= fpr + 0.01
