"""The ImageDetector: convolutional AE / VAE on normal images, with per-pixel anomaly maps.

The contract is the :class:`~training.detector.base.Detector`'s, and so is most of the code:
training loop, scores, calibration, p-values, save/load. What is the images' own: reading them
(:class:`~training.preprocessing.images.ImagePreprocessor`), the convolutional networks, and
the maps.

Score kinds (higher = more abnormal):
- ``recon``: mean squared pixel error of the reconstruction (from the posterior mean for a
  VAE), divided by its mean on the validation normals, so a normal image scores about 1;
- ``elbo`` (``conv_vae``): the negative ELBO with a learned variance per pixel, over a fixed set
  of Monte-Carlo draws (scores are deterministic).

Anomaly maps: the per-pixel terms of ``recon`` (averaged over channels), lightly smoothed with a
Gaussian; they have the image's (H, W) and show where an image departs from normal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from training.calibration import ScoreCalibration
from training.detector.base import MIN_FIT_ROWS, Detector
from training.detector.image_params import ImageDetectorParams, resolve_image
from training.errors import DataError
from training.nn.conv import ConvAE, ConvEnsemble, ConvVAE
from training.preprocessing.images import ImagePreprocessor

log = logging.getLogger(__name__)

IMAGE_CHUNK = 64  # images per forward pass when scoring: bounds memory with MC draws

# What the image methods accept: an ImageSet, an array batch (n, H, W) / (n, C, H, W) /
# (n, H, W, C), or a sequence of file paths or encoded bytes (PNG, JPEG...).
Images = Any


class ImageDetector(Detector):
    """Convolutional autoencoder anomaly detector for images.

    Args:
        **params: hyperparameters, see :class:`training.detector.image_params.ImageDetectorParams`
            (``kind`` is ``conv_ae`` or ``conv_vae``).

    Example:
        >>> det = ImageDetector(kind="conv_vae").fit(normal_images).calibrate(held_out)
        >>> det.score(["a.png", "b.png"])[["score", "p_value", "is_anomaly"]]
        >>> det.anomaly_maps(["a.png"])  # (1, H, W)
    """

    preprocessor_class = ImagePreprocessor

    def __init__(self, id_column: str | None = None, label_column: str | None = None,
                 **params: Any):
        super().__init__(id_column, label_column)
        self.params = ImageDetectorParams.from_dict(params)

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, data: Images, source: str = "data",
            on_epoch: Callable[[int, float, float], None] | None = None) -> ImageDetector:
        """Fix the image format, then learn the network from normal images only.

        A random ``validation_fraction`` of the images is held out for early stopping and for
        the scale of the ``recon`` score.

        Args:
            data: normal images (see :data:`Images`).
            source: name for error messages.
            on_epoch: called with (epoch, train_loss, val_loss) after every epoch.

        Returns:
            self
        """
        p = self.params
        size = tuple(p.image_size) if p.image_size else None
        self.preprocessor_ = ImagePreprocessor(size, p.channels).fit(data, source)
        X, _ = self.preprocessor_.transform(data, source)
        if len(X) < MIN_FIT_ROWS:
            raise DataError(f"{source}: {len(X)} images; at least {MIN_FIT_ROWS} are needed to fit")
        order = np.random.default_rng(p.seed).permutation(len(X))
        n_val = max(2, int(round(p.validation_fraction * len(X))))
        X_val, X_train = X[order[:n_val]], X[order[n_val:]]
        self.resolved_ = resolve_image(p, len(X_train), self.preprocessor_.shape)
        torch.manual_seed(p.seed)
        self.network_ = self._build(X.shape[1])
        self.history_ = self._train(torch.from_numpy(X_train), torch.from_numpy(X_val), on_epoch)
        self.prior_ = self._aggregate_posterior(X_train)
        # One scale for every pixel: a per-pixel one would blow up the error of pixels that
        # are constant in the normal images (an MNIST border) and make the maps noisy.
        err = float(np.mean(self._pixel_errors(X_val)))
        self.feature_scale_ = np.full(X.shape[1], max(err, 1e-12), dtype=np.float64)
        self.calibrations_: dict[str, ScoreCalibration] = {}
        return self

    def _build(self, n_features: int) -> torch.nn.Module:
        r, p = self.resolved_, self.params
        cls = ConvVAE if self._variational else ConvAE
        return ConvEnsemble([cls(self.preprocessor_.shape, r["hidden_sizes"], r["latent_dim"],
                                 p.activation, p.dropout) for _ in range(p.n_models)])

    # -- scoring -----------------------------------------------------------------------------
    def _matrix(self, data: Images, source: str) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        return self.preprocessor_.transform(data, source)

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        parts = [super(ImageDetector, self)._raw_from_matrix(X[i : i + IMAGE_CHUNK])
                 for i in range(0, max(len(X), 1), IMAGE_CHUNK)]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def _frame(self, raw: dict[str, np.ndarray], unknown: np.ndarray) -> pd.DataFrame:
        return super()._frame(raw, unknown).drop(columns="unknown_categories")

    def score(self, data: Images, source: str = "data") -> pd.DataFrame:
        """Score images.

        Returns:
            DataFrame with one row per image, in order: ``score``, ``p_value``, ``is_anomaly``
            (primary score), and ``score_<kind>``, ``p_value_<kind>`` for every score kind.
        """
        return super().score(data, source)

    def _pixel_errors(self, X: np.ndarray) -> np.ndarray:
        """(n, H, W) squared errors of flat rows X, averaged over channels and members."""
        c, h, w = self.preprocessor_.shape
        out = np.empty((len(X), h, w), dtype=np.float64)
        with torch.no_grad():
            for i in range(0, len(X), IMAGE_CHUNK):
                err = self._squared_errors(torch.from_numpy(X[i : i + IMAGE_CHUNK]))
                out[i : i + IMAGE_CHUNK] = err.reshape(-1, c, h, w).mean(dim=1).double().numpy()
        return out

    def explain(self, data: Images, source: str = "data") -> np.ndarray:
        """Per-pixel terms of the ``recon`` score, unsmoothed.

        Returns:
            (n, H, W) float64; each image's mean over pixels is its ``recon`` score.
        """
        X, _ = self._matrix(data, source)
        return self._pixel_errors(X) / self.feature_scale_[0]

    def anomaly_maps(self, data: Images, source: str = "data", sigma: float | None = None
                     ) -> np.ndarray:
        """Where each image departs from normal: :meth:`explain`, lightly smoothed.

        Args:
            sigma: std of the Gaussian blur in pixels; default ``max(0.5, min(H, W) / 32)``.

        Returns:
            (n, H, W) float64, >= 0; 1 is the average error of a normal pixel.
        """
        maps = self.explain(data, source)
        h, w = maps.shape[1:]
        sigma = max(0.5, min(h, w) / 32) if sigma is None else float(sigma)
        return gaussian_blur(maps, sigma)

    # -- latent-space tools ------------------------------------------------------------------
    def encode(self, data: Images, source: str = "data") -> np.ndarray:
        """(n, latent_dim) codes (posterior means for a VAE; the first member's in an ensemble)."""
        X, _ = self._matrix(data, source)
        parts = []
        with torch.no_grad():
            for i in range(0, len(X), IMAGE_CHUNK):
                z = self.network_.encode(torch.from_numpy(X[i : i + IMAGE_CHUNK]))
                parts.append((z[0] if isinstance(z, tuple) else z)[0])
        if not parts:
            return np.zeros((0, self.resolved_["latent_dim"]))
        return torch.cat(parts).double().numpy()

    # decode / reconstruct / sample / interpolate come from Detector and return images
    # (n, C, H, W) in [0, 1], since the preprocessor's inverse restores the image shape.


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Blur (n, H, W) maps with a separable Gaussian (reflected edges); sigma 0 returns a copy."""
    if sigma <= 0 or maps.size == 0:
        return np.array(maps, dtype=np.float64)
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = torch.from_numpy(np.asarray(maps, dtype=np.float64)).unsqueeze(1)  # (n, 1, H, W)
    pad_h = min(radius, x.shape[2] - 1)
    pad_w = min(radius, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect") if pad_h and pad_w else x
    kh = k[radius - pad_h : radius + pad_h + 1] if pad_h else k[radius : radius + 1]
    kw = k[radius - pad_w : radius + pad_w + 1] if pad_w else k[radius : radius + 1]
    x = F.conv2d(x, (kh / kh.sum()).view(1, 1, -1, 1))
    x = F.conv2d(x, (kw / kw.sum()).view(1, 1, 1, -1))
    return x.squeeze(1).numpy()


def score_image_files(detector: ImageDetector, files: Sequence[tuple[str, Any]],
                      maps: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Score named images (what a service or a batch job holds): one row per file.

    Args:
        files: ``(name, content)`` pairs; content is a path, encoded bytes or an array.
        maps: also return the anomaly maps.

    Returns:
        ``(frame, maps)``: the :meth:`ImageDetector.score` columns with a leading ``name``
        column, and (n, H, W) maps or None. A file that cannot be read raises a
        :class:`~training.errors.DataError` naming it.
    """
    pre = detector.preprocessor_
    batch = np.stack([pre.image(content, name) for name, content in files]) if files else \
        np.zeros((0, *pre.shape), dtype=np.float32)
    frame = detector.score(batch)
    frame.insert(0, "name", [name for name, _ in files])
    return frame, (detector.anomaly_maps(batch) if maps else None)

