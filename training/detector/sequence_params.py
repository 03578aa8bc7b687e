"""Hyperparameters of a SequenceDetector: the tabular ones plus the series' layout and window.

``seq_ae`` and ``seq_vae`` share every option of ``ae`` and ``vae`` where it applies;
``hidden_sizes`` are the channel widths of the convolutional stages (``conv``) or the hidden
size (``gru``, the last width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from training.errors import ConfigError, shown
from training.nn.names import ARCHITECTURES
from training.params import CHANNEL_NORMS, SCORE_KINDS, SLOW_RULES, DetectorParams

SEQUENCE_KINDS = ("seq_ae", "seq_vae")
DENSE_TWIN = {"seq_ae": "ae", "seq_vae": "vae"}
MAX_SEQUENCE_EPOCHS = 200


@dataclass
class SequenceDetectorParams(DetectorParams):
    """:class:`DetectorParams` for multivariate series.

    Extra fields:
        time_column: column of timestamps, checked strictly increasing per series; None: the
            rows are in time order.
        series_column: column naming the series (one model for many series); None: one.
        window: steps per window; None: from the training series' autocorrelation
            (:func:`training.preprocessing.sequences.choose_window`), recorded with the model.
        architecture: ``conv`` (1-D convolutions, the default) or ``gru``.
        slow_channels: ``centre`` (default): a channel that does not decorrelate within a
            window on the training rows is centred in every window, so its shape counts and
            its level does not (:func:`training.preprocessing.sequences.slow_channels`);
            ``keep``: every channel's level counts.
        channel_norm: how a window's per-channel errors make its ``recon`` score; each
            channel's squared error is first divided by its mean on the validation windows.
            ``std`` (default): per channel, the window's error above its mean on the
            validation windows in units of its standard deviation there, squared and averaged
            over the channels, so that a channel whose error varies a lot on normal windows
            anyway (a noisy sensor) counts less than one the model reconstructs steadily;
            ``mean``: the mean of the scaled errors (every channel's excess counts alike).
    """

    kind: str = "seq_ae"
    patience: int = 10
    mc_samples: int = 4
    time_column: str | None = None
    series_column: str | None = None
    window: int | None = None
    architecture: str = "conv"
    slow_channels: str = "centre"
    channel_norm: str = "std"
    default_primary: ClassVar[dict[str, str]] = {"ae": "recon", "vae": "recon"}
    default_models: ClassVar[dict[str, int]] = {"ae": 1, "vae": 1}
    default_neighbours: ClassVar[dict[str, int]] = {"ae": 0, "vae": 0}
    # models saved before these rules
    saved_defaults: ClassVar[dict[str, Any]] = {"slow_channels": "keep", "channel_norm": "mean"}

    def __post_init__(self) -> None:
        if self.kind not in SEQUENCE_KINDS:
            raise ConfigError(f"kind: expected one of {list(SEQUENCE_KINDS)} for sequences, got "
                              f"{self.kind!r}")
        if self.cross_fit:
            raise ConfigError("cross_fit: not available for sequences (overlapping windows: a "
                              "member would score windows that share rows with its own "
                              "training windows)")
        self.cross_fit = False
        kind, self.kind = self.kind, DENSE_TWIN[self.kind]
        try:
            super().__post_init__()
        finally:
            self.kind = kind
        if self.neighbours:
            raise ConfigError("neighbours: not available for sequences (windows of one series "
                              "overlap, so a near training window is no evidence of normality)")
        if self.geometry != "auto":
            raise ConfigError("geometry: for tables only")
        if self.window is not None and (isinstance(self.window, bool)
                                        or not isinstance(self.window, int) or self.window < 2):
            raise ConfigError(f"window: expected an integer >= 2, got {shown(self.window)}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture: expected one of {list(ARCHITECTURES)}, got "
                              f"{self.architecture!r}")
        if self.slow_channels not in SLOW_RULES:
            raise ConfigError(f"slow_channels: expected one of {list(SLOW_RULES)}, got "
                              f"{shown(self.slow_channels)}")
        if self.channel_norm not in CHANNEL_NORMS:
            raise ConfigError(f"channel_norm: expected one of {list(CHANNEL_NORMS)}, got "
                              f"{shown(self.channel_norm)}")
        for name in ("time_column", "series_column"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name}: expected a column name, got {shown(value)}")
        if self.series_column is not None and self.series_column == self.time_column:
            raise ConfigError(f"series_column: {self.series_column!r} is the time column too; "
                              "a column is the time or the series key, not both")

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """Scores this kind of model produces (those of its dense twin)."""
        return SCORE_KINDS[DENSE_TWIN.get(self.kind, self.kind)]

    @property
    def network_primary(self) -> str:
        return self.default_primary[DENSE_TWIN.get(self.kind, self.kind)]


def resolve_sequence(params: SequenceDetectorParams, n_windows: int, window: int,
                     channels: int) -> dict[str, Any]:
    """Fill the ``None`` parameters from the windows' shape (W, C) and count.

    Heuristics (no dataset-specific tuning): ``conv``: two stride-2 stages of 32 and 16
    channels (one stage for windows under 16 steps); ``gru``: 64 hidden units; a code of about
    a quarter of a window's values (W*C/4, 4 to 32); batches of about n/16
    windows (16 to 64); an epoch cap of ~3,000 gradient steps (20 to 200 epochs), early
    stopping deciding the rest.
    """
    if params.hidden_sizes is not None:
        widths = list(params.hidden_sizes)
    elif params.architecture == "gru":
        widths = [64]
    else:
        widths = [32, 16] if window >= 16 else [32]
    latent = params.latent_dim or int(min(32, max(4, round(window * channels / 4))))
    batch = params.batch_size or int(min(64, max(16, 2 ** round(math.log2(max(n_windows / 16,
                                                                                  1))))))
    epochs = params.max_epochs or int(min(MAX_SEQUENCE_EPOCHS, max(
        20, math.ceil(3000 / math.ceil(n_windows / batch)))))
    return {"hidden_sizes": widths, "latent_dim": latent, "batch_size": batch,
            "max_epochs": epochs, "window": window}
