"""How a training job cuts its normal data: fit / calibration, and evaluation with anomalies.

The same rule for every data kind, on record indices: the normal records are shuffled
(seeded); with labelled anomalies and no separate evaluation data, ``eval_fraction`` of them go
to the evaluation set beside every anomaly; ``calibration_fraction`` (at least 10) calibrate the
thresholds; the rest fit the detector. A detector that calibrates itself by cross-fitting
(:attr:`training.params.DetectorParams.cross_fit`) gets every remaining normal record to fit on
and none held out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import DataError

MIN_NORMAL_ROWS = 30


@dataclass
class Splits:
    """Normal data for fitting and calibrating, and optional labelled data for evaluation.

    The data are the kind's own (DataFrames for tables, (n, C, H, W) arrays for images);
    ``extras`` holds what a kind's pictures need (image classes, names).
    """

    fit: Any
    calibration: Any
    eval_X: Any = None
    eval_y: np.ndarray | None = None
    extras: dict[str, Any] | None = None


@dataclass
class Cut:
    """Record indices of each part; ``evaluation`` is None without anomalies to evaluate on."""

    fit: np.ndarray
    calibration: np.ndarray
    evaluation: np.ndarray | None


def cut(labels: np.ndarray | None, n: int, cfg: Any, source: str, what: str = "rows",
        separate_eval: bool = False, hold_out: bool = True) -> Cut:
    """Split ``n`` records with optional 0/1 ``labels`` (1 = anomaly) by the rule above.

    Args:
        cfg: the training configuration (``seed``, ``eval_fraction``, ``calibration_fraction``).
        separate_eval: evaluation data come from elsewhere; no normal record is held out.
        hold_out: hold out the calibration records (False: the detector cross-fits, and
            ``calibration`` is empty).
    """
    rng = np.random.default_rng(cfg.seed)
    normal = np.arange(n) if labels is None else np.flatnonzero(labels == 0)
    anomalies = np.zeros(0, dtype=int) if labels is None else np.flatnonzero(labels == 1)
    normal = rng.permutation(normal)
    if len(normal) < MIN_NORMAL_ROWS:
        raise DataError(f"{len(normal)} normal {what}; at least {MIN_NORMAL_ROWS} are needed to "
                        "split into training, validation and calibration sets", source=source)
    n_eval, evaluation = 0, None
    if len(anomalies) and not separate_eval:
        n_eval = int(round(cfg.eval_fraction * len(normal)))
        evaluation = np.r_[normal[:n_eval], anomalies]
    n_cal = max(10, int(round(cfg.calibration_fraction * len(normal)))) if hold_out else 0
    return Cut(fit=normal[n_eval + n_cal :], calibration=normal[n_eval : n_eval + n_cal],
               evaluation=evaluation)


def fingerprint(path: str) -> str:
    """sha256 of a file's bytes, or over a folder's files (relative names and bytes)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
