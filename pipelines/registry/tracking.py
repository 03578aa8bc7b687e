"""Which MLflow store a process talks to, and the experiments runs land in.

The default store is an embedded SQLite database (``mlflow.db``) with a local artifact folder
(``mlruns/``) in the working directory; ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) points
at any MLflow server or database instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


DEFAULT_DB = "mlflow.db"
# MLflow's experiment-kind tag: with "custom_model_development" the UI opens an experiment on its
# runs table (model training), not on the GenAI traces overview it shows an untagged one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def use_tracking_uri(uri: str | None = None) -> str:
    """Point this process's MLflow client (tracking and registry) at ``uri`` or the default."""
    import mlflow

    uri = uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """Select experiment ``name``, creating it if needed; returns its id.

    With a SQLite store the artifacts go to ``mlruns/`` beside the database file, so a store
    is one self-contained folder whatever the working directory. The experiment carries
    MLflow's experiment-kind tag for model training (set on an existing experiment that has
    no kind yet; a kind chosen in the UI is kept).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        uri = mlflow.get_tracking_uri()
        location = None
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            location = (db.parent / "mlruns").resolve().as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location,
                                     tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException as e:  # created concurrently by another job: fine
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    elif EXPERIMENT_KIND_TAG not in (exp.tags or {}):
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG,
                                                 MODEL_TRAINING)
    return mlflow.set_experiment(name).experiment_id

