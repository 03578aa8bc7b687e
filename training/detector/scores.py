"""From raw scores to answers: thresholds, conformal p-values and flags, with no network code.

:class:`CalibratedScores` is the half of the Detector template that needs no torch: whatever
computes the raw scores of a preprocessed matrix (the detector's own networks, or its ONNX
graph in :mod:`training.detector.graph`), the columns a caller gets are built here, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from training.calibration import ScoreCalibration
from training.errors import DataError
from training.params import DetectorParams


class CalibratedScores:
    """Score columns from calibrated raw scores.

    A subclass supplies ``params``, ``calibrations_`` (score kind ->
    :class:`~training.calibration.ScoreCalibration`), ``_check_calibrated``, ``_matrix``
    (records -> preprocessed matrix and the kind's extra columns), ``_raw_from_matrix``
    (matrix -> raw score per kind) and ``_explanation_of`` (matrix -> explanations).
    """

    params: DetectorParams
    calibrations_: dict[str, ScoreCalibration]
    preprocessor_: Any  # the kind's preprocessing (``feature_columns_`` names its columns)

    def _check_calibrated(self) -> None:
        raise NotImplementedError

    def _matrix(self, data: Any, source: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        raise NotImplementedError

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _explanation_of(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def thresholds_(self) -> dict[str, float]:
        """Threshold per score kind."""
        self._check_calibrated()
        return {k: c.threshold for k, c in self.calibrations_.items()}

    @property
    def achievable_fpr_(self) -> float:
        """The false-positive rate the primary threshold promises new normals: the target or
        below it, or more when the calibration data were too few for the target."""
        self._check_calibrated()
        return float(self.calibrations_[self.primary_score].achievable_fpr)

    @property
    def primary_score(self) -> str:
        """The score kind that decides ``is_anomaly``."""
        return str(self.params.primary_score)

    def score_columns(self, data: Any, source: str = "data", explain: bool = False
                      ) -> dict[str, np.ndarray]:
        """Score records: the one scoring path (the service, the pyfunc, batch and Spark).

        Args:
            data: records in any form the kind's preprocessing reads.
            source: name for error messages.
            explain: also return ``explanation``, the :meth:`explain` array, from the same
                encoded records (no second pass through the preprocessing).

        Returns:
            columns, each (n_records,), in order: ``score``, ``p_value``, ``is_anomaly`` (the
            primary score), ``score_<kind>`` and ``p_value_<kind>`` for every score kind, then
            the kind's extras (tables: ``unknown_categories``); with ``explain``, also
            ``explanation`` (n_records, ...).
        """
        self._check_calibrated()
        X, extras = self._matrix(data, source)
        raw = self._raw_from_matrix(X)
        primary = self.primary_score
        overflowed = np.flatnonzero(~np.isfinite(raw[primary]))
        if overflowed.size:
            raise self._overflow(X, extras, int(overflowed[0]), source)
        p_values = {k: self.calibrations_[k].p_values(v) for k, v in raw.items()}
        cols: dict[str, np.ndarray] = {
            "score": raw[primary],
            "p_value": p_values[primary],
            "is_anomaly": raw[primary] > self.calibrations_[primary].threshold,
        }
        for k, v in raw.items():
            cols[f"score_{k}"] = v
            cols[f"p_value_{k}"] = p_values[k]
        cols.update(extras)
        if explain:
            cols["explanation"] = self._explanation_of(X)
        return cols

    def _overflow(self, X: np.ndarray, extras: dict[str, np.ndarray], i: int, source: str
                  ) -> DataError:
        """The error for matrix row ``i``, whose score is not finite: values so far from the
        training data that the network's arithmetic overflows. It names the record (for
        windows, the row that ends the window) and the input column of the row's most extreme
        value, where the matrix has columns of the input."""
        window = "row" in extras
        columns = getattr(self.preprocessor_, "feature_columns_", None)
        x = np.abs(X[i].astype(np.float64))
        column = columns[int(np.argmax(np.where(np.isnan(x), np.inf, x)))] if columns else None
        what = "the window ending at this record" if window else "this record"
        return DataError(f"values too far outside the training data to score {what} (the "
                         "network's arithmetic overflows); check their units", source=source,
                         record=int(extras["row"][i]) if window else i, column=column)

    def score(self, data: Any, source: str = "data") -> pd.DataFrame:
        """:meth:`score_columns` as a DataFrame, one row per record, on ``data``'s index when
        it is a DataFrame (so the scores join back to the records)."""
        frame = pd.DataFrame(self.score_columns(data, source))
        if isinstance(data, pd.DataFrame):
            frame.index = data.index
        return frame

    def predict(self, data: Any, source: str = "data") -> np.ndarray:
        """(n_records,) booleans: is each record an anomaly by the primary score."""
        return self.score_columns(data, source)["is_anomaly"]


def scored_primary(cols: Any) -> np.ndarray:
    """The primary scores of the rows that have one, from score columns or a score frame of
    any detector: a sequence's warm-up rows (no full window yet) are left out."""
    primary = np.asarray(cols["score"])
    return primary[~np.asarray(cols["warm_up"])] if "warm_up" in cols else primary


def robust_location_scale(values: np.ndarray, rel_floor: float = 1e-12) -> tuple[float, float]:
    """Median and interquartile range / 1.349 (the standard deviation of a normal sample) of
    (n,) values: a robust standardisation on the validation normals. The scale is at least
    ``rel_floor`` times the median's size and 1e-12, so a sample that hardly varies still
    divides without turning rounding into many scales."""
    q25, q50, q75 = np.quantile(np.asarray(values, dtype=np.float64), [0.25, 0.5, 0.75])
    return float(q50), float(max((q75 - q25) / 1.349, rel_floor * abs(q50), 1e-12))
