"""Logging a detector as a self-contained MLflow pyfunc.

What a registered model needs to load travels with it, so it loads wherever MLflow runs, with
nothing of this project installed (``mlflow models serve --env-manager virtualenv``, Spark
executors, ``mlflow models build-docker``):

- the pyfunc itself, :mod:`pipelines.registry.pyfunc_model`, logged as a model from code (the
  file is copied into the model; nothing is pickled);
- the package it imports, ``training/``, as the model's ``code_paths`` (``code/training``),
  which MLflow puts first on ``sys.path`` when it loads the model. Only the ML core travels:
  it imports neither the CLI, nor the service, nor their dependencies;
- the saved detector as the artifact ``detector`` (state dict, JSON, no pickle);
- ``requirements.txt`` with exact pins (``==``, the version installed when the model was
  trained) of every distribution the loaded detector imports: torch, numpy, pandas, pyarrow,
  pillow and mlflow. A local build label is dropped (``torch 2.13.0+cpu`` -> ``torch==2.13.0``),
  so the CPU and the CUDA builds of the same release both satisfy the pin.

Why ``code_paths`` and not the project's wheel: the wheel would carry, and its metadata would
require, the CLI's and the service's dependencies (FastAPI, uvicorn, APScheduler, ...) that a
model never imports; and the code copied into the model is exactly the code the weights were
trained with, so a later release of this project can neither break nor silently change the
scores of a registered version.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

import training
from training.detector import BaseDetector

PYFUNC_CODE = str(Path(__file__).with_name("pyfunc_model.py"))
# Distributions the loaded pyfunc imports (training/ imports PIL for every data kind).
MODEL_DISTRIBUTIONS = ("torch", "numpy", "pandas", "pyarrow", "pillow", "mlflow")
CODE_PACKAGES = (Path(training.__file__).parent,)


def pinned(distribution: str) -> str:
    """``name==version`` of an installed distribution, without a local build label."""
    version = metadata.version(distribution).split("+", 1)[0]
    return f"{distribution}=={version}"


def model_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """The exact pins a logged model's ``requirements.txt`` lists."""
    names = list(dict.fromkeys((*MODEL_DISTRIBUTIONS, *extra)))
    return [pinned(n) for n in names]


def _copy_code(into: Path) -> list[str]:
    """The code packages, copied without bytecode caches; returns their paths."""
    paths = []
    for package in CODE_PACKAGES:
        target = into / package.name
        shutil.copytree(package, target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        paths.append(str(target))
    return paths


# Column types MLflow cannot describe: inferring a signature from one gives an unnamed [Any],
# whose model then receives no named column at all. No MLflow type takes them as input either
# (long and double both refuse uint64), so such a column is named and typed Any.
_UNTYPED = ("uint64", "UInt64")


def table_signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """MLflow's signature of a table model, every input column named (a uint64 one typed Any:
    the detector checks its values, as it checks every column's)."""
    untyped = [c for c in example.columns if str(example[c].dtype) in _UNTYPED]
    signature = infer_signature(example.astype(dict.fromkeys(untyped, "float64")), output)
    if not untyped:
        return signature
    inputs = [ColSpec(AnyType(), s.name, required=s.required) if s.name in untyped else s
              for s in signature.inputs.inputs]
    return ModelSignature(inputs=Schema(inputs), outputs=signature.outputs,
                          params=signature.params)


def log_pyfunc(detector: BaseDetector, example: pd.DataFrame, signature: ModelSignature,
               requirements: tuple[str, ...] = ()):
    """Save the detector and log it as the self-contained pyfunc ``model`` (see the module
    docstring) with its signature and input example.

    Args:
        requirements: distributions to pin beyond :data:`MODEL_DISTRIBUTIONS`.

    Returns:
        MLflow's ModelInfo.
    """
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow suggests type hints on predict(); the signature already types the input.
        warnings.filterwarnings("ignore", message=".*type hints.*")
        path = detector.save(Path(tmp) / "detector")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=PYFUNC_CODE,
            artifacts={"detector": str(path)},
            code_paths=_copy_code(Path(tmp) / "code"),
            signature=signature,
            input_example=example,
            pip_requirements=model_requirements(requirements),
        )
