"""Tables (CSV or Parquet) in the training pipeline: ``ae`` and ``vae``.

The whole file is checked once in file order before it is split, so an error names the record
as it is in the file; a separate evaluation file is checked against the same schema.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from pipelines.registry.pyfunc import log_pyfunc, table_signature
from pipelines.train.config import TrainConfig
from pipelines.train.kinds import DataKind, Prepared
from pipelines.train.splits import Splits, cut, fingerprint
from training.data.tables import labels_of, read_table
from training.detector import Detector
from training.errors import DataError
from training.params import KINDS, DetectorParams
from training.preprocessing.tabular import TabularPreprocessor


class Tables(DataKind):
    """Dense AE / VAE on one table of normal records (labelled anomalies optional)."""

    model_kinds = KINDS

    def prepare(self, cfg: TrainConfig, params: DetectorParams) -> Prepared:
        df = read_table(cfg.data)
        if cfg.id_column and cfg.id_column not in df.columns:
            raise DataError(f"id column '{cfg.id_column}' not found; columns are "
                            f"{list(df.columns)}", source=cfg.data)
        # The one check of every value, in file order (the detector fits on its split later).
        schema = TabularPreprocessor(cfg.id_column, cfg.label_column).fit(df, cfg.data)
        labels = None
        if cfg.label_column and (cfg.label_column in df.columns or not cfg.eval_data):
            labels = labels_of(df, cfg.label_column, cfg.data).to_numpy()
        parts = cut(labels, len(df), cfg, cfg.data, "rows", separate_eval=bool(cfg.eval_data),
                    hold_out=not params.cross_fit)
        splits = Splits(fit=df.iloc[parts.fit], calibration=df.iloc[parts.calibration])
        if parts.evaluation is not None:
            splits.eval_X = df.iloc[parts.evaluation].reset_index(drop=True)
            splits.eval_y = labels[parts.evaluation].astype(int)
        if cfg.eval_data:
            edf = read_table(cfg.eval_data)
            splits.eval_y = labels_of(edf, cfg.label_column, cfg.eval_data).to_numpy()
            schema.validate(edf, cfg.eval_data)
            splits.eval_X = edf
        detector = Detector(id_column=cfg.id_column, label_column=cfg.label_column,
                            **params.to_dict())
        return Prepared(splits, detector, {"data_sha256": fingerprint(cfg.data)})

    def dataset(self, prepared: Prepared, cfg: TrainConfig):
        return mlflow.data.from_pandas(prepared.splits.fit, source=cfg.data,
                                       name=Path(cfg.data).name)

    def log_model(self, detector: Detector, splits: Splits):
        """The pyfunc with a signature and an input example of five training records."""
        columns = detector.preprocessor_.input_columns_
        example: pd.DataFrame = splits.fit[columns].head(5).reset_index(drop=True)
        signature = table_signature(example, detector.score(example))
        return log_pyfunc(detector, example, signature)


KIND = Tables()

__all__ = ["KIND", "Tables"]
