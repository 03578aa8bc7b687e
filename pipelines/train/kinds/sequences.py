"""Multivariate series in the training pipeline: ``seq_ae`` and ``seq_vae``.

The series are cut in time, never shuffled (a shuffled window is no window): per series, the
first rows fit the detector, the next ``calibration_fraction`` of them calibrate the thresholds
(on windows lying wholly inside that part), and with labels and no ``eval_data`` the last
``eval_fraction`` are the evaluation part. Fit and calibration rows must be normal: a labelled
anomaly there is an error naming it. The window is chosen here, from the fitting rows, by the
detector's own rule, so the evaluation labels can be aligned with the windows' last rows
before the run starts; it is recorded with the model.

Pictures: the held-out series (the evaluation part, or the calibration part without labels)
with its score and threshold over time, the true anomalies shaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from pipelines.registry.pyfunc import log_pyfunc, table_signature
from pipelines.train.config import TrainConfig
from pipelines.train.kinds import DataKind, Prepared
from pipelines.train.plots import close, plt
from pipelines.train.splits import MIN_NORMAL_ROWS, Splits, fingerprint
from training.data.sequences import read_series
from training.data.tables import labels_of
from training.detector.sequence import SequenceDetector
from training.detector.sequence_params import SEQUENCE_KINDS, SequenceDetectorParams
from training.errors import DataError
from training.preprocessing.sequences import SequencePreprocessor

log = logging.getLogger(__name__)


def _time_cut(pre: SequencePreprocessor, df: pd.DataFrame, fractions: list[float]
              ) -> list[np.ndarray]:
    """Row positions of consecutive parts of every series, sized by ``fractions`` (the first
    part takes the rest)."""
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for _, pos in pre.groups(df):
        sizes = [int(round(f * len(pos))) for f in fractions]
        bounds = np.cumsum([len(pos) - sum(sizes), *sizes])
        for i, piece in enumerate(np.split(pos, bounds[:-1])):
            parts[i].append(piece)
    return [np.sort(np.concatenate(p)) for p in parts]


class Sequences(DataKind):
    """Sliding-window AE / VAE on a table (or folder) of normal multivariate series."""

    model_kinds = SEQUENCE_KINDS

    def prepare(self, cfg: TrainConfig, params: SequenceDetectorParams) -> Prepared:
        df, series_column = read_series(cfg.data, params.series_column)
        # The one check of the whole input in file order: time order, channels, values.
        check = SequencePreprocessor(params.time_column, series_column, 2, cfg.label_column,
                                     cfg.id_column, slow="keep").fit(df, cfg.data)
        check.transform(df, cfg.data)
        labels = None
        if cfg.label_column and cfg.label_column in df.columns:
            labels = labels_of(df, cfg.label_column, cfg.data).to_numpy().astype(int)
        holdout = labels is not None and labels.any() and not cfg.eval_data
        fractions = [cfg.calibration_fraction] + ([cfg.eval_fraction] if holdout else [])
        fit, calibration, *evaluation = _time_cut(check, df, fractions)
        if labels is not None:
            bad = np.concatenate([fit, calibration])[labels[np.concatenate([fit,
                                                                            calibration])] == 1]
            if bad.size:
                raise DataError("a labelled anomaly before the evaluation part (the last "
                                f"{cfg.eval_fraction:.0%} of each series): fitting and "
                                "calibration need normal rows; move it later, drop it, or give "
                                "--eval-data", source=cfg.data, record=int(bad.min()),
                                column=cfg.label_column)
        if len(fit) < MIN_NORMAL_ROWS:
            raise DataError(f"{len(fit)} rows to fit on; at least {MIN_NORMAL_ROWS} are needed",
                            source=cfg.data)
        pre = SequencePreprocessor(params.time_column, series_column, params.window,
                                   cfg.label_column, cfg.id_column,
                                   params.slow_channels).fit(df.iloc[fit], cfg.data)
        window = pre.window_
        cal = df.iloc[calibration]
        if len(pre.index(cal).ends) < 10:
            raise DataError(f"the calibration part ({len(cal)} rows) holds fewer than 10 "
                            f"windows of {window} steps: give more rows or a larger "
                            "calibration_fraction", source=cfg.data)
        splits = Splits(fit=df.iloc[fit], calibration=cal)
        eval_frame, eval_labels, source = None, None, cfg.data
        if evaluation:
            eval_frame, eval_labels = df.iloc[evaluation[0]], labels[evaluation[0]]
        if cfg.eval_data:
            eval_frame, _ = read_series(cfg.eval_data, series_column)
            eval_labels = labels_of(eval_frame, cfg.label_column, cfg.eval_data).to_numpy()
            source = cfg.eval_data
        if eval_frame is not None:
            eval_frame = eval_frame.reset_index(drop=True)
            pre.transform(eval_frame, source)  # checked now, before the run
            ends = pre.index(eval_frame).ends
            splits.eval_X, splits.eval_y = eval_frame, np.asarray(eval_labels)[ends].astype(int)
            splits.extras = {"eval_labels": np.asarray(eval_labels).astype(int)}
        detector = SequenceDetector(id_column=cfg.id_column, label_column=cfg.label_column,
                                    **{**params.to_dict(), "window": window,
                                       "series_column": series_column})
        return Prepared(splits, detector, {
            "data_sha256": fingerprint(cfg.data), "n_channels": pre.n_channels_,
            "n_gaps": check.gaps_["n_gaps"], "n_series": len(pre.groups(df)),
            "centred_channels": (", ".join(pre.channels_[j] for j in pre.centred_)
                                 or "none")[:500]})

    def dataset(self, prepared: Prepared, cfg: TrainConfig):
        return mlflow.data.from_pandas(prepared.splits.fit, source=str(Path(cfg.data).resolve()),
                                       name=Path(cfg.data).name)

    def log_pictures(self, detector: SequenceDetector, splits: Splits, cfg: TrainConfig) -> None:
        if splits.eval_X is not None:
            frame, labels = splits.eval_X, splits.extras["eval_labels"]
        else:
            frame, labels = splits.calibration.reset_index(drop=True), None
        fig = series_plot(detector, frame, labels, f"{cfg.name} ({cfg.kind})")
        mlflow.log_figure(fig, "series_scores.png")
        close(fig)

    def log_model(self, detector: SequenceDetector, splits: Splits):
        """The pyfunc, whose example is one window and a row of the training series."""
        columns = detector.preprocessor_.input_columns_
        example = splits.fit[columns].head(detector.window_ + 1).reset_index(drop=True)
        signature = table_signature(example, detector.score_series(example))
        return log_pyfunc(detector, example, signature)


def series_plot(detector: SequenceDetector, frame: pd.DataFrame, labels: np.ndarray | None,
                title: str):
    """Score and threshold over time of the first series of ``frame``, true anomalies
    shaded; the per-timestamp rule of :class:`SequenceDetector`."""
    pre = detector.preprocessor_
    _, pos = pre.groups(frame)[0]
    part = frame.iloc[pos]
    scores = detector.score_series(part)
    x = part[pre.time_column].to_numpy() if pre.time_column else np.arange(len(part))
    if pre.time_column and not pd.api.types.is_numeric_dtype(part[pre.time_column]):
        x = pd.to_datetime(part[pre.time_column]).to_numpy()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(x, scores["score"].to_numpy(), lw=0.8, label=f"score ({detector.primary_score})")
    ax.axhline(detector.thresholds_[detector.primary_score], color="C3", ls="--",
               label="threshold")
    if labels is not None:
        y = np.asarray(labels)[pos] == 1
        edges = np.flatnonzero(np.diff(np.r_[0, y.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            ax.axvspan(x[a], x[b - 1], color="C1", alpha=0.25, lw=0,
                       label="true anomaly" if a == edges[0] else None)
    ax.set_yscale("log")
    ax.set_xlabel(pre.time_column or "row")
    ax.set_title(f"{title}: held-out series, window {detector.window_}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


KIND = Sequences()

__all__ = ["KIND", "Sequences", "series_plot"]
