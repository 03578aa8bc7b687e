"""The batch's view of a loaded model: its columns, output schema, name and version.

Resolution and download go through :mod:`pipelines.registry.download` (the same cache and
the same errors as the service). The detector is loaded from the pyfunc's own artifacts
(``<model>/artifacts/detector``), so batch scores are the numbers
``mlflow.pyfunc.load_model(uri).predict`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.registry.download import load_model
from training.detector.image_params import IMAGE_KINDS
from training.detector.sequence_params import SEQUENCE_KINDS
from training.preprocessing.tabular import NUMERIC

if TYPE_CHECKING:
    from training.detector import Detector
    from training.detector.graph import GraphScorer

MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN = "model_name", "model_version"


@dataclass
class BatchModel:
    """A model ready to score: where it came from, where it lies, and its detector (or, for a
    cached table model with its ONNX graph, the graph's scorer: the same scores without torch).
    """

    uri: str
    name: str
    version: str
    path: Path
    detector: Detector | GraphScorer
    run_id: str | None = None  # the MLflow run that logged it

    @property
    def kind(self) -> str:
        """The model kind (``ae``, ``vae``, ``conv_ae``, ``seq_ae``...)."""
        return str(self.detector.params.kind)

    @property
    def is_image(self) -> bool:
        """Whether the model scores image files (one output row per image) instead of rows."""
        return self.kind in IMAGE_KINDS

    @property
    def is_sequence(self) -> bool:
        """Whether the model scores series: one output row per input row, each scored with
        the rows before it in its series (across chunks), the first ``window - 1`` warm-up."""
        return self.kind in SEQUENCE_KINDS

    @property
    def input_columns(self) -> list[str]:
        """Columns every input must carry."""
        return self.detector.preprocessor_.input_columns_

    @property
    def numeric_columns(self) -> list[str]:
        """Input columns the model reads as numbers."""
        return [s.name for s in self.detector.preprocessor_.columns_ if s.kind == NUMERIC]

    @property
    def feature_columns(self) -> list[str]:
        """Input columns a table model learns from (constant ones left out): a record missing
        every one of them is refused. Empty for series, whose missing rows are their gaps."""
        if self.is_sequence:
            return []
        return [s.name for s in self.detector.preprocessor_.columns_ if not s.dropped]

    @property
    def text_columns(self) -> list[str]:
        """Input columns the model reads as categories (or as text keys and times)."""
        return [s.name for s in self.detector.preprocessor_.columns_ if s.kind != NUMERIC]

    def output_probe(self) -> pd.DataFrame:
        """The detector's output for one synthetic record: its columns and dtypes."""
        pre = self.detector.preprocessor_
        if self.is_sequence:
            return self.detector.score_series(_sequence_probe(pre), source="probe")
        record = pre.inverse_transform(np.zeros((1, pre.n_features_), dtype=np.float32))
        return self.detector.score(record, source="probe")

    def output_schema(self) -> pa.Schema:
        """Arrow schema of the score columns plus model name and version."""
        probe = pa.Table.from_pandas(self.output_probe(), preserve_index=False).schema
        return pa.schema(list(probe) + [pa.field(MODEL_NAME_COLUMN, pa.string()),
                                        pa.field(MODEL_VERSION_COLUMN, pa.string())])


def _sequence_probe(pre) -> pd.DataFrame:
    """One window of synthetic records at the channels' means, one step apart, in the
    types the model was trained with."""
    w = pre.window_
    frame = pd.DataFrame({c: np.full(w, m) for c, m in zip(pre.channels_, pre.mean_)})
    for c, kind in pre.key_kinds_.items():
        if c == pre.time_column:
            values = np.arange(w) if kind == NUMERIC else \
                pd.date_range("2000-01-01", periods=w, freq="s").astype(str)
        else:
            values = np.zeros(w) if kind == NUMERIC else ["probe"] * w
        frame.insert(0, c, values)
    return frame


def load_batch_model(uri: str, workdir: Path | None = None, *, tracking_uri: str | None = None,
                     cache_dir: Path | str | None = None) -> BatchModel:
    """Resolve ``uri`` once (an alias pinned to its version for the whole job), download it
    into the model cache unless it is there already, and load its detector.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/PATH`` or a
            local model folder.
        workdir: where a ``runs:/`` model is downloaded (the caller removes it).
        tracking_uri: the registry (default: the default tracking URI).
        cache_dir: the model cache (default: the one the service uses).

    Returns:
        the model; for unregistered models the URI stands in for the name and the version is
        empty.

    Raises:
        ConfigError, ModelNotFoundError, ModelFormatError, RegistryUnavailable: as
        :func:`pipelines.registry.download.load_model`.
    """
    loaded = load_model(uri, tracking_uri=tracking_uri, cache_dir=cache_dir, workdir=workdir)
    return BatchModel(uri=loaded.source.uri, name=loaded.source.name,
                      version=loaded.source.version, path=loaded.path,
                      detector=loaded.detector, run_id=loaded.source.run_id)


def result_arrays(model: BatchModel, fields: list[pa.Field], scores: pd.DataFrame
                  ) -> list[pa.Array]:
    """One array per output field: the model's name and version, or the score column of that
    name from ``scores`` (one row per scored record), typed as the field says."""
    n = len(scores)
    arrays = []
    for f in fields:
        if f.name == MODEL_NAME_COLUMN:  # one value repeated: no list of n strings
            arrays.append(pa.repeat(pa.scalar(model.name, pa.string()), n))
        elif f.name == MODEL_VERSION_COLUMN:
            arrays.append(pa.repeat(pa.scalar(str(model.version), pa.string()), n))
        else:
            arrays.append(pa.array(scores[f.name].to_numpy(), type=f.type))
    return arrays
