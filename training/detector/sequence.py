"""The sequence detector: 1-D convolutional (or GRU) AE / VAE over sliding windows of a
multivariate series, scored per timestamp, explained per channel.

What is the sequences' own: :class:`~training.preprocessing.sequences.SequencePreprocessor`
(time order checked, channels standardised, windows), the networks of
:mod:`training.nn.sequence`, an error scale per channel, per-channel explanations, and the
mapping from windows back to timestamps. Everything else is the template's
(:class:`~training.detector.base.BaseDetector`): a "record" of the template is one window.

Per-timestamp scores: a row's score is the score of the window that ends at it. The rule is
causal, so a point is scored the moment it arrives (the stream answers without waiting for
later points, and batch, stream and service agree by construction); every scored point has
exactly one window, so its score has the distribution the threshold was calibrated on (a max
or mean over the covering windows would not, and would need the next ``window - 1`` points).
The first ``window - 1`` rows of a series have no full window: they are marked ``warm_up``,
with no score and ``is_anomaly`` false.

Explanations: per channel, the mean over the window's steps of the scaled squared error, so
the channel that deviates stands out (one value per channel and scored row).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.detector.base import BaseDetector
from training.detector.sequence_params import (
    SEQUENCE_KINDS,
    SequenceDetectorParams,
    resolve_sequence,
)
from training.detector.series import SeriesScoring
from training.nn.sequence import SequenceAE, SequenceEnsemble, SequenceVAE
from training.preprocessing.sequences import SequencePreprocessor


class SequenceDetector(SeriesScoring, BaseDetector):
    """Sliding-window autoencoder anomaly detector for multivariate time series.

    Args:
        id_column: column carried through, never a channel.
        label_column: column of ground-truth labels, never a channel.
        **params: hyperparameters, see
            :class:`training.detector.sequence_params.SequenceDetectorParams` (``kind`` is
            ``seq_ae`` or ``seq_vae``).

    Example:
        >>> det = SequenceDetector(kind="seq_ae", time_column="t").fit(normal).calibrate(held)
        >>> det.score_series(new)[["t", "warm_up", "score", "is_anomaly"]]
    """

    kinds = SEQUENCE_KINDS
    params_class = SequenceDetectorParams
    preprocessor_class = SequencePreprocessor
    # ``channel_norm="std"``: per channel, the validation windows' mean and standard deviation
    # of a window's scaled error (float64 tensors, (C,) each); None for ``mean``
    channel_spread_: dict[str, torch.Tensor] | None = None

    def _new_preprocessor(self) -> SequencePreprocessor:
        p = self.params
        return SequencePreprocessor(p.time_column, p.series_column, p.window,
                                    self.label_column, self.id_column, p.slow_channels)

    def _resolve(self, n_train: int, n_features: int) -> dict[str, Any]:
        pre = self.preprocessor_
        return resolve_sequence(self.params, n_train, pre.window_, pre.n_channels_)

    def _build(self, n_features: int) -> torch.nn.Module:
        r, p = self.resolved_, self.params
        cls = SequenceVAE if self._variational else SequenceAE
        channels = n_features // r["window"]
        return SequenceEnsemble([cls(r["window"], channels, r["hidden_sizes"], r["latent_dim"],
                                     p.architecture, p.activation, p.dropout)
                                 for _ in range(p.n_models)])

    def _feature_scale(self, val_errors: torch.Tensor) -> np.ndarray:
        # One scale per channel, shared by the window's steps: the edge steps of a window are
        # reconstructed worse than the middle ones, and a per-step scale would hide that.
        err = self._per_channel(val_errors).mean(dim=0)
        floor = max(float(err.mean()) * 1e-3, 1e-8)
        scale = err.clamp(min=floor).repeat(self.preprocessor_.window_)  # time-major rows
        self.channel_spread_ = None
        if self.params.channel_norm == "std":
            # each validation window's per-channel error, as _recon sees a window's
            per_window = self._per_channel(val_errors.double() / scale)
            sd = per_window.std(dim=0, unbiased=False)
            self.channel_spread_ = {
                "mean": per_window.mean(dim=0),
                "std": sd.clamp(min=max(float(sd.mean()) * 1e-3, 1e-12))}
        return scale.numpy()

    def _recon(self, scaled: torch.Tensor) -> torch.Tensor:
        """``channel_norm``: ``mean``, the mean of the scaled errors; ``std``, per channel the
        window's mean scaled error above its mean on the validation windows, in their
        standard deviations, squared and averaged over the channels."""
        if self.channel_spread_ is None:
            return super()._recon(scaled)
        excess = (self._per_channel(scaled) - self.channel_spread_["mean"]).clamp(min=0)
        return (excess / self.channel_spread_["std"]).pow(2).mean(dim=1)

    def _per_channel(self, errors: torch.Tensor) -> torch.Tensor:
        """(n, W*C) window errors -> (n, C) float64: each channel's mean over the steps."""
        pre = self.preprocessor_
        return errors.double().reshape(-1, pre.window_, pre.n_channels_).mean(dim=1)

    def _explain(self, errors: np.ndarray) -> np.ndarray:
        """(n, W*C) -> (n, C): each channel's mean scaled squared error over the window."""
        pre = self.preprocessor_
        return errors.reshape(-1, pre.window_, pre.n_channels_).mean(axis=1)
