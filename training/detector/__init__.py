"""Detectors: one template (:mod:`training.detector.base`) and a class per data kind.

The names below load on first use, so the torch-free parts (``image_params``,
``sequence_params``, ``registry``) import without torch: configuration checks and CLI help
need no network code. :func:`training.detector.registry.detector_class` imports every data
kind's detector before it answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from training.lazy import lazy_attributes

if TYPE_CHECKING:
    from training.detector.base import BaseDetector
    from training.detector.image import ImageDetector
    from training.detector.persistence import load_detector, save_detector
    from training.detector.sequence import SequenceDetector
    from training.detector.tabular import Detector

_HOMES = {"BaseDetector": "training.detector.base", "Detector": "training.detector.tabular",
          "ImageDetector": "training.detector.image",
          "SequenceDetector": "training.detector.sequence",
          "load_detector": "training.detector.persistence",
          "save_detector": "training.detector.persistence"}

__all__ = ["BaseDetector", "Detector", "ImageDetector", "SequenceDetector", "load_detector",
           "save_detector"]


__getattr__ = lazy_attributes(__name__, _HOMES, globals())
