"""Thresholds and conformal p-values from held-out normal scores.

Sign convention, used everywhere: a higher score is more abnormal.

Given calibration scores c_1..c_n of normal records the model never trained on:
- the p-value of a score s is ``(1 + #{c_i >= s}) / (n + 1)``: under exchangeability a normal
  record's p-value is super-uniform, so ``P(p <= a) <= a``;
- the threshold at a target false-positive rate a is the smallest calibration score t with
  ``#{c_i > t} <= a * n``; a record is an anomaly when its score is strictly above t.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from training.errors import DataError

log = logging.getLogger(__name__)


def threshold_at_fpr(calibration_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest calibration score t such that at most ``target_fpr * n`` scores exceed it.

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
    allowed = int(np.floor(target_fpr * n + 1e-9))  # how many normals may lie above t
    return float(c[n - 1 - allowed])


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


@dataclass
class ScoreCalibration:
    """Threshold and calibration scores of one score kind."""

    threshold: float
    scores: np.ndarray  # sorted ascending

    @classmethod
    def fit(cls, scores: np.ndarray, target_fpr: float) -> ScoreCalibration:
        """Calibrate on held-out normal scores (any order)."""
        s = np.sort(np.asarray(scores, dtype=np.float64))
        if not np.isfinite(s).all():
            raise DataError("calibration: non-finite scores on the calibration data")
        if s.size * target_fpr < 1:
            log.info(
                "only %d calibration records for a target FPR of %g: the threshold is the "
                "largest calibration score, and the realised FPR cannot be resolved below %.3g",
                s.size, target_fpr, 1.0 / (s.size + 1),
            )
        return cls(threshold=threshold_at_fpr(s, target_fpr), scores=s)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of ``scores``."""
        return conformal_p_values(self.scores, scores)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"threshold": self.threshold, "scores": self.scores.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> ScoreCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(threshold=float(data["threshold"]),
                   scores=np.sort(np.asarray(data["scores"], dtype=np.float64)))
