"""The ML core: preprocessing, autoencoder networks, training, scores, calibration, save/load.

Knows nothing of HTTP, schedules or registries.

The names below load on first use, so ``import training.errors`` (the service's Python client
needs only the errors) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from training.lazy import lazy_attributes

if TYPE_CHECKING:
    from training.detector import Detector
    from training.errors import (
        AnomalyError,
        ConfigError,
        DataError,
        ModelFormatError,
        NotFittedError,
    )
    from training.params import DetectorParams

_HOMES = {"Detector": "training.detector", "DetectorParams": "training.params",
          **{name: "training.errors" for name in ("AnomalyError", "ConfigError", "DataError",
                                                  "ModelFormatError", "NotFittedError")}}

__all__ = ["AnomalyError", "ConfigError", "DataError", "Detector", "DetectorParams",
           "ModelFormatError", "NotFittedError"]


__getattr__ = lazy_attributes(__name__, _HOMES, globals())
