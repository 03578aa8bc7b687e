"""A model as the service serves it: the detector, where it came from, and its input parsers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.registry.download import ModelSource
from service.scoring.inputs import ModelInputs
from training.detector import BaseDetector, ImageDetector, SequenceDetector, load_detector
from training.preprocessing.tabular import Records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """An immutable loaded version: swapped whole on reload, never changed in place."""

    source: ModelSource
    detector: BaseDetector
    inputs: ModelInputs | None  # None for an image model
    path: Path
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def load(cls, source: ModelSource, path: Path, max_records: int) -> ServedModel:
        """Load the detector saved in ``path`` and build its request parser."""
        detector = load_detector(path)
        inputs = None
        if not isinstance(detector, ImageDetector):  # images arrive as files, not records
            inputs = ModelInputs(source.name, detector.preprocessor_.columns_, max_records)
        return cls(source=source, detector=detector, inputs=inputs, path=path)

    @property
    def name(self) -> str:
        """Registered model name."""
        return self.source.name

    def score(self, records: Records, explain: bool = False) -> dict[str, np.ndarray]:
        """The columns of ``Detector.score_columns`` for validated request records; for a
        sequence model those of ``SequenceDetector.series_columns``, one per record."""
        if isinstance(self.detector, SequenceDetector):
            return self.detector.series_columns(records, source="request", explain=explain)
        return self.detector.score_columns(records, source="request", explain=explain)

    @property
    def explained_columns(self) -> list[str]:
        """What an explanation's entries name: the input columns, or a sequence's channels."""
        pre = self.detector.preprocessor_
        return pre.channels_ if isinstance(self.detector, SequenceDetector) \
            else pre.input_columns_

    def metadata(self) -> dict[str, Any]:
        """What identifies the version in every answer."""
        det = self.detector
        primary = det.primary_score
        return {"name": self.name, "version": self.source.version, "alias": self.source.alias,
                "kind": det.params.kind, "primary_score": primary,
                "threshold": det.thresholds_[primary]}

    def describe(self) -> dict[str, Any]:
        """Everything about the loaded version, for GET /v1/models."""
        det = self.detector
        schema = [{"name": s.name, "kind": s.kind, "dtype": s.dtype,
                   "categories": s.categories or None, "used": not s.dropped}
                  for s in (det.preprocessor_.columns_ if self.inputs is not None else [])]
        return {**self.metadata(), "uri": self.source.uri, "run_id": self.source.run_id,
                "origin": self.source.origin, "thresholds": det.thresholds_,
                "target_fpr": det.params.target_fpr,
                "achievable_fpr": det.achievable_fpr_,
                "score_kinds": list(det.calibrations_),
                "latent_dim": int(det.resolved_["latent_dim"]),
                "input_schema": schema, "loaded_at": self.loaded_at.isoformat()}

    def calibration_quantiles(self, qs: np.ndarray) -> np.ndarray:
        """Quantiles of the primary score on the calibration normals."""
        return np.quantile(self.detector.calibrations_[self.detector.primary_score].scores, qs)
