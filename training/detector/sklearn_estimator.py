"""The table Detector as a scikit-learn outlier detector: ``SklearnDetector``.

:class:`~training.detector.tabular.Detector` is this project's API: ``fit`` on normal records,
``calibrate`` on held-out normal records, then ``score`` (a higher score is more abnormal) and
``predict`` (booleans: ``is_anomaly``). :class:`SklearnDetector` wraps it in scikit-learn's
estimator protocol, so it can be cloned, grid-searched and put in a ``Pipeline``: the
constructor only stores its keyword arguments (every
:class:`~training.params.DetectorParams` field, plus ``calibration_fraction``), ``get_params``
and ``set_params`` work, ``fit(X)`` learns and calibrates in one call (an ensemble cross-fits and
calibrates on every record; a single network holds out a random ``calibration_fraction`` of the
records for the thresholds) and returns ``self``.

Its scoring methods follow scikit-learn's outlier conventions (``IsolationForest``,
``LocalOutlierFactor``), which point the other way from ours:

=====================  ====================================  ====================================
                       ``Detector`` (this project)           ``SklearnDetector`` (scikit-learn)
=====================  ====================================  ====================================
score                  ``score``: higher = more abnormal     ``score_samples`` = −score:
                                                             higher = more normal
decision               ``is_anomaly`` = score > threshold    ``decision_function`` =
                                                             threshold − score = score_samples −
                                                             ``offset_``; negative = outlier
labels                 ``predict``: True = anomaly           ``predict``: −1 = outlier,
                                                             +1 = inlier
=====================  ====================================  ====================================

``detector_`` is the fitted Detector, for everything else (``score`` with p-values and every
score kind, ``explain``, ``save``). Input: a DataFrame (numeric and categorical columns, as the
Detector takes them; missing values are imputed) or a 2-D numeric array (columns named
``x0``, ``x1``...; NaN = missing). Images are not 2-D tables: the image detector has no
scikit-learn face.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from training.detector.base import MIN_FIT_ROWS
from training.detector.tabular import Detector
from training.params import DetectorParams

MIN_CALIBRATION_ROWS = 2
_DETECTOR_FIELDS = [f for f in dataclasses.fields(DetectorParams) if f.name != "extra"]
_OWN = {"calibration_fraction": 0.2}
PARAMS = {**{f.name: f.default for f in _DETECTOR_FIELDS}, **_OWN}


class SklearnDetector(OutlierMixin, BaseEstimator):
    """scikit-learn's face of the table :class:`Detector` (see the module docstring).

    Args:
        calibration_fraction: share of the records ``fit`` holds out to set the thresholds
            (at least 2 records).
        **params: any :class:`~training.params.DetectorParams` field (``kind``, ``latent_dim``,
            ``max_epochs``, ``target_fpr``, ``seed``...), checked by ``fit``.

    Attributes:
        detector_: the fitted and calibrated Detector.
        offset_: minus the primary score's threshold: ``decision_function`` is
            ``score_samples - offset_``.
        n_features_in_, feature_names_in_: what ``fit`` saw.
    """

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise TypeError(f"SklearnDetector got unexpected keyword arguments {unknown}; "
                            f"it takes {sorted(PARAMS)}")
        for name, default in PARAMS.items():
            setattr(self, name, params.get(name, default))

    # scikit-learn reads the parameters from the constructor's signature.
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
           for name, default in PARAMS.items()])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN = missing, imputed with the training median
        return tags

    def fit(self, X: Any, y: Any = None) -> SklearnDetector:
        """Learn from normal records X (n_samples, n_features) and calibrate the thresholds
        on a held-out ``calibration_fraction`` of them; ``y`` is ignored.

        Returns:
            self
        """
        frame = self._frame(X, reset=True)
        params = {name: getattr(self, name) for name in PARAMS if name not in _OWN}
        det = Detector(**params)
        if det.calibrated_by_fit:  # cross-fitting: thresholds from every record
            det.fit(frame, source="X")
        else:
            n = len(frame)
            n_cal = max(MIN_CALIBRATION_ROWS, int(round(self.calibration_fraction * n)))
            order = np.random.default_rng(self.seed).permutation(n)
            det.fit(frame.iloc[np.sort(order[n_cal:])], source="X")
            det.calibrate(frame.iloc[np.sort(order[:n_cal])], source="X (calibration)")
        self.detector_ = det
        self.offset_ = -float(det.thresholds_[det.primary_score])
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """(n_samples,) minus the primary anomaly score: higher = more normal."""
        return -self._scores(X)["score"]

    def decision_function(self, X: Any) -> np.ndarray:
        """(n_samples,) ``score_samples(X) - offset_`` = threshold − score: negative for
        outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """(n_samples,) −1 for outliers (score above the threshold), +1 for inliers."""
        return np.where(self._scores(X)["is_anomaly"], -1, 1)

    def _scores(self, X: Any) -> dict[str, np.ndarray]:
        check_is_fitted(self, "detector_")
        return self.detector_.score_columns(self._frame(X, reset=False), source="X")

    def _frame(self, X: Any, reset: bool) -> pd.DataFrame:
        """X as the DataFrame the Detector reads, its shape and names checked scikit-learn's
        way (``n_features_in_``, ``feature_names_in_``)."""
        least = MIN_FIT_ROWS + MIN_CALIBRATION_ROWS if reset else 1
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, reset=reset, skip_check_array=True)
            if len(X) < least:
                raise ValueError(f"Found array with {len(X)} sample(s) while a minimum of "
                                 f"{least} is required by {type(self).__name__}.")
            return X  # the Detector reads its column names as text
        X = validate_data(self, X, reset=reset, dtype=np.float64, ensure_min_samples=least,
                          ensure_all_finite="allow-nan")
        return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
