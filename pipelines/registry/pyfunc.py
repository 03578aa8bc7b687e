"""Logging a detector as a self-contained MLflow pyfunc (the model-from-code file beside it)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature

from training.detector import Detector

PYFUNC_CODE = str(Path(__file__).with_name("pyfunc_model.py"))


def log_pyfunc(detector: Detector, example: pd.DataFrame, signature: ModelSignature,
               requirements: tuple[str, ...] = ()):
    """Save the detector and log it as the pyfunc ``model`` with its signature and example."""
    import torch

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow suggests type hints on predict(); the signature already types the input.
        warnings.filterwarnings("ignore", message=".*type hints.*")
        path = detector.save(Path(tmp) / "detector")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=PYFUNC_CODE,
            artifacts={"detector": str(path)},
            signature=signature,
            input_example=example,
            pip_requirements=[f"torch>={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}", "pandas", "numpy", *requirements],
        )
