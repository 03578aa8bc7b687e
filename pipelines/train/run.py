"""The training pipeline: load → validate → split → fit → calibrate → evaluate → log → register.

Everything that can fail because of the input (files, columns, values, config) fails before an
MLflow run is opened. A run that fails later ends FAILED and registers nothing: the model version
is created last, after every artifact is logged.

Metric names are the same for every model kind, grouped by prefix (the MLflow UI draws one
section per prefix):

- per epoch, unprefixed: ``val_recon_mse`` for every kind (mean squared error per feature of the
  deterministic reconstruction of the validation normals: comparable across kinds), and the
  kind's own objective under its own name, ``train_mse``/``val_mse`` (AE) or
  ``train_neg_elbo``/``val_neg_elbo`` (VAE);
- ``fit/``: ``seconds``, ``epochs``, ``best_epoch`` (the weights kept),
  ``best_val_<objective>`` and ``best_val_recon_mse`` at that epoch;
- ``calibration/``: ``n`` (the normal records the thresholds rest on: the held-out ones, or
  with cross-fitting every record the detector trained on), ``target_fpr``, and for the
  primary score ``threshold`` and ``achievable_fpr``; per score kind ``threshold_<kind>``,
  ``fpr_<kind>``, ``median_<kind>``, ``p99_<kind>``, ``achievable_fpr_<kind>``;
- ``eval/`` (with labelled data): ``n_normal``, ``n_anomalous``, and ``auroc``, ``ap``,
  ``precision``, ``recall``, ``f1``, ``fpr`` for the primary score (no suffix: these line up
  across kinds) and with a ``_<kind>`` suffix for every score kind.

Shared plots are logged at the root of the run's artifacts (``loss_curves.png``,
``scores_<kind>.png``, ``roc_pr.png``): MLflow's compare view shows the files two runs have in
common at that level, side by side.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np

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
    geometry: str | None = None  # tables: how rows were compared (``geometry``)
    set_apart: list[str] = field(default_factory=list)  # direction: columns standardised alone


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
        objective = objective_name(detector)
        detector.fit(splits.fit, source=cfg.data,
                     on_epoch=lambda record: mlflow.log_metrics(
                         epoch_metrics(record, objective), step=int(record["epoch"])))
        fit_seconds = time.perf_counter() - t0
        if not detector.calibrated_by_fit:
            detector.calibrate(splits.calibration, source=cfg.data)
        n_calibration = detector.calibrations_[detector.primary_score].scores.size

        logged_params = {**params.to_dict(), **detector.resolved_,
                         "data": cfg.data, "eval_data": cfg.eval_data,
                         "label_column": cfg.label_column, "id_column": cfg.id_column,
                         "n_fit_rows": len(splits.fit),
                         "n_calibration_rows": n_calibration,
                         "calibration": "cross-fit" if detector.calibrated_by_fit else "held-out",
                         "n_input_columns": len(detector.preprocessor_.input_columns_),
                         "n_features": detector.preprocessor_.n_features_, **prepared.params}
        mlflow.log_params({k: ("" if v is None else v) for k, v in logged_params.items()})
        _log_dataset(kind.dataset(prepared, cfg), cfg.data)

        metrics = _calibration_metrics(detector)
        metrics.update(_fit_metrics(detector.history_, objective, fit_seconds))
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
                       thresholds=detector.thresholds_, primary_score=detector.primary_score,
                       geometry=detector.resolved_.get("geometry"),
                       set_apart=getattr(detector.preprocessor_, "set_apart_", []))


# The longest dataset schema MLflow's tracking store takes (a wider table's is refused there).
_MAX_SCHEMA_CHARS = 1_048_575


def _log_dataset(dataset: Any, source: str) -> None:
    """Log the training data as the run's input; a table too wide for MLflow's schema field
    is noted instead (a warning and the ``dataset`` tag), not a failed run after the fit."""
    schema = dataset.to_dict().get("schema") or ""
    if len(schema) > _MAX_SCHEMA_CHARS:
        log.warning("%s: its schema (%d characters) is longer than MLflow stores for a "
                    "dataset: the run records the data's path only", source, len(schema))
        mlflow.set_tag("dataset", source)
        return
    mlflow.log_input(dataset, context="training")


def objective_name(detector: BaseDetector) -> str:
    """The name of the kind's training objective: ``neg_elbo`` (VAEs) or ``mse`` (AEs)."""
    return "neg_elbo" if "elbo" in detector.score_kinds else "mse"


