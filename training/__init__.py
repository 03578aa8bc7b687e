"""The ML core: preprocessing, autoencoder networks, training, scores, calibration, save/load.

Knows nothing of HTTP, schedules or registries.
"""

from training.detector import Detector
from training.errors import AnomalyError, ConfigError, DataError, ModelFormatError, NotFittedError
from training.params import DetectorParams

__all__ = ["AnomalyError", "ConfigError", "DataError", "Detector", "DetectorParams",
           "ModelFormatError", "NotFittedError"]
