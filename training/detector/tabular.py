"""The table detector: dense AE / VAE over one-hot and standardised columns.

What is the tables' own: :class:`~training.preprocessing.tabular.TabularPreprocessor`, the dense
ensembles of :mod:`training.nn.dense`, sizes derived from the number of rows and features
(:func:`training.params.resolve`), and explanations per input column. Everything else is the
template's (:class:`~training.detector.base.BaseDetector`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from training.detector.base import BaseDetector
from training.errors import DataError
from training.nn import dense_step
from training.nn.dense import EnsembleAE, EnsembleVAE
from training.params import KINDS, DetectorParams, resolve
from training.preprocessing.tabular import Records, TabularPreprocessor


def _as_frame(data: Any) -> pd.DataFrame | Records:
    """:class:`Records` as given; a DataFrame with its column names as text (a model's schema
    names columns by text, so a frame with columns 0, 1... is read by '0', '1'...); a 2-D
    array as a frame with columns x0, x1..."""
    if isinstance(data, Records):
        return data
    if isinstance(data, pd.DataFrame):
        if not all(isinstance(c, str) for c in data.columns):
            data = data.set_axis([str(c) for c in data.columns], axis=1)
        return data
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D table, got an array of shape {arr.shape}")
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])


class Detector(BaseDetector):
    """Autoencoder anomaly detector for tables.

    Args:
        id_column: column identifying records, excluded from features.
        label_column: column of ground-truth labels, excluded from features.
        **params: hyperparameters, see :class:`training.params.DetectorParams`.

    Example:
        >>> det = Detector(kind="vae").fit(normal_df).calibrate(held_out_df)
        >>> det.score(new_df)[["score", "p_value", "is_anomaly"]]
    """

    kinds = KINDS
    params_class = DetectorParams
    preprocessor_class = TabularPreprocessor
    member_batches = True

    def _new_preprocessor(self) -> TabularPreprocessor:
        return TabularPreprocessor(self.id_column, self.label_column, self.params.geometry)

    def _resolve(self, n_train: int, n_features: int) -> dict[str, Any]:
        # the geometry ``auto`` chose (and how many columns it set apart) is logged with the
        # sizes chosen from the data's shape
        return {**resolve(self.params, n_train, n_features),
                "geometry": self.preprocessor_.geometry_,
                "set_apart": len(self.preprocessor_.set_apart_)}

    def _build(self, n_features: int) -> torch.nn.Module:
        cls = EnsembleVAE if self._variational else EnsembleAE
        return cls(n_features, self.resolved_["hidden_sizes"], self.resolved_["latent_dim"],
                   self.params.activation, self.params.dropout, self.params.n_models)

    def _gradient_step(self):
        """The dense ensembles' gradients written out by hand (:mod:`training.nn.dense_step`:
        about half autograd's time per step on these small networks), where they cover the
        network; autograd's otherwise."""
        if dense_step.supports(self.network_):
            return dense_step.DenseStep(self.network_, self.params.beta)
        return super()._gradient_step()

    def fit(self, data: pd.DataFrame | np.ndarray, source: str = "data", on_epoch=None
            ) -> Detector:
        """Learn preprocessing and network from normal records (n_records, n_columns) only;
        see :meth:`BaseDetector.fit`."""
        return super().fit(_as_frame(data), source, on_epoch)

    def _matrix(self, data: Any, source: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return super()._matrix(_as_frame(data), source)

    def reconstruct(self, data: Any, source: str = "data") -> pd.DataFrame:
        """Reconstructions of the records in their own columns; in the ``direction`` geometry
        each reconstructed direction has the record's own length (:meth:`decode` gives
        directions: a code holds no length)."""
        data = _as_frame(data)
        lengths = self.preprocessor_.row_lengths(data, source)
        if lengths is None:
            return super().reconstruct(data, source)
        return self.preprocessor_.inverse_transform(self._decoded(self.encode(data, source)),
                                                    lengths)

    def _explain(self, errors: np.ndarray) -> np.ndarray:
        """(n, n_features) -> (n, n_input_columns): one-hot blocks summed into their column."""
        out = np.zeros((len(errors), len(self.preprocessor_.columns_)), dtype=np.float64)
        j = 0
        for i, s in enumerate(self.preprocessor_.columns_):
            if s.width:
                out[:, i] = errors[:, j : j + s.width].sum(axis=1)
            j += s.width
        return out

    def explain_frame(self, data: Any, source: str = "data") -> pd.DataFrame:
        """:meth:`explain` as a DataFrame whose columns are the input columns."""
        return pd.DataFrame(self.explain(data, source), columns=self.preprocessor_.input_columns_)
