"""Detectors: one template (:mod:`training.detector.base`) and a class per data kind."""

from training.detector.base import Detector
from training.detector.image import ImageDetector
from training.detector.persistence import load_detector

__all__ = ["Detector", "ImageDetector", "load_detector"]
