"""Open a saved detector of any kind: the folder's ``detector.json`` says which class reads it."""

from __future__ import annotations

import json
from pathlib import Path

from training.detector.base import Detector
from training.detector.image import ImageDetector
from training.detector.image_params import IMAGE_KINDS
from training.errors import ModelFormatError


def load_detector(path: str | Path) -> Detector:
    """A :class:`Detector` (tables) or :class:`ImageDetector` (images) saved at ``path``."""
    meta_path = Path(path) / "detector.json"
    kind = None
    if meta_path.is_file():
        try:
            kind = json.loads(meta_path.read_text()).get("params", {}).get("kind")
        except (ValueError, AttributeError):
            raise ModelFormatError(f"{path}: detector.json is not valid JSON") from None
    return (ImageDetector if kind in IMAGE_KINDS else Detector).load(path)
