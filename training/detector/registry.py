"""Which detector class trains (and loads) each model kind.

Every detector class registers the model kinds it names in ``kinds`` when it is defined
(:meth:`BaseDetector.__init_subclass__`); importing :mod:`training.detector` defines them all.
"""

from __future__ import annotations

from typing import Any

DETECTORS: dict[str, Any] = {}  # model kind ("vae", "conv_ae", ...) -> detector class


def detector_class(kind: str) -> Any:
    """The detector class for ``kind``, or None when no data kind trains it. (Importing any
    module of :mod:`training.detector` runs the package first, which defines every kind.)"""
    return DETECTORS.get(kind)