def epoch_metrics(record: dict[str, float], objective: str) -> dict[str, float]:
    """One epoch's metrics from the detector's epoch record (see :meth:`BaseDetector.fit`)."""
    out = {f"train_{objective}": record["train_loss"], f"val_{objective}": record["val_loss"]}
    if "val_recon_mse" in record:
        out["val_recon_mse"] = record["val_recon_mse"]
    return out


def _fit_metrics(history: list[dict[str, float]], objective: str, seconds: float
                 ) -> dict[str, float]:
    best = min(history, key=lambda h: h["val_loss"])  # the epoch whose weights are kept
    out = {"fit/seconds": seconds, "fit/epochs": float(len(history)),
           "fit/best_epoch": float(best["epoch"]), f"fit/best_val_{objective}": best["val_loss"]}
    if "val_recon_mse" in best:
        out["fit/best_val_recon_mse"] = best["val_recon_mse"]
    return out


def _calibration_metrics(detector: BaseDetector) -> dict[str, float]:
    primary = detector.primary_score
    out: dict[str, float] = {"calibration/n": float(detector.calibrations_[primary].scores.size)}
    for kind, cal in detector.calibrations_.items():
        s = cal.scores
        out[f"calibration/threshold_{kind}"] = cal.threshold
        out[f"calibration/fpr_{kind}"] = float(np.mean(s > cal.threshold))
        out[f"calibration/median_{kind}"] = float(np.median(s))
        out[f"calibration/p99_{kind}"] = float(np.quantile(s, 0.99))
        out[f"calibration/achievable_fpr_{kind}"] = cal.achievable_fpr
    out["calibration/threshold"] = out[f"calibration/threshold_{primary}"]
    out["calibration/target_fpr"] = detector.params.target_fpr
    out["calibration/achievable_fpr"] = out[f"calibration/achievable_fpr_{primary}"]
    return out


def _evaluation_metrics(detector: BaseDetector, labels: np.ndarray, scores: dict[str, np.ndarray]
                        ) -> dict[str, float]:
    out: dict[str, float] = {"eval/n_normal": float(np.sum(labels == 0)),
                             "eval/n_anomalous": float(np.sum(labels == 1))}
    for kind, s in scores.items():
        m = detection_metrics(labels, s, detector.calibrations_[kind].threshold)
        out.update({f"eval/{name}_{kind}": v for name, v in m.items()})
        if kind == detector.primary_score:
            # No suffix: the primary score, comparable across model kinds.
            out.update({f"eval/{name}": v for name, v in m.items()})
    return {k: v for k, v in out.items() if v == v}  # MLflow rejects NaN


def _log_figures(detector: BaseDetector, splits: Splits, eval_scores: dict[str, np.ndarray] | None,
                 cfg: TrainConfig) -> None:
    fig = plots.loss_curves(detector.history_, f"{cfg.name} ({cfg.kind})",
                            objective_name(detector))
    mlflow.log_figure(fig, "loss_curves.png")
    plots.close(fig)
    for kind, cal in detector.calibrations_.items():
        anomalous = None
        if eval_scores is not None:
            anomalous = eval_scores[kind][splits.eval_y == 1]
        fig = plots.score_histogram(kind, cal.scores, anomalous, cal.threshold)
        mlflow.log_figure(fig, f"scores_{kind}.png")
        plots.close(fig)
    if eval_scores is not None and 0 < splits.eval_y.sum() < len(splits.eval_y):
        fig = plots.roc_pr_curves(splits.eval_y, eval_scores)
        mlflow.log_figure(fig, "roc_pr.png")
        plots.close(fig)
