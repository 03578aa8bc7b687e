"""Hyperparameters of an ImageDetector: the tabular ones plus the image format.

``conv_ae`` and ``conv_vae`` share every option of ``ae`` and ``vae`` where it applies;
``hidden_sizes`` are the channel widths of the convolutional stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from training.errors import ConfigError
from training.params import NEIGHBOUR_SCORES, SCORE_KINDS, DetectorParams

IMAGE_KINDS = ("conv_ae", "conv_vae")
# The dense kind with the same objective and score kinds: it validates the shared options.
DENSE_TWIN = {"conv_ae": "ae", "conv_vae": "vae"}


@dataclass
class ImageDetectorParams(DetectorParams):
    """:class:`DetectorParams` for images, with their own defaults where images differ.

    Extra fields:
        image_size: [height, width] (or one int for squares) every image is resized to;
            None = from the training images.
        channels: 1 (grayscale) or 3 (RGB); None = from the training images.
        local_complexity: also compute ``elbo_vs_local`` / ``recon_vs_local``, the network's
            scores corrected for input complexity (:mod:`training.detector.complexity`).
    """

    kind: str = "conv_vae"
    patience: int = 10
    mc_samples: int = 4
    image_size: list[int] | None = None
    channels: int | None = None
    local_complexity: bool = True
    # By dense twin. One network (on MNIST more members cost fit time for no real gain) and the
    # network's score read against the image's complexity as the primary score: the plain
    # ``recon`` and ``elbo`` call simpler images more normal than the normals
    # (training/detector/complexity.py, docs/images.md).
    default_primary: ClassVar[dict[str, str]] = {"ae": "recon_vs_local", "vae": "elbo_vs_local"}
    default_models: ClassVar[dict[str, int]] = {"ae": 1, "vae": 1}
    default_neighbours: ClassVar[dict[str, int]] = {"ae": 0, "vae": 0}
    combined_primary: ClassVar[bool] = False  # the local-complexity score stays the primary
    # Without the local-complexity scores (or saved before them): the network's own.
    plain_primary: ClassVar[dict[str, str]] = {"ae": "recon", "vae": "elbo"}
    saved_defaults: ClassVar[dict[str, Any]] = {"local_complexity": False}

    def __post_init__(self) -> None:
        if self.kind not in IMAGE_KINDS:
            raise ConfigError(f"kind: expected one of {list(IMAGE_KINDS)} for images, got "
                              f"{self.kind!r}")
        if not isinstance(self.local_complexity, bool):
            raise ConfigError(f"local_complexity: expected true or false, got "
                              f"{self.local_complexity!r}")
        kind, self.kind = self.kind, DENSE_TWIN[self.kind]
        if self.primary_score is None and not self.local_complexity:
            self.primary_score = self.plain_primary[self.kind]
        try:
            super().__post_init__()
        finally:
            self.kind = kind
        if self.geometry != "auto":
            raise ConfigError("geometry: for tables only")
        if self.image_size is not None:
            size = self.image_size
            size = [size] * 2 if isinstance(size, int) else size
            size = list(size) * 2 if isinstance(size, (list, tuple)) and len(size) == 1 else size
            if (not isinstance(size, (list, tuple)) or len(size) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 4
                               for v in size)):
                raise ConfigError(f"image_size: expected an int or [height, width], each >= 4, "
                                  f"got {self.image_size!r}")
            self.image_size = [int(v) for v in size]
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels: expected 1 or 3, got {self.channels!r}")

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """Scores this kind of model produces (those of its dense twin)."""
        base = SCORE_KINDS[DENSE_TWIN.get(self.kind, self.kind)]
        if "elbo" in base:
            base = (*base, "elbo_vs_png")
        if self.local_complexity:
            base = (*base, *(f"{k}_vs_local" for k in ("elbo", "recon") if k in base))
        return base + (NEIGHBOUR_SCORES if self.neighbours else ())

    @property
    def network_primary(self) -> str:
        """The network's own primary score: the first part of ``combined``."""
        return self.plain_primary[DENSE_TWIN.get(self.kind, self.kind)]


def resolve_image(params: ImageDetectorParams, n_images: int, shape: tuple[int, int, int]
                  ) -> dict[str, Any]:
    """Fill the ``None`` parameters from the images' shape (C, H, W) and count.

    Heuristics (no dataset-specific tuning): stride-2 stages until the feature map is about
    4-7 pixels a side (1 to 4 stages), 32 channels doubling per stage up to 128; a code of
    about sqrt(C*H*W) values (a power of two, 4 to 64); batches of about n/16 images (16 to
    64); an epoch cap of ~2,000 gradient steps (20 to 200 epochs), early stopping deciding the
    rest. The schedule is the images' own: convolutions cost far more per record than the
    dense layers the tabular schedule is sized for.
    """
    c, h, w = shape
    if params.hidden_sizes is not None:
        widths = list(params.hidden_sizes)
    else:
        stages = int(min(4, max(1, math.floor(math.log2(max(min(h, w), 2) / 4)))))
        widths = [min(128, 32 * 2**i) for i in range(stages)]
    latent = params.latent_dim or int(min(64, max(4, 2 ** round(math.log2(math.sqrt(c * h * w))))))
    batch = params.batch_size or int(min(64, max(16, 2 ** round(math.log2(max(n_images / 16,
                                                                                  1))))))
    epochs = params.max_epochs or int(min(200, max(20, math.ceil(2000 / math.ceil(n_images
                                                                                  / batch)))))
    return {"hidden_sizes": widths, "latent_dim": latent, "batch_size": batch,
            "max_epochs": epochs}
