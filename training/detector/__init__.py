"""Detectors: one template (:mod:`training.detector.base`) and a class per data kind.

Importing this package registers every data kind's detector for
:func:`~training.detector.persistence.load_detector`.
"""

from training.detector.base import BaseDetector
from training.detector.image import ImageDetector
from training.detector.persistence import load_detector, save_detector
from training.detector.sequence import SequenceDetector
from training.detector.tabular import Detector

__all__ = ["BaseDetector", "Detector", "ImageDetector", "SequenceDetector", "load_detector",
           "save_detector"]
