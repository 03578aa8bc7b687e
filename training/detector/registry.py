"""Which detector class trains (and loads) each model kind.

Every detector class registers the model kinds it names in ``kinds`` when it is defined
(:meth:`BaseDetector.__init_subclass__`); :func:`detector_class` imports every data kind's
module first, so asking defines them all (and this module alone imports no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

DETECTORS: dict[str, Any] = {}  # model kind ("vae", "conv_ae", ...) -> detector class
DATA_KIND_MODULES = ("training.detector.tabular", "training.detector.image",
                     "training.detector.sequence")


def detector_class(kind: str) -> Any:
    """The detector class for ``kind``, or None when no data kind trains it (then
    :data:`DETECTORS` lists every kind there is)."""
    for module in DATA_KIND_MODULES:
        importlib.import_module(module)
    return DETECTORS.get(kind)
