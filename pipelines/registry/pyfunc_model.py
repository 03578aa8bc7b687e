"""MLflow pyfunc wrapper around a saved Detector (logged as "model from code", no pickle).

``mlflow.pyfunc.load_model(uri).predict(df)`` returns one row per input row with ``score``,
``p_value``, ``is_anomaly`` (primary score), ``score_<kind>`` and ``p_value_<kind>`` for each
score kind, and ``unknown_categories``.

A sequence model reads records in time order (its time, series and channel columns) and
returns one row per record with ``warm_up`` first (no full window ends there yet: no score).

An image model reads a column ``image`` of encoded images (PNG, JPEG...: bytes, or base64
strings) or a column ``path`` of image files, and returns the same columns but
``unknown_categories``.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from training.detector.image import ImageDetector
from training.detector.image_files import score_image_files
from training.detector.persistence import load_detector
from training.detector.sequence import SequenceDetector
from training.preprocessing.images import images_from_frame


class AnomalyDetectorModel(mlflow.pyfunc.PythonModel):
    """Loads the detector once in ``load_context``; ``predict`` only scores."""

    def load_context(self, context):
        self.detector = load_detector(context.artifacts["detector"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if isinstance(self.detector, ImageDetector):
            files = images_from_frame(df, source="input")
            return score_image_files(self.detector, files)[0].drop(columns="name")
        if isinstance(self.detector, SequenceDetector):
            return self.detector.score_series(df, source="input").reset_index(drop=True)
        return self.detector.score(df, source="input")


mlflow.models.set_model(AnomalyDetectorModel())
