"""The training pipeline: load → validate → split → fit → calibrate → evaluate → log → register.

Everything that can fail because of the input (files, columns, values, config) fails before an
MLflow run is opened. A run that fails later ends FAILED and registers nothing: the model version
is created last, after every artifact is logged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

from pipelines.registry.pyfunc import log_pyfunc
from pipelines.registry.tracking import ensure_experiment, use_tracking_uri
from pipelines.registry.versions import register
from pipelines.train import plots
from pipelines.train.config import TrainConfig
from training.data.tables import labels_of, read_table
from training.detector.base import Detector
from training.detector.image_params import IMAGE_KINDS
from training.errors import DataError
from training.metrics import detection_metrics
from training.preprocessing.tabular import TabularPreprocessor

log = logging.getLogger(__name__)

MIN_NORMAL_ROWS = 30


@dataclass
class Splits:
    """Normal rows for fitting and calibrating, and optional labelled rows for evaluation."""

    fit: pd.DataFrame
    calibration: pd.DataFrame
    eval_X: pd.DataFrame | None = None
    eval_y: np.ndarray | None = None


@dataclass
class TrainResult:
    """What a training run produced."""

    name: str
    kind: str
    run_id: str
    version: str | None
    alias: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    primary_score: str = ""


def split_data(cfg: TrainConfig, df: pd.DataFrame) -> Splits:
    """Separate normals from labelled anomalies and cut the normals into fit/calibration/eval."""
    rng = np.random.default_rng(cfg.seed)
    eval_X = eval_y = None
    if cfg.id_column and cfg.id_column not in df.columns:
        raise DataError(f"{cfg.data}: id column '{cfg.id_column}' not found; "
                        f"columns are {list(df.columns)}")
    # Check every value in file order first, so errors name the record as it is in the file.
    TabularPreprocessor(cfg.id_column, cfg.label_column).fit(df, cfg.data)
    normal = df
    anomalies = None
    if cfg.label_column and (cfg.label_column in df.columns or not cfg.eval_data):
        y = labels_of(df, cfg.label_column, cfg.data).to_numpy()
        normal, anomalies = df[y == 0], df[y == 1]
    normal = normal.iloc[rng.permutation(len(normal))].reset_index(drop=True)
    n = len(normal)
    if n < MIN_NORMAL_ROWS:
        raise DataError(f"{cfg.data}: {n} normal rows; at least {MIN_NORMAL_ROWS} are needed to "
                        "split into training, validation and calibration sets")
    n_eval = 0
    if anomalies is not None and len(anomalies) and not cfg.eval_data:
        n_eval = int(round(cfg.eval_fraction * n))
        eval_X = pd.concat([normal.iloc[:n_eval], anomalies], ignore_index=True)
        eval_y = np.r_[np.zeros(n_eval, dtype=int), np.ones(len(anomalies), dtype=int)]
    n_cal = max(10, int(round(cfg.calibration_fraction * n)))
    calibration = normal.iloc[n_eval : n_eval + n_cal]
    fit = normal.iloc[n_eval + n_cal :]
    if cfg.eval_data:
        edf = read_table(cfg.eval_data)
        eval_y = labels_of(edf, cfg.label_column, cfg.eval_data).to_numpy()
        eval_X = edf
    return Splits(fit=fit, calibration=calibration, eval_X=eval_X, eval_y=eval_y)


def fingerprint(path: str) -> str:
    """sha256 of the data file's bytes: the same file gives the same fingerprint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_training(cfg: TrainConfig, tracking_uri: str | None = None) -> TrainResult:
    """Run one training job end to end and return what it registered."""
    params = cfg.detector_params()
    images = params.kind in IMAGE_KINDS
    # Every input check happens before a run is opened: bad input logs and registers nothing.
    if images:  # a folder, .npz or IDX file of images
        from pipelines.train import images as image_train

        splits, detector, data_params = image_train.prepare(cfg, params)
        data_params["data_sha256"] = image_train.fingerprint(cfg.data)
    else:
        df = read_table(cfg.data)
        splits = split_data(cfg, df)
        detector = Detector(id_column=cfg.id_column, label_column=cfg.label_column,
                            **params.to_dict())
        schema = TabularPreprocessor(cfg.id_column, cfg.label_column).fit(splits.fit, cfg.data)
        if splits.eval_X is not None:
            schema.validate(splits.eval_X, cfg.eval_data or cfg.data)
        data_params = {"data_sha256": fingerprint(cfg.data)}

    use_tracking_uri(tracking_uri)
    ensure_experiment(cfg.experiment)
    with mlflow.start_run(run_name=f"{cfg.name}-{cfg.kind}") as run:
        mlflow.set_tags({"model_name": cfg.name, "kind": cfg.kind,
                         "primary_score": params.primary_score})
        t0 = time.perf_counter()
        detector.fit(splits.fit, source=cfg.data,
                     on_epoch=lambda e, tr, va: mlflow.log_metrics(
                         {"train_loss": tr, "val_loss": va}, step=e))
        fit_seconds = time.perf_counter() - t0
        detector.calibrate(splits.calibration, source=cfg.data)

        logged_params = {**params.to_dict(), **detector.resolved_,
                         "data": cfg.data, "eval_data": cfg.eval_data,
                         "label_column": cfg.label_column, "id_column": cfg.id_column,
                         "n_fit_rows": len(splits.fit),
                         "n_calibration_rows": len(splits.calibration),
                         "n_input_columns": len(detector.preprocessor_.input_columns_),
                         "n_features": detector.preprocessor_.n_features_, **data_params}
        mlflow.log_params({k: ("" if v is None else v) for k, v in logged_params.items()})
        dataset = (image_train.dataset(splits, cfg) if images else
                   mlflow.data.from_pandas(splits.fit, source=cfg.data, name=Path(cfg.data).name))
        mlflow.log_input(dataset, context="training")

        metrics = _calibration_metrics(detector, splits.calibration, cfg.data)
        metrics.update({"fit_seconds": fit_seconds, "epochs_trained": len(detector.history_),
                        "best_val_loss": min(h["val_loss"] for h in detector.history_)})
        eval_scores = None
        if splits.eval_X is not None:
            eval_scores = detector.raw_scores(splits.eval_X, source=cfg.eval_data or cfg.data)
            metrics.update(_evaluation_metrics(detector, splits.eval_y, eval_scores))
        mlflow.log_metrics(metrics)
        _log_figures(detector, splits, eval_scores, cfg)
        if images:
            image_train.log_pictures(detector, splits, cfg)
            model_info = image_train.log_model(detector, splits.fit)
        else:
            model_info = _log_model(detector, splits.fit)

        version = None
        if cfg.register:
            tags = {"kind": cfg.kind, "primary_score": detector.primary_score,
                    "threshold": f"{detector.thresholds_[detector.primary_score]:.6g}",
                    "target_fpr": str(params.target_fpr), "run_id": run.info.run_id}
            version = register(model_info.model_uri, cfg.name, cfg.alias, tags)
            log.info("registered %s version %s as @%s", cfg.name, version, cfg.alias)
    return TrainResult(name=cfg.name, kind=cfg.kind, run_id=run.info.run_id, version=version,
                       alias=cfg.alias if version else None, metrics=metrics,
                       thresholds=detector.thresholds_, primary_score=detector.primary_score)


