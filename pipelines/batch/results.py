"""What a batch job produced: per-input and per-job results, the score sample, the MLflow metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXPERIMENT = "batch-scoring"


QUANTILES = (0.5, 0.9, 0.99)


_SAMPLE = 100_000


@dataclass
class InputResult:
    """What scoring one input produced."""

    input: str
    output: str
    rows: int = 0
    rejected: int = 0
    anomalies: int = 0
    seconds: float = 0.0
    skipped: bool = False
    rejects_file: str | None = None


@dataclass
class BatchResult:
    """What a scoring job produced, over every input."""

    run_id: str | None
    model_name: str
    model_version: str
    inputs: list[InputResult] = field(default_factory=list)
    seconds: float = 0.0
    quantiles: dict[str, float] = field(default_factory=dict)
    # the model's false-positive target and the rate its threshold promises (more than the
    # target when it was calibrated on too few records)
    target_fpr: float | None = None
    achievable_fpr: float | None = None

    def promised_by(self, model: Any) -> BatchResult:
        """Record the false-positive target of ``model`` (a loaded batch model) and the rate
        its threshold promises; returns self."""
        det = model.detector
        self.target_fpr, self.achievable_fpr = det.params.target_fpr, det.achievable_fpr_
        return self

    @property
    def rows(self) -> int:
        """Rows scored and written."""
        return sum(r.rows for r in self.inputs)

    @property
    def anomalies(self) -> int:
        """Rows flagged ``is_anomaly``."""
        return sum(r.anomalies for r in self.inputs)

    @property
    def rejected(self) -> int:
        """Malformed rows skipped."""
        return sum(r.rejected for r in self.inputs)


class ScoreSample:
    """A fixed-size uniform sample of scores (seeded), for quantiles in flat memory."""

    def __init__(self, size: int = _SAMPLE, seed: int = 0):
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._keys = np.zeros(0)
        self._values = np.zeros(0)

    def add(self, values: np.ndarray) -> None:
        """Offer a chunk of scores."""
        keys = np.concatenate([self._keys, self._rng.random(len(values))])
        vals = np.concatenate([self._values, np.asarray(values, dtype=np.float64)])
        if len(keys) > self.size:
            top = np.argpartition(keys, self.size)[: self.size]
            keys, vals = keys[top], vals[top]
        self._keys, self._values = keys, vals

    def quantiles(self, qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
        """``{"score_p50": ..., "score_max": ...}``; exact up to ``size`` scores."""
        if not len(self._values):
            return {}
        out = {f"score_p{round(q * 100)}": float(np.quantile(self._values, q)) for q in qs}
        out["score_max"] = float(self._values.max())
        return out


def job_metrics(result: BatchResult) -> dict[str, float]:
    """Rows, anomalies, anomaly rate, score quantiles, seconds and rows/s of a finished job."""
    scored = [r for r in result.inputs if not r.skipped]
    metrics = {
        "rows": result.rows, "anomalies": result.anomalies, "rows_rejected": result.rejected,
        "anomaly_rate": result.anomalies / result.rows if result.rows else 0.0,
        "inputs_scored": len(scored), "inputs_skipped": len(result.inputs) - len(scored),
        "seconds": result.seconds,
        "rows_per_second": result.rows / result.seconds if result.seconds > 0 else 0.0,
        **result.quantiles,
    }
    if result.achievable_fpr is not None:
        metrics.update(target_fpr=result.target_fpr, achievable_fpr=result.achievable_fpr)
    return {k: float(v) for k, v in metrics.items()}


def job_summary(result: BatchResult) -> str:
    """``summary.json``: what each input produced."""
    return json.dumps([r.__dict__ for r in result.inputs], indent=1)


def log_metrics(result: BatchResult) -> None:
    """Log :func:`job_metrics` and :func:`job_summary` to the active MLflow run."""
    import mlflow

    mlflow.log_metrics(job_metrics(result))
    mlflow.log_text(job_summary(result), "summary.json")

