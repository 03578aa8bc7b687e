"""MLflow pyfunc wrapper around a saved Detector (logged as "model from code", no pickle).

``mlflow.pyfunc.load_model(uri).predict(df)`` returns one row per input row with ``score``,
``p_value``, ``is_anomaly`` (primary score), ``score_<kind>`` and ``p_value_<kind>`` for each
score kind, and ``unknown_categories``.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from training.detector import Detector


class AnomalyDetectorModel(mlflow.pyfunc.PythonModel):
    """Loads the detector once in ``load_context``; ``predict`` only scores."""

    def load_context(self, context):
        self.detector = Detector.load(context.artifacts["detector"])

    def predict(self, context, model_input, params=None):
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.detector.score(df, source="input")


mlflow.models.set_model(AnomalyDetectorModel())
