"""Register model folders in real MLflow stores for the registry tests (no training needed)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

EXPERIMENT = "registry-tests"


def register_folder(tracking_uri: str, folder: Path, name: str, alias: str | None = None,
                    artifacts: Path | None = None) -> str:
    """Log ``folder`` as a run's ``model`` artifacts and register it as a new version.

    Args:
        tracking_uri: a SQLite store (its artifacts go beside the database) or a server.
        folder: a model folder (``MLmodel``, ``artifacts/detector``...), or any folder.
        name: registered model name (created if needed).
        alias: alias pointed at the new version, if given.
        artifacts: artifact root for a new experiment in a SQLite store (default: ``mlruns``
            beside the database).

    Returns:
        the new version.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            db = Path(tracking_uri[len("sqlite:///"):])
            location = (artifacts or db.parent / "mlruns").resolve().as_uri()
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model",
                                     run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def register_without_detector(tracking_uri: str, model_folder: Path, name: str,
                              alias: str | None = None) -> str:
    """Register a copy of ``model_folder`` whose ``artifacts/detector`` is missing."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        shutil.copytree(model_folder, copy)
        shutil.rmtree(copy / "artifacts" / "detector")
        return register_folder(tracking_uri, copy, name, alias)
