"""Thresholds and conformal p-values from held-out normal scores.

Sign convention, used everywhere: a higher score is more abnormal.

Given calibration scores c_1..c_n of normal records the model never trained on, exchangeable
with the scores of new normal records:

- the p-value of a score s is ``(1 + #{c_i >= s}) / (n + 1)``: a new normal's p-value is
  super-uniform, ``P(p <= a) <= a``;
- the threshold at a target false-positive rate a is the calibration score t with
  ``#{c_i > t} = j`` for the largest j such that ``(j + 1) / (n + 1) <= a``; a new normal's
  score exceeds t with probability ``(j + 1) / (n + 1)`` (averaged over calibration sets), so
  the promise holds exactly, and ``is_anomaly`` (s > t) is the same as ``p <= (j + 1)/(n + 1)``.

With fewer than ``1 / a - 1`` calibration scores no j qualifies: the largest score is the
threshold and the rate that can be promised (``achievable_fpr``) is ``1 / (n + 1)``, above the
target. With at least ``MIN_TAIL`` scores the threshold is then extrapolated beyond the largest
with a generalized Pareto tail fitted to the largest scores (peaks over threshold,
``method == "tail"``). The promise stays ``1 / (n + 1)``: a threshold at or above the largest
score keeps it by exchangeability, while the tail's own rate (the target) is a model's estimate
from a handful of scores, and on real score distributions it was not met (calibrating on 20-98
scores drawn from thousands, the realised rate averaged about ``1 / (n + 1)``, not the target:
``benchmarks/tail_check.py``). The p-values stay conformal either way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.errors import DataError

log = logging.getLogger(__name__)

MIN_TAIL = 20  # calibration scores needed to fit a tail beyond them
TAIL_FRACTION = 0.25  # share of the largest calibration scores the tail is fitted on


def conformal_rank(n: int, target_fpr: float) -> int:
    """j, how many calibration scores may lie above the threshold: the largest with
    ``(j + 1) / (n + 1) <= target_fpr``, or -1 when even j = 0 is above the target."""
    return int(math.floor(target_fpr * (n + 1) + 1e-9)) - 1


def threshold_at_fpr(calibration_scores: np.ndarray, target_fpr: float) -> float:
    """The conformal threshold: the calibration score with j scores above it (see the module
    docstring); the largest score when n is too small for the target.

    Args:
        calibration_scores: (n,) scores of held-out normal records.
        target_fpr: wanted fraction of normal records above the threshold, in (0, 1).
    """
    c = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    n = c.size
    if n == 0:
        raise DataError("calibration: no scores to calibrate on")
    if not 0.0 < target_fpr < 1.0:
        raise DataError(f"calibration: target_fpr must be in (0, 1), got {target_fpr}")
    return float(c[n - 1 - max(conformal_rank(n, target_fpr), 0)])


def conformal_p_values(calibration_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``(1 + #{c >= s}) / (n + 1)`` for every s, vectorised.

    Args:
        calibration_sorted: (n,) calibration scores sorted ascending.
        scores: (m,) scores to map.

    Returns:
        (m,) p-values in (0, 1].
    """
    n = calibration_sorted.size
    n_ge = n - np.searchsorted(calibration_sorted, scores, side="left")
    return (1.0 + n_ge) / (n + 1.0)


