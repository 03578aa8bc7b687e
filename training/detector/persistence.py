"""Saving and loading detectors: a state dict, JSON configuration, nothing pickled.

A saved detector is a folder::

    weights.pt            the network's state dict (read back with ``weights_only``)
    aggregate_prior.pt    VAEs: the ``agg_elbo`` prior's posterior means and log-variances
    detector.json         format version, parameters, resolved sizes, error scales, history,
                          thresholds and calibration scores
    preprocessing.json    the fitted preprocessing (the model's input schema)

``detector.json`` names the model kind; the detector class registered for that kind reads it,
so a new data kind needs no change here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration import ScoreCalibration
from training.detector.registry import DETECTORS, detector_class
from training.errors import ModelFormatError

FORMAT_VERSION = 3  # bumped whenever what save_detector writes changes meaning
PRIOR_FILE = "aggregate_prior.pt"
REFERENCE_FILE = "reference.pt"  # the ``knn`` score's training rows
_REQUIRED = ("weights.pt", "detector.json", "preprocessing.json")


def save_detector(det: Any, path: str | Path) -> Path:
    """Write a fitted, calibrated detector (a :class:`~training.detector.base.BaseDetector`)
    into the folder ``path``; returns it."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(det.network_.state_dict(), path / "weights.pt")
    if det.prior_ is not None:
        torch.save(det.prior_, path / PRIOR_FILE)
    if det.reference_ is not None:
        torch.save(det.reference_, path / REFERENCE_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "id_column": det.id_column,
        "label_column": det.label_column,
        "params": det.params.to_dict(),
        "resolved": det.resolved_,
        "n_features": int(det.preprocessor_.n_features_),
        "feature_names": det.preprocessor_.feature_names_,
        "feature_scale": det.feature_scale_.tolist(),
        "history": det.history_,
        "calibration": {k: c.to_dict() for k, c in det.calibrations_.items()},
        "combination": det.combination_,
        "knn_mean": det.knn_mean_,
        "complexity_slope": getattr(det, "complexity_slope_", None),
        "channel_spread": None if getattr(det, "channel_spread_", None) is None else {
            k: v.tolist() for k, v in det.channel_spread_.items()},
        "local_complexity": None if getattr(det, "local_", None) is None else {
            "predictor": det.local_.to_dict(),
            "corrections": {k: c.to_dict() for k, c in det.local_corrections_.items()}},
    }
    (path / "detector.json").write_text(json.dumps(meta))
    (path / "preprocessing.json").write_text(json.dumps(det.preprocessor_.to_dict(), indent=1))
    return path


def read_saved(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``detector.json`` and ``preprocessing.json`` of the detector saved at ``path``, checked
    (the files are there, valid JSON, this format); reads no tensors, imports no torch.

    Raises:
        ModelFormatError: a missing file, invalid JSON or another format.
    """
    path = Path(path)
    for name in _REQUIRED:
        if not (path / name).is_file():
            raise ModelFormatError(f"{path}: not a saved detector (missing {name})")
    try:
        meta = json.loads((path / "detector.json").read_text())
        preprocessing = json.loads((path / "preprocessing.json").read_text())
    except ValueError:
        raise ModelFormatError(f"{path}: detector.json or preprocessing.json is not valid "
                               "JSON") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise ModelFormatError(f"{path}: saved in detector format {version}; this library "
                               f"reads format {FORMAT_VERSION} only: retrain the model with "
                               "`anomaly train`")
    return meta, preprocessing


def read_calibrations(path: str | Path, meta: dict[str, Any], score_kinds: Any
                      ) -> dict[str, ScoreCalibration]:
    """The saved thresholds and calibration scores, one per score kind of the model.

    Raises:
        ModelFormatError: the calibrated kinds are not the model's.
    """
    calibrations = {k: ScoreCalibration.from_dict(v) for k, v in meta["calibration"].items()}
    if set(calibrations) != set(score_kinds):
        raise ModelFormatError(f"{path}: calibrated scores {sorted(calibrations)} do not "
                               f"match the model's {sorted(score_kinds)}")
    return calibrations


def load_detector(path: str | Path) -> Any:
    """The detector saved at ``path``, of whatever data kind its ``detector.json`` names.

    Raises:
        ModelFormatError: a missing file, invalid JSON, an unknown kind or another format.
    """
    import torch

    from training.detector.complexity import ComplexityCorrection, LocalPredictor

    path = Path(path)
    meta, preprocessing = read_saved(path)
    kind = meta.get("params", {}).get("kind")
    cls = detector_class(kind)
    if cls is None:
        raise ModelFormatError(f"{path}: unknown model kind {kind!r}; this library reads "
                               f"{sorted(DETECTORS)}")
    det = cls(id_column=meta["id_column"], label_column=meta["label_column"],
              **{**cls.params_class.saved_defaults, **meta["params"]})
    det.preprocessor_ = cls.preprocessor_class.from_dict(preprocessing)
    det.resolved_ = meta["resolved"]
    det.network_ = det._build(meta["n_features"])
    det.network_.load_state_dict(torch.load(path / "weights.pt", map_location="cpu",
                                            weights_only=True))
    det.network_.eval()
    if "agg_elbo" in det.score_kinds:
        if not (path / PRIOR_FILE).is_file():
            raise ModelFormatError(f"{path}: not a saved detector (missing {PRIOR_FILE})")
        det.prior_ = torch.load(path / PRIOR_FILE, map_location="cpu", weights_only=True)
    if "knn" in det.score_kinds:
        if not (path / REFERENCE_FILE).is_file():
            raise ModelFormatError(f"{path}: not a saved detector (missing {REFERENCE_FILE})")
        det.reference_ = torch.load(path / REFERENCE_FILE, map_location="cpu",
                                    weights_only=True)
        det.combination_ = meta.get("combination")
        det.knn_mean_ = bool(meta.get("knn_mean", False))
    if meta.get("complexity_slope") is not None:
        det.complexity_slope_ = float(meta["complexity_slope"])
    if getattr(det.params, "channel_norm", "mean") != "mean":
        spread = meta.get("channel_spread")
        if not spread:
            raise ModelFormatError(f"{path}: not a saved detector (detector.json lacks the "
                                   "channel_spread its recon score needs)")
        det.channel_spread_ = {k: torch.tensor(v, dtype=torch.float64)
                               for k, v in spread.items()}
    if any(k.endswith("_vs_local") for k in det.score_kinds):
        local = meta.get("local_complexity")
        if not local:
            raise ModelFormatError(f"{path}: not a saved detector (detector.json lacks the "
                                   "local_complexity background model its scores need)")
        det.local_ = LocalPredictor.from_dict(local["predictor"])
        det.local_corrections_ = {k: ComplexityCorrection(**{f: float(v) for f, v in c.items()})
                                  for k, c in local["corrections"].items()}
    det.feature_scale_ = np.asarray(meta["feature_scale"], dtype=np.float64)
    det.history_ = meta["history"]
    det.calibrations_ = read_calibrations(path, meta, det.score_kinds)
    return det
