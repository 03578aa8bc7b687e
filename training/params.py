"""Hyperparameters of a Detector: one small typed object, validated once.

``None`` means "choose from the data's shape" (see :func:`resolve`); the chosen values are
recorded with the model and logged, so a run always says what it really trained.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from training.errors import ConfigError, shown
from training.nn.names import ACTIVATION_NAMES

KINDS = ("ae", "vae")
# How a sequence model treats channels slower than its window (training.preprocessing.sequences),
# and how a window's channel errors make its recon score (training.detector.sequence).
SLOW_RULES = ("centre", "keep")
CHANNEL_NORMS = ("std", "mean")
SCORE_KINDS = {"ae": ("recon",), "vae": ("agg_elbo", "elbo", "recon")}
# The VAE's primary score is the plain ELBO: ``agg_elbo`` led only on the tables it was chosen
# on and trailed ``elbo`` on the data it was not (docs/benchmarks/quality.md).
DEFAULT_PRIMARY = {"ae": "recon", "vae": "elbo"}
# With ``neighbours`` = k > 0: ``knn``, the mean distance to the k nearest training records in
# the preprocessed space, and ``combined``, the mean of the network's primary score and ``knn``,
# each standardised (median, interquartile range) on the training normals' out-of-fold scores
# (the validation normals' without cross-fitting); ``combined`` is then the primary score.
# The table VAE's default: its ``elbo`` alone trailed a plain kNN on the tables the rule was
# chosen on; the mean of the two is above every baseline there, and it was confirmed on the
# embedding sets and MNIST as a table (docs/benchmarks/quality.md).
NEIGHBOUR_SCORES = ("knn", "combined")
# How a table's rows are compared: see training.preprocessing.tabular (``auto``: a row of
# hundreds of numeric columns is one vector, compared by direction).
GEOMETRIES = ("auto", "columns", "direction")
DEFAULT_NEIGHBOURS = {"ae": 0, "vae": 3}
# Ensemble size by kind: three table VAEs trained side by side detect more and vary less across
# seeds, for more fit and bulk scoring time; the AE stays at 1 (docs/benchmarks/experiments.md).
DEFAULT_MODELS = {"ae": 1, "vae": 3}
# An ensemble (n_models >= 2) calibrates on every training normal by cross-fitting: member m
# trains on all but the m-th fold of the training records and scores that fold, so every
# training normal gets scores from a network that never saw it (``cross_fit``).
# Gradient steps the epoch cap allows for; early stopping on the validation rows decides when
# to stop before that.
TARGET_STEPS = 10_000
MAX_SEED = 2**63 - 1  # what torch's and numpy's generators take
MAX_EPOCHS = 1000


@dataclass
class DetectorParams:
    """Everything that shapes training and scoring. Unknown keys are errors."""

    kind: str = "vae"
    hidden_sizes: list[int] | None = None
    latent_dim: int | None = None
    activation: str = "relu"
    dropout: float = 0.0
    batch_size: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int | None = None
    patience: int = 20
    noise_std: float = 0.0
    beta: float = 1.0
    validation_fraction: float = 0.15
    primary_score: str | None = None
    target_fpr: float = 0.01
    mc_samples: int = 8
    n_models: int | None = None
    neighbours: int | None = None
    cross_fit: bool | None = None
    geometry: str = "auto"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    # Defaults that depend on the (dense) kind; subclasses for other data override them.
    default_primary: ClassVar[dict[str, str]] = DEFAULT_PRIMARY
    default_models: ClassVar[dict[str, int]] = DEFAULT_MODELS
    default_neighbours: ClassVar[dict[str, int]] = DEFAULT_NEIGHBOURS
    # Whether ``neighbours`` > 0 makes ``combined`` the default primary score.
    combined_primary: ClassVar[bool] = True
    # A field added after models were saved: the value those models had (their saved params
    # lack it, and a new default must not change what they do once loaded). Table VAEs saved
    # before ``neighbours`` existed had none.
    saved_defaults: ClassVar[dict[str, Any]] = {"neighbours": 0}

    def __post_init__(self) -> None:
        if self.extra:
            raise ConfigError(f"unknown detector parameter(s): {sorted(self.extra)}")
        if self.kind not in KINDS:
            raise ConfigError(f"kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if self.activation not in ACTIVATION_NAMES:
            raise ConfigError(
                f"activation: expected one of {list(ACTIVATION_NAMES)}, got {self.activation!r}"
            )
        if self.hidden_sizes is not None:
            if isinstance(self.hidden_sizes, int):
                self.hidden_sizes = [self.hidden_sizes]
            if not all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= MAX_WIDTH
                       for h in self.hidden_sizes):
                raise ConfigError(f"hidden_sizes: expected positive integers up to {MAX_WIDTH}, "
                                  f"got {shown(self.hidden_sizes)}")
            self.hidden_sizes = list(self.hidden_sizes)
        _check_positive_int("latent_dim", self.latent_dim, allow_none=True)
        if self.latent_dim is not None and self.latent_dim > MAX_WIDTH:
            raise ConfigError(f"latent_dim: at most {MAX_WIDTH}, got {shown(self.latent_dim)}")
        _check_positive_int("batch_size", self.batch_size, allow_none=True)
        _check_positive_int("max_epochs", self.max_epochs, allow_none=True)
        _check_positive_int("patience", self.patience)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed: expected a whole number from 0 to {MAX_SEED}, got "
                              f"{shown(self.seed)}")
        self.seed = int(self.seed)
        _check_positive_int("mc_samples", self.mc_samples)
        if self.neighbours is None:
            self.neighbours = self.default_neighbours[self.kind]
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int) or \
                self.neighbours < 0:
            raise ConfigError(f"neighbours: expected an integer >= 0, got {shown(self.neighbours)}")
        if self.n_models is None:
            self.n_models = self.default_models[self.kind]
        _check_positive_int("n_models", self.n_models)
        if self.cross_fit is None:
            self.cross_fit = self.n_models >= 2
        if not isinstance(self.cross_fit, bool):
            raise ConfigError(f"cross_fit: expected true or false, got {shown(self.cross_fit)}")
        if self.cross_fit and self.n_models < 2:
            raise ConfigError("cross_fit: needs an ensemble (n_models >= 2): each member is "
                              "one fold's model")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry: expected one of {list(GEOMETRIES)}, got "
                              f"{shown(self.geometry)}")
        _check_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _check_range("noise_std", self.noise_std, 0.0, math.inf)
        _check_range("beta", self.beta, 0.0, math.inf)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_range("validation_fraction", self.validation_fraction, 0.0, 1.0, lo_open=True,
                     hi_open=True)
        _check_range("target_fpr", self.target_fpr, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_range("learning_rate", self.learning_rate, 0.0, math.inf, lo_open=True)
        if self.primary_score is None:
            self.primary_score = "combined" if self.neighbours and self.combined_primary \
                else self.default_primary[self.kind]
        if self.primary_score not in self.score_kinds:
            raise ConfigError(
                f"primary_score: a {self.kind} model has scores {list(self.score_kinds)}, "
                f"got {self.primary_score!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorParams:
        """Build from a mapping; keys that are not parameters raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: _plain(v) for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping of every parameter."""
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """Scores this kind of model produces: its network's, then ``knn`` and ``combined``
        when ``neighbours`` > 0."""
        return SCORE_KINDS[self.kind] + (NEIGHBOUR_SCORES if self.neighbours else ())

    @property
    def network_primary(self) -> str:
        """The network's own primary score: the first part of ``combined``."""
        return self.default_primary[self.kind]