def _calibration_metrics(detector: Detector, calibration: pd.DataFrame, source: str
                         ) -> dict[str, float]:
    out: dict[str, float] = {"calibration_n": float(len(calibration))}
    primary = detector.primary_score
    for kind, cal in detector.calibrations_.items():
        s = cal.scores
        out[f"threshold_{kind}"] = cal.threshold
        out[f"calibration_fpr_{kind}"] = float(np.mean(s > cal.threshold))
        out[f"calibration_median_{kind}"] = float(np.median(s))
        out[f"calibration_p99_{kind}"] = float(np.quantile(s, 0.99))
    out["threshold"] = out[f"threshold_{primary}"]
    return out


def _evaluation_metrics(detector: Detector, labels: np.ndarray, scores: dict[str, np.ndarray]
                        ) -> dict[str, float]:
    out: dict[str, float] = {"eval_n_normal": float(np.sum(labels == 0)),
                             "eval_n_anomalous": float(np.sum(labels == 1))}
    for kind, s in scores.items():
        m = detection_metrics(labels, s, detector.calibrations_[kind].threshold)
        out.update({f"{name}_{kind}": v for name, v in m.items()})
        if kind == detector.primary_score:
            out.update(m)  # unsuffixed names: the primary score, comparable across model kinds
    return {k: v for k, v in out.items() if v == v}  # MLflow rejects NaN


def _log_figures(detector: Detector, splits: Splits, eval_scores: dict[str, np.ndarray] | None,
                 cfg: TrainConfig) -> None:
    fig = plots.loss_curves(detector.history_, f"{cfg.name} ({cfg.kind})")
    mlflow.log_figure(fig, "plots/loss_curves.png")
    plots.close(fig)
    for kind, cal in detector.calibrations_.items():
        anomalous = None
        if eval_scores is not None:
            anomalous = eval_scores[kind][splits.eval_y == 1]
        fig = plots.score_histogram(kind, cal.scores, anomalous, cal.threshold)
        mlflow.log_figure(fig, f"plots/scores_{kind}.png")
        plots.close(fig)
    if eval_scores is not None and 0 < splits.eval_y.sum() < len(splits.eval_y):
        fig = plots.roc_pr_curves(splits.eval_y, eval_scores)
        mlflow.log_figure(fig, "plots/roc_pr.png")
        plots.close(fig)


def _log_model(detector: Detector, fit_rows: pd.DataFrame):
    """Log the detector as a pyfunc with a signature and an input example."""
    columns = detector.preprocessor_.input_columns_
    example = fit_rows[columns].head(5).reset_index(drop=True)
    signature = infer_signature(example, detector.score(example))
    return log_pyfunc(detector, example, signature, ("pyarrow",))
