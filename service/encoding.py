"""Vectorised encoding of validated request records into the network's input matrix.

``TabularPreprocessor.transform`` works column by column through pandas, which costs more than
the network itself for a single record. :class:`FastEncoder` does the same arithmetic on the
whole (n, k) block of numeric columns at once, in the same float64 operations followed by the
same cast to float32, so the matrix is bit-for-bit the one ``transform`` gives. The served model
checks that at load time on probe records and falls back to the library path if it ever is not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from service.scoring.inputs import Batch
from training.detector.base import Detector
from training.preprocessing.tabular import NUMERIC, TabularPreprocessor


class FastEncoder:
    """Encodes a :class:`~service.scoring.inputs.Batch` like ``preprocessor.transform``.

    Args:
        pre: the detector's fitted preprocessing.
    """

    def __init__(self, pre: TabularPreprocessor):
        self.n_features = pre.n_features_
        numeric, positions, medians, means, stds = [], [], [], [], []
        self.categorical: list[tuple[str, int, list[str], bool]] = []
        j = 0
        for s in pre.columns_:
            if s.kind == NUMERIC and not s.dropped:
                numeric.append(s.name)
                positions.append(j)
                medians.append(s.median)
                means.append(s.mean)
                stds.append(s.std)
            elif s.kind != NUMERIC:
                self.categorical.append((s.name, j, list(s.categories), s.dropped))
            j += s.width
        self.numeric = numeric
        self.positions = np.asarray(positions, dtype=np.intp)
        self.medians = np.asarray(medians, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.stds = np.asarray(stds, dtype=np.float64)

    def encode(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Encode records.

        Returns:
            ``(X, unknown)``: (n, n_features) float32 and (n,) int64 counts of categorical
            values never seen in training.
        """
        n = batch.n
        X = np.zeros((n, self.n_features), dtype=np.float64)
        unknown = np.zeros(n, dtype=np.int64)
        if self.numeric:
            M = batch.numeric(self.numeric)  # (n, k)
            M = np.where(np.isnan(M), self.medians, M)
            X[:, self.positions] = (M - self.means) / self.stds
        for name, start, categories, dropped in self.categorical:
            values = [None if v is None else str(v) for v in batch.values(name)]
            codes = pd.Categorical(values, categories=categories).codes
            present = np.fromiter((v is not None for v in values), dtype=bool, count=n)
            unknown += ((codes < 0) & present).astype(np.int64)
            if not dropped:
                rows = np.flatnonzero(codes >= 0)
                X[rows, start + codes[rows]] = 1.0
        with np.errstate(over="ignore"):  # overflow: caught as a non-finite score
            return X.astype(np.float32), unknown


def score_matrix(detector: Detector, X: np.ndarray, unknown: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """``detector.score`` from an already encoded matrix, as columns (no DataFrame).

    Args:
        X: (n, n_features) float32 from :meth:`FastEncoder.encode`.
        unknown: (n,) unknown-category counts.

    Returns:
        the columns of ``Detector.score``, in its order, each (n,): the same numbers from
        the same calibration objects (checked against ``Detector.score`` at load).
    """
    raw = detector._raw_from_matrix(X)  # the detector's own network pass
    cal = detector.calibrations_[detector.primary_score]
    primary = raw[detector.primary_score]
    cols = {"score": primary, "p_value": cal.p_values(primary),
            "is_anomaly": primary > cal.threshold}
    for kind, values in raw.items():
        if kind in detector.calibrations_:
            cols[f"score_{kind}"] = values
            cols[f"p_value_{kind}"] = detector.calibrations_[kind].p_values(values)
    cols["unknown_categories"] = unknown
    return cols


def probe_records(pre: TabularPreprocessor) -> list[dict]:
    """A few records spanning each column's range, missing values and an unseen category."""
    rows: list[dict] = [{}, {}, {}]
    for s in pre.columns_:
        if s.kind == NUMERIC:
            values = [s.median, (s.mean or 0.0) + 3 * (s.std or 1.0), None]
        else:
            first = s.categories[0] if s.categories else None
            values = [first, "\x00unseen", None]
        for row, v in zip(rows, values, strict=True):
            row[s.name] = v
    return rows
