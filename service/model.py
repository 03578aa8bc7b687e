"""A model as the service serves it: the detector, where it came from, and its input parsers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.registry.download import ModelSource
from service.encoding import FastEncoder, probe_records, score_matrix
from service.scoring.inputs import Batch, ModelInputs
from training.detector.base import Detector
from training.detector.image import ImageDetector
from training.detector.persistence import load_detector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """An immutable loaded version: swapped whole on reload, never changed in place."""

    source: ModelSource
    detector: Detector
    inputs: ModelInputs | None  # None for an image model
    encoder: FastEncoder | None
    path: Path
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @classmethod
    def load(cls, source: ModelSource, path: Path, max_records: int) -> ServedModel:
        """Load the detector saved in ``path`` and warm it up.

        The warm-up scores probe records both through :class:`FastEncoder` and through
        ``Detector.score``; if the two ever disagree the fast path is switched off.
        """
        detector = load_detector(path)
        if isinstance(detector, ImageDetector):  # images: no record schema, no fast path
            return cls(source=source, detector=detector, inputs=None, encoder=None, path=path)
        pre = detector.preprocessor_
        inputs = ModelInputs(source.name, pre.columns_, max_records)
        encoder: FastEncoder | None = FastEncoder(pre)
        probe = probe_records(pre)
        expected = detector.score(pd.DataFrame.from_records(probe, columns=pre.input_columns_),
                                  source="probe")
        got = score_matrix(detector, *encoder.encode(Batch(n=len(probe), records=probe)))
        if list(got) != list(expected.columns) or not all(
                np.array_equal(got[c], expected[c].to_numpy()) for c in got):
            log.warning("%s v%s: fast encoding differs from the library's; using the library "
                        "path (slower)", source.name, source.version)
            encoder = None
        return cls(source=source, detector=detector, inputs=inputs, encoder=encoder, path=path)

    @property
    def name(self) -> str:
        """Registered model name."""
        return self.source.name

    def score(self, batch: Batch) -> dict[str, np.ndarray]:
        """The columns of ``Detector.score`` for the batch's records, each (n,)."""
        if self.encoder is not None:
            with torch.inference_mode():
                return score_matrix(self.detector, *self.encoder.encode(batch))
        frame = self.detector.score(batch.frame(self.inputs.columns), source="request")
        return {c: frame[c].to_numpy() for c in frame.columns}

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
                "score_kinds": list(det.calibrations_),
                "latent_dim": int(det.resolved_["latent_dim"]),
                "input_schema": schema, "loaded_at": self.loaded_at.isoformat()}

    def calibration_quantiles(self, qs: np.ndarray) -> np.ndarray:
        """Quantiles of the primary score on the calibration normals."""
        return np.quantile(self.detector.calibrations_[self.detector.primary_score].scores, qs)