def tail_threshold(sorted_scores: np.ndarray, target_fpr: float) -> tuple[float, dict] | None:
    """A threshold at or beyond the largest score from a generalized Pareto fit to the top
    ``TAIL_FRACTION`` of the scores, with rate ``target_fpr`` under the fit; None when the
    fit fails."""
    from scipy import stats

    n = sorted_scores.size
    k = max(int(round(TAIL_FRACTION * n)), 5)
    u = float(sorted_scores[n - k - 1])
    excess = sorted_scores[n - k:] - u
    if not np.all(np.isfinite(excess)) or float(excess.max()) <= 0:
        return None
    try:
        shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    except (ValueError, RuntimeError, FloatingPointError):
        return None
    # P(S > u + x) = (k / n) * GPD.sf(x); solve for the target rate.
    q = 1.0 - target_fpr * n / k
    if not (0 < q < 1) or not np.isfinite(shape) or not scale > 0:
        return None
    t = u + float(stats.genpareto.ppf(q, shape, loc=0.0, scale=scale))
    if not np.isfinite(t):
        return None
    # A fit whose target point lies below the largest score says that score already meets
    # the target: keep it (the scores never flag a calibration normal).
    return max(t, float(sorted_scores[-1])), {"u": u, "k": k, "shape": float(shape),
                                              "scale": float(scale)}


@dataclass
class ScoreCalibration:
    """Threshold, calibration scores and the rate the threshold can promise, for one score kind.

    Attributes:
        threshold: a record is an anomaly when its score is strictly above it.
        scores: (n,) calibration scores, sorted ascending.
        target_fpr: the rate asked for.
        achievable_fpr: the false-positive rate the threshold promises new normals: the target
            or below it, or ``1 / (n + 1)`` when there are too few scores for the target.
        method: "conformal" (a calibration score) or "tail" (a fitted tail beyond the scores).
        tail: the tail fit (threshold u, count k, shape, scale) when ``method == "tail"``.
    """

    threshold: float
    scores: np.ndarray
    target_fpr: float = float("nan")
    achievable_fpr: float = float("nan")
    method: str = "conformal"
    tail: dict[str, Any] | None = field(default=None)

    @classmethod
    def fit(cls, scores: np.ndarray, target_fpr: float, tail: bool = True) -> ScoreCalibration:
        """Calibrate on held-out normal scores (any order).

        Args:
            tail: extrapolate with a fitted tail when there are too few scores for the target.
        """
        s = np.sort(np.asarray(scores, dtype=np.float64))
        if not np.isfinite(s).all():
            raise DataError("calibration: non-finite scores on the calibration data")
        threshold = threshold_at_fpr(s, target_fpr)
        j = conformal_rank(s.size, target_fpr)
        if j >= 0:
            return cls(threshold, s, target_fpr, (j + 1) / (s.size + 1))
        promise = 1.0 / (s.size + 1)
        fitted = tail_threshold(s, target_fpr) if tail and s.size >= MIN_TAIL else None
        if fitted is not None:
            log.warning("only %d calibration records for a target FPR of %g: the threshold is "
                        "extrapolated beyond the largest score by a tail fitted to the largest "
                        "%d, and the false-positive rate it promises is %.3g", s.size,
                        target_fpr, fitted[1]["k"], promise)
            return cls(fitted[0], s, target_fpr, promise, "tail", fitted[1])
        log.warning("only %d calibration records for a target FPR of %g: the threshold is the "
                    "largest calibration score and the false-positive rate it promises is %.3g",
                    s.size, target_fpr, promise)
        return cls(threshold, s, target_fpr, promise)

    @property
    def meets_target(self) -> bool:
        """Whether the promised rate is the target (or below it)."""
        return self.achievable_fpr <= self.target_fpr * (1 + 1e-9)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of ``scores``."""
        return conformal_p_values(self.scores, scores)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"threshold": self.threshold, "scores": self.scores.tolist(),
                "target_fpr": self.target_fpr, "achievable_fpr": self.achievable_fpr,
                "method": self.method, "tail": self.tail}

    @classmethod
    def from_dict(cls, data: dict) -> ScoreCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(threshold=float(data["threshold"]),
                   scores=np.sort(np.asarray(data["scores"], dtype=np.float64)),
                   target_fpr=float(data.get("target_fpr", float("nan"))),
                   achievable_fpr=float(data.get("achievable_fpr", float("nan"))),
                   method=str(data.get("method", "conformal")), tail=data.get("tail"))
