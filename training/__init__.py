"""The ML core: preprocessing, autoencoder networks, training, scores, calibration, save/load.

Knows nothing of HTTP, schedules or registries.

The names below load on first use, so ``import training.errors`` (the service's Python client
needs only the errors) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
