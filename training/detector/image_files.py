"""Scoring named image files (what a service or a batch job holds), torch-free: through a
detector or its ONNX graph (:class:`~training.detector.graph.GraphScorer`) alike; the anomaly
maps need the detector's networks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def image_file_columns(detector: Any, files: Sequence[tuple[str, Any]],
                       maps: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Score named images (what a service or a batch job holds), as columns.

    Args:
        files: ``(name, content)`` pairs; content is a path, encoded bytes or an array.
        maps: also return the anomaly maps.

    Returns:
        ``(columns, maps)``: the :meth:`ImageDetector.score_columns` columns, each (n,) in
        the order of ``files``, and (n, H, W) maps or None. A file that cannot be read raises
        a :class:`~training.errors.DataError` naming it.
    """
    pre = detector.preprocessor_
    batch = np.stack([pre.image(content, name) for name, content in files]) if files else \
        np.zeros((0, *pre.shape), dtype=np.float32)
    cols = detector.score_columns(batch, explain=maps)
    anomaly_maps = cols.pop("explanation", None)
    if anomaly_maps is not None:
        from training.detector.image import smooth_maps

        anomaly_maps = smooth_maps(anomaly_maps)
    return cols, anomaly_maps


def score_image_files(detector: Any, files: Sequence[tuple[str, Any]],
                      maps: bool = False) -> tuple[pd.DataFrame, np.ndarray | None]:
    """:func:`image_file_columns` as a frame with a leading ``name`` column (one row per file),
    and the maps."""
    cols, anomaly_maps = image_file_columns(detector, files, maps)
    frame = pd.DataFrame(cols)
    frame.insert(0, "name", [name for name, _ in files])
    return frame, anomaly_maps