def _plain(value: Any) -> Any:
    """numpy values (``np.int64(2)``, ``np.array([64, 32])``) as the Python values they hold,
    so they are checked, shown and saved as such."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.tolist() if hasattr(value, "tolist") and hasattr(value, "ndim") else value


# Widest layer or code a configuration may ask for: far above any width the defaults choose
# (at most 256), and small enough that one layer's weights cannot exhaust a machine's memory
# before training starts (a 16,384-wide square layer is 1 GiB of float32).
MAX_WIDTH = 16_384


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: expected a positive integer, got {shown(value)}")


def _check_range(name: str, value: Any, lo: float, hi: float, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {shown(value)}")
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        raise ConfigError(f"{name}: {shown(value)} is out of range")


def resolve(params: DetectorParams, n_rows: int, n_features: int) -> dict[str, Any]:
    """Fill the ``None`` parameters from the training data's shape.

    Heuristics (no dataset-specific tuning): the code is about a quarter of the input width
    (2 to 32); two hidden layers, the first about twice the input width (32 to 256), the second
    half of it; batches of roughly n/32 rows (16 to 256); an epoch cap that allows ~10,000
    gradient steps (20 to 1,000 epochs), early stopping on the validation rows deciding the
    rest. (A lower cap stopped VAEs before they converged: see docs/benchmarks/experiments.md.)
    """
    latent = params.latent_dim or int(min(32, max(2, math.ceil(n_features / 4))))
    if params.hidden_sizes is not None:
        hidden = list(params.hidden_sizes)
    else:
        h1 = int(min(256, max(32, 2 ** math.ceil(math.log2(max(2 * n_features, 2))))))
        hidden = [h1, max(h1 // 2, 2 * latent)]
    if params.batch_size is not None:
        batch = params.batch_size
    else:
        batch = int(min(256, max(16, 2 ** round(math.log2(max(n_rows / 32, 1))))))
    steps_per_epoch = max(1, math.ceil(n_rows / batch))
    epochs = params.max_epochs or int(
        min(MAX_EPOCHS, max(20, math.ceil(TARGET_STEPS / steps_per_epoch))))
    return {"hidden_sizes": hidden, "latent_dim": latent, "batch_size": batch,
            "max_epochs": epochs}
