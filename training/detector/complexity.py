"""Input complexity of images, measured the way a predictive image coder measures it.

Reconstruction and likelihood scores rank an image that is simpler than the normal ones
(smoother, fewer edges, flat) as *more* normal than the normals themselves (Nalisnick et al.,
"Do deep generative models know what they don't know?", 2019; Serrà et al., "Input complexity
and out-of-distribution detection with likelihood-based generative models", ICLR 2020). The
cure is to compare the score with a simple background model of the same pixels: what part of
an image's score is only its complexity.

The background model here is a linear predictive coder, the front half of lossless image
coders such as JPEG-LS and CALIC: every pixel is predicted from six neighbours already seen in
raster order (two to the left, three above, one two rows up), with one set of weights for every
position and channel, fitted by least squares on the training images. Only pixels whose six
neighbours all lie inside the image count; an image smaller than 3 rows by 4 columns has none,
and its complexity is 0 (the score is then the network's own, standardised). An image's
**complexity** is its mean squared prediction residual; up to constants, the code length of
its residuals under a Gaussian of fixed variance. A blurred or flat image is easy to predict
and gets a low complexity even where a general-purpose compressor (PNG) finds blurred edges
harder to code than near-binary strokes, which is why this background and not the PNG size
backs the default image scores (docs/images.md).

How a score is read against the complexity: :class:`ComplexityCorrection`. Everything is plain
tensor arithmetic on the preprocessed (n, C*H*W) matrix, so the scores that use it are exported
in the ONNX graph like the network's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from training.detector.scores import robust_location_scale

# (row, column) offsets of the neighbours each pixel is predicted from: all causal in raster
# order (above, or on the same row to the left).
OFFSETS = ((0, -1), (0, -2), (-1, -1), (-1, 0), (-1, 1), (-2, 0))
# Pixel values per chunk of images, fitting or scoring (memory bounded whatever the size).
_CHUNK_BUDGET = 1 << 20
# Floor of the standardisations' scales, relative to the median's size.
_REL_FLOOR = 1e-6


def _chunks(X: np.ndarray):
    """Consecutive row blocks of flat images X as float tensors of ``_CHUNK_BUDGET`` values."""
    step = max(1, _CHUNK_BUDGET // max(1, X.shape[1]))
    for i in range(0, len(X), step):
        yield torch.from_numpy(np.ascontiguousarray(X[i : i + step]))


def _neighbours(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C, H, W) -> the pixels whose causal neighbours all lie inside the image, (n, C,
    H - 2, W - 3), and those neighbours, (n, C, H - 2, W - 3, len(OFFSETS)). Pixels on the
    first two rows and columns and the last column are left out rather than padded: a padded
    border would add edges that are not in the image (a grey image framed in black)."""
    h, w = x.shape[-2:]
    target = x[..., 2:h, 2 : w - 1]
    return target, torch.stack([x[..., 2 + di : h + di, 2 + dj : w - 1 + dj]
                                for di, dj in OFFSETS], dim=-1)


class LocalPredictor:
    """Linear prediction of each pixel from its causal neighbours; complexity = the mean
    squared residual.

    Args:
        shape: (C, H, W) of the images whose flat rows it reads.
        weights: ``len(OFFSETS)`` neighbour weights then the intercept; None before :meth:`fit`.
    """

    def __init__(self, shape: Sequence[int], weights: Sequence[float] | None = None):
        self.shape = tuple(int(v) for v in shape)
        self.weights = None if weights is None else [float(v) for v in weights]

    def fit(self, X: np.ndarray) -> LocalPredictor:
        """Least-squares weights from flat image rows X (n, C*H*W), chunk by chunk.

        Returns:
            self
        """
        k = len(OFFSETS) + 1
        gram, cross = np.zeros((k, k)), np.zeros(k)
        for x in _chunks(X):
            target, a = _neighbours(x.double().reshape(-1, *self.shape))
            a = a.reshape(-1, k - 1)
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
            gram += (a.T @ a).numpy()
            cross += (a.T @ target.reshape(-1)).numpy()
        # A whisker of ridge keeps the system solvable when the images are constant.
        ridge = 1e-9 * max(float(np.trace(gram)), 1.0) * np.eye(k)
        self.weights = np.linalg.solve(gram + ridge, cross).tolist()
        return self

    def complexity(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) float64 mean squared prediction residual of flat float32 rows x (n, C*H*W),
        over the pixels whose causal neighbours lie inside the image."""
        target, a = _neighbours(x.reshape(-1, *self.shape).double())
        if target.shape[-2] <= 0 or target.shape[-1] <= 0:
            # Smaller than 3 x 4: no pixel to predict, every image equally simple.
            return torch.zeros(len(target), dtype=torch.float64)
        w = torch.tensor(self.weights[:-1], dtype=torch.float64)
        resid = target - (a @ w + self.weights[-1])
        return resid.pow(2).flatten(1).mean(dim=1)

    def complexity_of(self, X: np.ndarray) -> np.ndarray:
        """:meth:`complexity` of flat rows X (n, C*H*W), chunk by chunk (memory bounded)."""
        parts = [self.complexity(x) for x in _chunks(X)]
        return torch.cat(parts).numpy() if parts else np.zeros(0)

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """JSON-ready state."""
        return {"shape": list(self.shape), "weights": list(self.weights or [])}

    @classmethod
    def from_dict(cls, state: dict) -> LocalPredictor:
        """Inverse of :meth:`to_dict`."""
        return cls(state["shape"], state["weights"])


@dataclass
class ComplexityCorrection:
    """One ``<score>_vs_local`` score: a network score read against the image's complexity.

    Among the validation normals, the network score ``s`` is regressed on the complexity
    ``c`` (least squares, slope floored at 0: a score that falls with complexity needs no
    correction), leaving the residual ``r = s - slope * c``, the part of the score that the
    complexity does not explain. Both ``r`` and ``c`` are then standardised by their median
    and interquartile range on those normals, and the score is

        sqrt(max(z_r, 0)^2 + z_c^2)

    the distance from the normals in the plane of the two (uncorrelated among the normals by
    construction): an image is abnormal when the network cannot reconstruct it *for its
    complexity* (one-sided: a residual below the normals' is no evidence), or when its
    complexity is unlike theirs, in either direction (simpler, like a blurred or flat image,
    or more complex, like a sharper texture that a correction alone would excuse). The second
    part is the typicality test of Nalisnick et al. (2019) applied to the complexity.
    """

    slope: float
    resid_loc: float
    resid_scale: float
    loc: float
    scale: float

    @classmethod
    def fit(cls, score: np.ndarray, complexity: np.ndarray) -> ComplexityCorrection:
        """From the (n,) network scores and complexities of validation normals."""
        var = float(np.var(complexity))
        slope = max(float(np.cov(score, complexity, bias=True)[0, 1] / var), 0.0) if var > 0 \
            else 0.0
        # A complexity that hardly varies must not turn float32 rounding into many scales.
        return cls(slope, *robust_location_scale(score - slope * complexity, _REL_FLOOR),
                   *robust_location_scale(complexity, _REL_FLOOR))

    def __call__(self, score: torch.Tensor, complexity: torch.Tensor) -> torch.Tensor:
        """(n,) float64 corrected scores from (n,) network scores and complexities."""
        z_r = (score.double() - self.slope * complexity - self.resid_loc) / self.resid_scale
        z_c = (complexity - self.loc) / self.scale
        return torch.sqrt(z_r.clamp(min=0).pow(2) + z_c.pow(2))

    def to_dict(self) -> dict[str, float]:
        """JSON-ready state."""
        return asdict(self)
