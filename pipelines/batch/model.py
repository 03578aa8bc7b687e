"""Resolve a model URI through MLflow once, download it, and load its Detector.

The detector is loaded from the pyfunc's own artifacts (``<model>/artifacts/detector``), so
batch scores are the numbers ``mlflow.pyfunc.load_model(uri).predict`` gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.registry.versions import RegistryError
from training.detector.base import Detector
from training.detector.image import ImageDetector
from training.detector.persistence import load_detector
from training.errors import ModelFormatError
from training.preprocessing.tabular import NUMERIC

MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN = "model_name", "model_version"
_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@dataclass
class BatchModel:
    """A model ready to score: where it came from, where it lies, and its detector."""

    uri: str
    name: str
    version: str
    path: Path
    detector: Detector

    @property
    def is_image(self) -> bool:
        """Whether the model scores image files (one output row per image) instead of rows."""
        return isinstance(self.detector, ImageDetector)

    @property
    def input_columns(self) -> list[str]:
        """Columns every input must carry."""
        return self.detector.preprocessor_.input_columns_

    @property
    def numeric_columns(self) -> list[str]:
        """Input columns the model reads as numbers."""
        return [s.name for s in self.detector.preprocessor_.columns_ if s.kind == NUMERIC]

    def output_probe(self) -> pd.DataFrame:
        """The detector's output for one synthetic record: its columns and dtypes."""
        pre = self.detector.preprocessor_
        record = pre.inverse_transform(np.zeros((1, pre.n_features_), dtype=np.float32))
        return self.detector.score(record, source="probe")

    def output_schema(self) -> pa.Schema:
        """Arrow schema of the score columns plus model name and version."""
        probe = pa.Table.from_pandas(self.output_probe(), preserve_index=False).schema
        return pa.schema(list(probe) + [pa.field(MODEL_NAME_COLUMN, pa.string()),
                                        pa.field(MODEL_VERSION_COLUMN, pa.string())])


def resolve_version(uri: str) -> tuple[str, str, str]:
    """``(name, version, download_uri)`` for a model URI.

    ``models:/NAME@ALIAS`` is pinned to the version the alias points at now, so a promotion
    during a job cannot mix two models in one output. Other URIs (``runs:/``, paths) have no
    registered name: the URI stands in for it and the version is empty.
    """
    m = _ALIAS.match(uri)
    if m:
        try:
            mv = MlflowClient().get_model_version_by_alias(m["name"], m["alias"])
        except MlflowException as e:
            if e.error_code in _MISSING:
                raise RegistryError(f"model '{m['name']}' has no alias '{m['alias']}'; "
                                    "see `anomaly models list`") from None
            raise
        return m["name"], str(mv.version), f"models:/{m['name']}/{mv.version}"
    m = _VERSION.match(uri)
    if m:
        try:
            MlflowClient().get_model_version(m["name"], m["version"])
        except MlflowException as e:
            if e.error_code in _MISSING:
                raise RegistryError(f"model '{m['name']}' has no version {m['version']}; "
                                    "see `anomaly models list`") from None
            raise
        return m["name"], m["version"], uri
    if uri.startswith("models:/"):
        raise RegistryError(f"{uri}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    return uri, "", uri


def load_batch_model(uri: str, workdir: Path) -> BatchModel:
    """Resolve ``uri``, download the model into ``workdir`` once and load its detector."""
    name, version, download_uri = resolve_version(uri)
    local = Path(download_uri)
    if local.is_dir():
        path = local
    else:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=download_uri,
                                                            dst_path=str(workdir / "model")))
        except MlflowException as e:
            if e.error_code in _MISSING:
                raise RegistryError(f"{uri}: model not found ({e.message.splitlines()[0]})"
                                    ) from None
            raise
    detector_dir = path / "artifacts" / "detector"
    if not detector_dir.is_dir():
        raise ModelFormatError(f"{uri}: not an anomaly-detector model (no artifacts/detector "
                               "in it); register one with `anomaly train`")
    return BatchModel(uri=uri, name=name, version=version, path=path,
                      detector=load_detector(detector_dir))


def result_arrays(model: BatchModel, fields: list[pa.Field], scores: pd.DataFrame
                  ) -> list[pa.Array]:
    """One array per output field: the model's name and version, or the score column of that
    name from ``scores`` (one row per scored record), typed as the field says."""
    n = len(scores)
    arrays = []
    for f in fields:
        if f.name == MODEL_NAME_COLUMN:
            arrays.append(pa.array([model.name] * n, type=pa.string()))
        elif f.name == MODEL_VERSION_COLUMN:
            arrays.append(pa.array([model.version] * n, type=pa.string()))
        else:
            arrays.append(pa.array(scores[f.name].to_numpy(), type=f.type))
    return arrays
