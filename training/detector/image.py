"""The image detector: convolutional AE / VAE on normal images, with per-pixel anomaly maps.

What is the images' own: reading them (:class:`~training.preprocessing.images.ImagePreprocessor`),
the convolutional networks of :mod:`training.nn.conv`, sizes derived from the image shape, one
error scale for every pixel, and the maps. Everything else is the template's
(:class:`~training.detector.base.BaseDetector`).

Score kinds (higher = more abnormal):
- ``recon``: mean squared pixel error of the reconstruction (from the posterior mean for a
  VAE), divided by its mean on the validation normals, so a normal image scores about 1;
- ``elbo`` and ``agg_elbo`` (``conv_vae``): the negative ELBO with a learned variance per pixel,
  over a fixed set of Monte-Carlo draws (scores are deterministic);
- ``elbo_vs_png`` (``conv_vae``): the ``elbo`` corrected for input complexity: minus the
  image's PNG-compressed length times the slope of ``elbo`` on that length among the
  validation normals. Likelihood and reconstruction scores rank simple images (smooth, few
  edges) as more normal than the normals themselves; the compressed length measures that
  simplicity (Serrà et al., "Input complexity and out-of-distribution detection with
  likelihood-based generative models", ICLR 2020, subtract it in bits). A continuous
  Gaussian ELBO is not a code length in the compressor's units, so the weight is the one the
  normals show rather than ln 2 per bit.
- ``elbo_vs_local`` (``conv_vae``) and ``recon_vs_local`` (both kinds, with
  ``local_complexity``, the default; primary): the network's score read against the image's
  complexity as a background model that sees simplicity as the network does measures it (a
  linear predictor of each pixel from its causal neighbours,
  :mod:`training.detector.complexity`): high when the network cannot reconstruct the image
  *for its complexity*, or when the complexity itself is unlike the normals', simpler or
  more complex (:class:`~training.detector.complexity.ComplexityCorrection`).

Anomaly maps: the per-pixel terms of ``recon`` (averaged over channels), lightly smoothed with a
Gaussian; they have the image's (H, W) and show where an image departs from normal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from training.detector.base import BaseDetector
from training.detector.complexity import ComplexityCorrection, LocalPredictor
from training.detector.image_params import IMAGE_KINDS, ImageDetectorParams, resolve_image
from training.nn.conv import ConvAE, ConvEnsemble, ConvVAE
from training.preprocessing.images import ImagePreprocessor, png_bytes

# What the image methods accept: an ImageSet, an array batch (n, H, W) / (n, C, H, W) /
# (n, H, W, C), or a sequence of file paths or encoded bytes (PNG, JPEG...).
Images = Any


class ImageDetector(BaseDetector):
    """Convolutional autoencoder anomaly detector for images.

    Args:
        **params: hyperparameters, see :class:`training.detector.image_params.ImageDetectorParams`
            (``kind`` is ``conv_ae`` or ``conv_vae``).

    Example:
        >>> det = ImageDetector(kind="conv_vae").fit(normal_images).calibrate(held_out)
        >>> det.score(["a.png", "b.png"])[["score", "p_value", "is_anomaly"]]
        >>> det.anomaly_maps(["a.png"])  # (1, H, W)
    """

    kinds = IMAGE_KINDS
    params_class = ImageDetectorParams
    preprocessor_class = ImagePreprocessor

    def _new_preprocessor(self) -> ImagePreprocessor:
        p = self.params
        return ImagePreprocessor(tuple(p.image_size) if p.image_size else None, p.channels)

    def _resolve(self, n_train: int, n_features: int) -> dict[str, Any]:
        return resolve_image(self.params, n_train, self.preprocessor_.shape)

    def _build(self, n_features: int) -> torch.nn.Module:
        r, p = self.resolved_, self.params
        cls = ConvVAE if self._variational else ConvAE
        return ConvEnsemble([cls(self.preprocessor_.shape, r["hidden_sizes"], r["latent_dim"],
                                 p.activation, p.dropout) for _ in range(p.n_models)])

    def _feature_scale(self, val_errors: torch.Tensor) -> np.ndarray:
        # One scale for every pixel: a per-pixel one would blow up the error of pixels that
        # are constant in the normal images (an MNIST border) and make the maps noisy.
        err = float(val_errors.double().mean())
        return np.full(val_errors.shape[1], max(err, 1e-12), dtype=np.float64)

    # d elbo / d PNG bytes on the validation normals (``elbo_vs_png``); None before fitting.
    complexity_slope_: float | None = None
    # The background model of the ``*_vs_local`` scores and, per such score, how its network
    # score is read against the complexity; None before fitting.
    local_: LocalPredictor | None = None
    local_corrections_: dict[str, ComplexityCorrection] | None = None

    def _fit_scores(self, X_train: np.ndarray, X_val: np.ndarray) -> None:
        self.local_ = self.local_corrections_ = None  # the network's own scores first
        super()._fit_scores(X_train, X_val)
        local = [k for k in self.score_kinds if k.endswith("_vs_local")]
        if not local and "elbo_vs_png" not in self.score_kinds:
            return
        raw = self._raw_from_matrix(X_val)
        if "elbo_vs_png" in self.score_kinds:
            self.complexity_slope_ = ComplexityCorrection.fit(
                raw["elbo"], png_bytes(X_val, self.preprocessor_.shape)).slope
        if local:
            self.local_ = LocalPredictor(self.preprocessor_.shape).fit(X_train)
            c = self.local_.complexity_of(X_val)
            self.local_corrections_ = {
                k: ComplexityCorrection.fit(raw[k.removesuffix("_vs_local")], c) for k in local}

    def _derived_scores(self, x: torch.Tensor, raw: dict[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """``<score>_vs_local``: the network's score read against the image's local
        complexity (see :class:`~training.detector.complexity.ComplexityCorrection`)."""
        if not self.local_corrections_:
            return {}
        c = self.local_.complexity(x)
        return {k: correct(raw[k.removesuffix("_vs_local")], c)
                for k, correct in self.local_corrections_.items()}

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        raw = super()._raw_from_matrix(X)
        if "elbo_vs_png" in self.score_kinds and self.complexity_slope_ is not None:
            raw["elbo_vs_png"] = raw["elbo"] - self.complexity_slope_ * png_bytes(
                X, self.preprocessor_.shape)
        return raw

    def _explain(self, errors: np.ndarray) -> np.ndarray:
        """(n, C*H*W) -> (n, H, W), averaged over channels."""
        c, h, w = self.preprocessor_.shape
        return errors.reshape(-1, c, h, w).mean(axis=1)

    def anomaly_maps(self, data: Images, source: str = "data", sigma: float | None = None
                     ) -> np.ndarray:
        """Where each image departs from normal: :meth:`explain`, lightly smoothed.

        Args:
            sigma: std of the Gaussian blur in pixels; default ``max(0.5, min(H, W) / 32)``.

        Returns:
            (n, H, W) float64, >= 0; 1 is the average error of a normal pixel.
        """
        return smooth_maps(self.explain(data, source), sigma)

    # decode / reconstruct / sample / interpolate come from the template and return images
    # (n, C, H, W) in [0, 1], since the preprocessor's inverse restores the image shape.


def smooth_maps(maps: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Explanations (n, H, W) as anomaly maps: blurred, by default with
    ``sigma = max(0.5, min(H, W) / 32)`` pixels."""
    h, w = maps.shape[1:]
    return gaussian_blur(maps, max(0.5, min(h, w) / 32) if sigma is None else float(sigma))


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
