"""The training pipeline: load → validate → split → fit → calibrate → evaluate → log → register.

Everything that can fail because of the input (files, columns, values, config) fails before an
MLflow run is opened. A run that fails later ends FAILED and registers nothing: the model version
is created last, after every artifact is logged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd

from pipelines.registry.tracking import ensure_experiment, use_tracking_uri
from pipelines.registry.versions import register
from pipelines.train import plots
from pipelines.train.config import TrainConfig
from pipelines.train.kinds import kind_for
from pipelines.train.splits import Splits
from training.detector import BaseDetector
from training.metrics import detection_metrics

log = logging.getLogger(__name__)



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


def run_training(cfg: TrainConfig, tracking_uri: str | None = None) -> TrainResult:
    """Run one training job end to end and return what it registered."""
    params = cfg.detector_params()
    kind = kind_for(params.kind)
    # Every input check happens before a run is opened: bad input logs and registers nothing.
    prepared = kind.prepare(cfg, params)
    splits, detector = prepared.splits, prepared.detector

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
                         "n_features": detector.preprocessor_.n_features_, **prepared.params}
        mlflow.log_params({k: ("" if v is None else v) for k, v in logged_params.items()})
        mlflow.log_input(kind.dataset(prepared, cfg), context="training")

        metrics = _calibration_metrics(detector, splits.calibration, cfg.data)
        metrics.update({"fit_seconds": fit_seconds, "epochs_trained": len(detector.history_),
                        "best_val_loss": min(h["val_loss"] for h in detector.history_)})
        eval_scores = None
        if splits.eval_X is not None:
            eval_scores = detector.raw_scores(splits.eval_X, source=cfg.eval_data or cfg.data)
            metrics.update(_evaluation_metrics(detector, splits.eval_y, eval_scores))
        mlflow.log_metrics(metrics)
        _log_figures(detector, splits, eval_scores, cfg)
        kind.log_pictures(detector, splits, cfg)
        model_info = kind.log_model(detector, splits)

        version = None
        if cfg.register:
            tags = {"kind": cfg.kind, "primary_score": detector.primary_score,
                    "threshold": f"{detector.thresholds_[detector.primary_score]:.6g}",
                    "target_fpr": str(params.target_fpr),
                    "achievable_fpr": f"{detector.achievable_fpr_:.6g}",
                    "run_id": run.info.run_id}
            version = register(model_info.model_uri, cfg.name, cfg.alias, tags)
            log.info("registered %s version %s as @%s", cfg.name, version, cfg.alias)
    return TrainResult(name=cfg.name, kind=cfg.kind, run_id=run.info.run_id, version=version,
                       alias=cfg.alias if version else None, metrics=metrics,
                       thresholds=detector.thresholds_, primary_score=detector.primary_score)


def _calibration_metrics(detector: BaseDetector, calibration: pd.DataFrame, source: str
                         ) -> dict[str, float]:
    out: dict[str, float] = {"calibration_n": float(len(calibration))}
    primary = detector.primary_score
    for kind, cal in detector.calibrations_.items():
        s = cal.scores
        out[f"threshold_{kind}"] = cal.threshold
        out[f"calibration_fpr_{kind}"] = float(np.mean(s > cal.threshold))
        out[f"calibration_median_{kind}"] = float(np.median(s))
        out[f"calibration_p99_{kind}"] = float(np.quantile(s, 0.99))
        out[f"achievable_fpr_{kind}"] = cal.achievable_fpr
    out["threshold"] = out[f"threshold_{primary}"]
    out["target_fpr"] = detector.params.target_fpr
    out["achievable_fpr"] = out[f"achievable_fpr_{primary}"]
    return out


def _evaluation_metrics(detector: BaseDetector, labels: np.ndarray, scores: dict[str, np.ndarray]
                        ) -> dict[str, float]:
    out: dict[str, float] = {"eval_n_normal": float(np.sum(labels == 0)),
                             "eval_n_anomalous": float(np.sum(labels == 1))}
    for kind, s in scores.items():
        m = detection_metrics(labels, s, detector.calibrations_[kind].threshold)
        out.update({f"{name}_{kind}": v for name, v in m.items()})
        if kind == detector.primary_score:
            out.update(m)  # unsuffixed names: the primary score, comparable across model kinds
    return {k: v for k, v in out.items() if v == v}  # MLflow rejects NaN


def _log_figures(detector: BaseDetector, splits: Splits, eval_scores: dict[str, np.ndarray] | None,
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
