"""Data kinds of the training pipeline: what each kind reads, splits, pictures and logs.

The pipeline (:mod:`pipelines.train.run`) is the same for every kind; it looks the kind up once
by the model kind (``vae`` -> tables, ``conv_vae`` -> images). Each module of this package
defines one :class:`DataKind` named ``KIND``; a new data kind is a new module here (beside its
detector in :mod:`training.detector`), with no change to the pipeline.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from pipelines.train.config import TrainConfig
from pipelines.train.splits import Splits
from training.detector import BaseDetector
from training.errors import ConfigError


@dataclass
class Prepared:
    """A job's checked data, its unfitted detector, and run parameters the kind adds."""

    splits: Splits
    detector: BaseDetector
    params: dict[str, Any] = field(default_factory=dict)


class DataKind:
    """What the pipeline asks of a data kind. Every input check happens in :meth:`prepare`,
    before an MLflow run is opened."""

    model_kinds: tuple[str, ...] = ()

    def prepare(self, cfg: TrainConfig, params: Any) -> Prepared:
        """Read, check and split the data; build the (unfitted) detector."""
        raise NotImplementedError

    def dataset(self, prepared: Prepared, cfg: TrainConfig) -> Any:
        """The training data as an MLflow dataset input."""
        raise NotImplementedError

    def log_pictures(self, detector: BaseDetector, splits: Splits, cfg: TrainConfig) -> None:
        """Kind-specific artifacts beyond the shared plots (none by default)."""

    def log_model(self, detector: BaseDetector, splits: Splits) -> Any:
        """Log the fitted detector as the run's pyfunc model; returns MLflow's ModelInfo."""
        raise NotImplementedError


def kind_for(model_kind: str) -> DataKind:
    """The data kind that trains ``model_kind``."""
    kinds: dict[str, DataKind] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, DataKind):
            kinds.update(dict.fromkeys(kind.model_kinds, kind))
    if model_kind not in kinds:
        raise ConfigError(f"kind: expected one of {sorted(kinds)}, got {model_kind!r}")
    return kinds[model_kind]
