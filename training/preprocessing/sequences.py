"""Multivariate time series as sliding windows, fitted on normal series only, saved as JSON.

A series is a table with one row per timestamp: an optional time column, an optional series key
(one model for many series of the same machine type) and numeric channels (every other column
but the label and id columns). Per series, the time column must increase strictly: a duplicate
or an earlier timestamp is a :class:`~training.errors.DataError` naming the record and the
column, since a window over shuffled rows is no window of the process. Gaps (a step longer
than :data:`GAP_FACTOR` times the median step) are counted and reported, not refused: windows
span them, as the sensors' own pauses do.

Channels are standardised with the mean and standard deviation of the training rows. A window
of ``window`` consecutive rows of one series is one flat float32 row, time-major: the value of
channel ``c`` at step ``t`` of the window is column ``t * C + c``. A *slow* channel, one that
does not decorrelate within a window on the training rows (:func:`slow_channels`), is centred
in every window (its mean over the window's steps subtracted): the model sees its shape, not
its level, since a level that wanders on a longer time scale than the training rows can show
is no evidence of an anomaly (``slow="keep"`` keeps the levels). The window ending at row i is
that row's window; the first ``window - 1`` rows of a series have none (warm-up).

Default window (``window=None``): from the training series' autocorrelation, see
:func:`choose_window`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.errors import DataError, shown
from training.params import SLOW_RULES
from training.preprocessing.tabular import CATEGORICAL, NUMERIC, ColumnSpec, Records

log = logging.getLogger(__name__)

GAP_FACTOR = 1.5  # a step longer than this times the median step is a gap
MIN_WINDOW = 8
MAX_WINDOW = 128
_STD_FLOOR = 1e-6


def decorrelation_lags(values: np.ndarray, n_rows: int,
                       series: list[np.ndarray] | None = None) -> list[int]:
    """Per channel of standardised values (n, C), its decorrelation lag: the first lag whose
    autocorrelation falls below 1/e, searched up to ``n_rows / 4``. With several ``series``
    (the row positions of each, in time order) the autocorrelation is pooled over them, each
    about its own mean: lagged products never pair rows of two series, and a level that
    differs between series is no slowness. A channel that never decorrelates within the
    search gets ``n_rows``; a constant one, 0."""
    max_lag = max(MIN_WINDOW, n_rows // 4)
    series = [np.arange(len(values))] if series is None else series
    cov = np.zeros((max_lag + 1, values.shape[1]))
    for pos in series:
        x = values[pos] - values[pos].mean(axis=0)
        spec = np.fft.rfft(x, 2 * len(x), axis=0)
        part = np.fft.irfft(spec * np.conj(spec), axis=0)[: min(max_lag + 1, len(x))]
        cov[: len(part)] += part
    lags = []
    for acov in cov.T:
        if acov[0] <= 1e-12 * len(values):
            lags.append(0)
            continue
        below = np.flatnonzero(acov / acov[0] < 1 / math.e)
        lags.append(int(below[0]) if below.size else n_rows)
    return lags


def choose_window(values: np.ndarray, n_rows: int, series: list[np.ndarray] | None = None
                  ) -> int:
    """The default window from standardised training values (n, C): see
    :func:`window_from_lags`."""
    return window_from_lags(decorrelation_lags(values, n_rows, series), n_rows)


def window_from_lags(lags: list[int], n_rows: int) -> int:
    """The median over channels of each channel's decorrelation lag (constant channels left
    out), doubled so a window holds about two correlation lengths, and kept within
    ``[MIN_WINDOW, MAX_WINDOW]`` and at most ``n_rows / 4`` (enough windows to train on)."""
    lags = [lag for lag in lags if lag > 0]
    lag = float(np.median(lags)) if lags else MIN_WINDOW / 2
    return int(min(MAX_WINDOW, max(n_rows // 4, MIN_WINDOW), max(MIN_WINDOW, round(2 * lag))))


def slow_channels(lags: list[int], window: int) -> list[int]:
    """The channels, by their decorrelation lags (:func:`decorrelation_lags`), that do not
    decorrelate within one window: their lag exceeds ``window`` steps. Such a channel moves on
    a time scale the windows cannot see, so the training rows hold few independent samples of
    its level (about n / lag): its level later on is no evidence either way."""
    return [j for j, lag in enumerate(lags) if lag > window]


@dataclass
class SeriesIndex:
    """Where the windows of a table come from: each window's last row (a position in the
    input), and for every row its series' code and whether it is warm-up."""

    ends: np.ndarray  # (n_windows,) int64 positions of the windows' last rows
    warm_up: np.ndarray  # (n_rows,) bool: no full window ends at this row


class _Table:
    """A table of series as the checks and windows read it: a DataFrame, or validated request
    :class:`Records` read as they are (building a frame costs more than all the arithmetic on a
    request's few rows).

    Args:
        numeric: the columns the records' schema holds as numbers (ignored for a frame, whose
            dtypes say it).

    Attributes:
        n: rows.
    """

    def __init__(self, data: pd.DataFrame | Records, numeric: frozenset[str] = frozenset()):
        self.data = data
        self.numeric = numeric
        self.n = data.n if isinstance(data, Records) else len(data)

    def __contains__(self, name: str) -> bool:
        if isinstance(self.data, Records):
            return True  # validated against the model's schema: every input column is there
        return name in self.data.columns

    @property
    def names(self) -> list[str]:
        """The columns, for messages."""
        return [] if isinstance(self.data, Records) else list(self.data.columns)

    def column(self, name: str) -> pd.Series:
        """One column's values as a Series (the slower path: dates, text, conversions)."""
        if isinstance(self.data, Records):
            return pd.Series(self.data.values(name))
        return self.data[name]

    def item(self, name: str, row: int) -> Any:
        """One value as given, for messages."""
        if isinstance(self.data, Records):
            return self.data.values(name)[row]
        return self.data[name].iloc[row]

    def keys(self, name: str) -> np.ndarray:
        """(n,) one column's values as an array (series keys)."""
        if isinstance(self.data, Records):
            return np.asarray(self.data.values(name), dtype=object)
        return self.data[name].to_numpy()

    def numbers(self, names: list[str]) -> np.ndarray | None:
        """(n, len(names)) float64 (missing = NaN) when every column holds numbers, else None.
        Validated records hold numbers in the columns their schema says are numeric."""
        if isinstance(self.data, Records):
            return self.data.numeric(names) if self.numeric.issuperset(names) else None
        columns = [self.data[c] for c in names]
        if not all(map(_is_number, columns)):
            return None
        out = np.empty((self.n, len(names)), dtype=np.float64)
        for j, c in enumerate(columns):
            out[:, j] = c.to_numpy(dtype=np.float64, na_value=np.nan)
        return out


class SequencePreprocessor:
    """Check, standardise and window multivariate series (see the module docstring).

    Args:
        time_column: column of timestamps (numbers or dates); None: the rows are in time order.
        series_column: column naming the series each row belongs to; None: one series.
        window: steps per window; None: :func:`choose_window` on the training rows.
        label_column, id_column: columns that are never channels.
        slow: ``centre`` (default): centre the slow channels in every window; ``keep``: keep
            every channel's level.
    """

    def __init__(self, time_column: str | None = None, series_column: str | None = None,
                 window: int | None = None, label_column: str | None = None,
                 id_column: str | None = None, slow: str = "centre"):
        if slow not in SLOW_RULES:
            raise ValueError(f"slow: expected one of {list(SLOW_RULES)}, got {slow!r}")
        self.slow = slow
        self.time_column = time_column
        self.series_column = series_column
        self.window = window
        self.label_column = label_column
        self.id_column = id_column

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, df: pd.DataFrame, source: str = "data") -> SequencePreprocessor:
        """Learn the channels, their mean and scale, and the window from normal series."""
        df = _frame(df, source)
        for role, c in (("time", self.time_column), ("series", self.series_column)):
            if c is not None and c not in df.columns:
                raise DataError(f"{role} column '{c}' not found; columns are "
                                f"{[str(n) for n in df.columns]}", source=source)
        skip = {self.time_column, self.series_column, self.label_column, self.id_column}
        channels = [c for c in df.columns if c not in skip]
        if not channels:
            raise DataError("no channel columns: every column is the time, series, label or "
                            "id column", source=source)
        for c in channels:
            if not _is_number(df[c]):
                raise DataError(f"a sequence channel must be numeric, found {df[c].dtype}: drop "
                                "the column or set it as the id, label or series column",
                                source=source, column=c)
        self.channels_ = channels
        self.key_kinds_ = {c: NUMERIC if _is_number(df[c]) else CATEGORICAL
                           for c in (self.time_column, self.series_column) if c}
        table = _Table(df)
        self.gaps_ = self.check_order(table, source, gaps=True)
        values = self._values(table, source, standardise=False)
        with np.errstate(over="ignore", invalid="ignore"):
            self.mean_ = values.mean(axis=0)
            std = values.std(axis=0)
        for j in np.flatnonzero(~(np.isfinite(self.mean_) & np.isfinite(std))):
            row = int(np.argmax(np.abs(values[:, j])))  # squares past 1.8e308
            raise DataError(f"{shown(values[row, j])} is too large to standardise (the "
                            "channel's spread overflows); rescale the channel",
                            source=source, record=row, column=self.channels_[j])
        self.std_ = np.where(std > _STD_FLOOR, std, 1.0)
        z = (values - self.mean_) / self.std_
        series = [pos for _, pos in self.groups(table, source)] if self.series_column else None
        # One autocorrelation pass for the window and the slowness, and none if neither is asked.
        lags = (decorrelation_lags(z, len(z), series)
                if self.window is None or self.slow == "centre" else [])
        self.window_ = int(self.window) if self.window is not None else window_from_lags(
            lags, len(z))
        self.centred_ = slow_channels(lags, self.window_) if self.slow == "centre" else []
        if self.centred_:
            log.info("%s: slow channel(s) %s do not decorrelate within a window of %d steps: "
                     "centred in every window", source,
                     [self.channels_[j] for j in self.centred_], self.window_)
        if self.gaps_["n_gaps"]:
            log.warning("%s: %d gap(s) in the time column (longest %s steps of the median); "
                        "windows span them", source, self.gaps_["n_gaps"],
                        shown(self.gaps_["longest"]))
        return self

    @property
    def n_channels_(self) -> int:
        return len(self.channels_)

    @property
    def n_features_(self) -> int:
        """Width of one window row: ``window * n_channels``."""
        return self.window_ * self.n_channels_

    @property
    def feature_names_(self) -> list[str]:
        """``channel@-k``: the channel k steps before the window's last row."""
        w = self.window_
        return [f"{c}@-{w - 1 - t}" for t in range(w) for c in self.channels_]

    @property
    def feature_columns_(self) -> list[str]:
        """The channel of each matrix column (of :attr:`feature_names_`)."""
        return list(self.channels_) * self.window_

    @property
    def input_columns_(self) -> list[str]:
        """The columns a scored table must have: time and series columns, then the channels."""
        return [c for c in (self.time_column, self.series_column) if c] + list(self.channels_)

    @property
    def columns_(self) -> list[ColumnSpec]:
        """The input schema as the tables' column specs: time and series columns (numbers or
        text, as in training), then the numeric channels."""
        keys = [ColumnSpec(c, k, "float64" if k == NUMERIC else "object")
                for c, k in self.key_kinds_.items()]
        return keys + [ColumnSpec(c, NUMERIC, "float64", mean=float(m), std=float(sd))
                       for c, m, sd in zip(self.channels_, self.mean_, self.std_)]

    # -- checks ------------------------------------------------------------------------------
    def check_order(self, df: Any, source: str = "data",
                    after: dict[Any, Any] | None = None, gaps: bool = False
                    ) -> dict[str, Any]:
        """Check that time increases strictly within every series.

        Args:
            after: per series key, the last timestamp already seen (a stream's or a previous
                chunk's): the first new row of that series must come later.
            gaps: also count the gaps (training reports them; scoring only checks the order).

        Returns:
            ``{"n_gaps": int, "longest": float}``: steps longer than ``GAP_FACTOR`` times the
            median step, and the longest step in units of the median (0 and 1 unless
            ``gaps``).

        Raises:
            DataError: naming the first record whose timestamp is a duplicate or earlier than
            its predecessor in the same series.
        """
        if self.time_column is None:
            return {"n_gaps": 0, "longest": 1.0}
        table = self.table(df)
        times = self.times(table, source)
        n_gaps, longest = 0, 1.0
        for key, pos in self.groups(table, source):
            t = times[pos]
            prev = (after or {}).get(key)
            if prev is not None and len(t):
                t = np.concatenate([[prev], t])
                offset = -1
            else:
                offset = 0
            step = np.diff(t)
            bad = np.flatnonzero(step <= 0)
            if bad.size:
                i = bad[0]
                row = int(pos[i + 1 + offset])
                before = _shown_time(t[i]) if i + offset < 0 else \
                    table.item(self.time_column, int(pos[i + offset]))
                what = "duplicates" if step[i] == 0 else "is earlier than"
                raise DataError(f"timestamp {shown(table.item(self.time_column, row))} {what} "
                                f"the previous one {shown(before)}"
                                + (f" of series {shown(key)}" if self.series_column else "")
                                + ": sort the rows by time and drop repeated timestamps",
                                source=source, record=row, column=self.time_column)
            if gaps and step.size:
                median = float(np.median(step))
                if median > 0:
                    ratio = step / median
                    n_gaps += int(np.sum(ratio > GAP_FACTOR))
                    longest = max(longest, float(ratio.max()))
        return {"n_gaps": n_gaps, "longest": longest}

    def table(self, data: Any, source: str = "data") -> _Table:
        """``data`` (a DataFrame, validated :class:`Records`, a 2-D array of channels or a
        table already) as the checks and windows read it."""
        if isinstance(data, _Table):
            return data
        if isinstance(data, Records):
            keys = {c for c, k in self.key_kinds_.items() if k == NUMERIC}
            return _Table(data, frozenset([*self.channels_, *keys]))
        return _Table(_frame(data, source, self.channels_))

    def times(self, df: Any, source: str = "data") -> np.ndarray:
        """(n,) the time column as float64 (numbers as they are, dates in seconds)."""
        table = self.table(df, source)
        col = self.time_column
        if col not in table:
            raise DataError(f"time column '{col}' not found; columns are {table.names}",
                            source=source)
        numbers = table.numbers([col])
        if numbers is not None:
            t = numbers[:, 0]
        else:
            parsed = pd.to_datetime(table.column(col), errors="coerce", utc=True)
            if parsed.dt.tz is not None:
                parsed = parsed.dt.tz_convert(None)
            t = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64) / 1e9
            t[parsed.isna().to_numpy()] = np.nan
        bad = np.flatnonzero(~np.isfinite(t))
        if bad.size:
            raise DataError(f"not a timestamp: {shown(table.item(col, int(bad[0])))}; use "
                            "numbers or ISO 8601 dates", source=source, record=int(bad[0]),
                            column=col)
        return t

    def groups(self, df: Any, source: str = "data") -> list[tuple[Any, np.ndarray]]:
        """``(series key, row positions in input order)`` per series; one group without a
        series column (key None).

        Raises:
            DataError: naming the first record whose series key is missing.
        """
        table = self.table(df, source)
        if self.series_column is None:
            return [(None, np.arange(table.n))]
        self._require_series_column(table, source)
        codes, uniques = pd.factorize(table.keys(self.series_column), sort=False)
        missing = np.flatnonzero(codes < 0)
        if missing.size:
            raise DataError("missing series key: every record names its series",
                            source=source, record=int(missing[0]), column=self.series_column)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        return [(_plain_key(uniques[codes[p[0]]]), p) for p in np.split(order, bounds) if p.size]

    def _require_series_column(self, table: _Table, source: str) -> None:
        if self.series_column and self.series_column not in table:
            raise DataError(f"series column '{self.series_column}' not found; columns are "
                            f"{table.names}", source=source)

    def _values(self, table: _Table, source: str, standardise: bool = True) -> np.ndarray:
        """(n, C) channel values, float64; missing columns and non-finite values are errors."""
        missing = [c for c in self.channels_ if c not in table]
        if missing:
            raise DataError(f"missing channel column(s) {missing}; the model reads "
                            f"{self.input_columns_}", source=source)
        self._require_series_column(table, source)
        out = table.numbers(self.channels_)
        if out is None:  # a frame with text in a channel: convert, naming what does not
            out = np.empty((table.n, len(self.channels_)), dtype=np.float64)
            for j, c in enumerate(self.channels_):
                column = table.column(c)
                try:
                    out[:, j] = pd.to_numeric(column, errors="raise").to_numpy(
                        dtype=np.float64, na_value=np.nan)
                except (ValueError, TypeError):
                    v = pd.to_numeric(column, errors="coerce")
                    row = int(np.flatnonzero(v.isna() & column.notna())[0])
                    raise DataError(f"not a number: {shown(column.iloc[row])}", source=source,
                                    record=row, column=c) from None
        bad = np.argwhere(~np.isfinite(out))
        if bad.size:
            row, j = bad[0]
            raise DataError("missing or non-finite value; a window needs every channel at "
                            "every step: fill or drop the row", source=source, record=int(row),
                            column=self.channels_[j])
        return (out - self.mean_) / self.std_ if standardise else out

    # -- windows -----------------------------------------------------------------------------
    def index(self, df: Any, groups: list[tuple[Any, np.ndarray]] | None = None
              ) -> SeriesIndex:
        """Which rows end a window (in window order: series by series, in time) and which are
        warm-up (``groups``: :meth:`groups` of ``df``, when the caller has them)."""
        w = self.window_
        ends, warm = [], np.ones(self.table(df).n, dtype=bool)
        for _, pos in self.groups(df) if groups is None else groups:
            if len(pos) >= w:
                ends.append(pos[w - 1 :])
                warm[pos[w - 1 :]] = False
        return SeriesIndex(np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64), warm)

    def transform(self, df: Any, source: str = "data") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Windows of a table of series.

        Returns:
            ``(X, extras)``: X (n_windows, window * C) float32, one window per row that ends
            one (series by series, in time); extras ``row``, (n_windows,) the position in the
            input of each window's last row.
        """
        table = self.table(df, source)
        self.check_order(table, source)
        z = self._values(table, source).astype(np.float32)
        groups = self.groups(table, source)
        idx = self.index(table, groups)
        w, c = self.window_, self.n_channels_
        X = np.empty((len(idx.ends), w * c), dtype=np.float32)
        i = 0
        for _, pos in groups:
            if len(pos) < w:
                continue
            rows = z if len(groups) == 1 else z[pos]  # one series: every row, in order
            k = len(pos) - w + 1
            # window j is rows j..j+w-1, time-major: w * c consecutive values of the C-ordered
            # (n, C) rows, so the k windows are one strided view, copied once
            X[i : i + k] = np.ndarray((k, w * c), np.float32, rows, 0,
                                      (rows.strides[0], rows.strides[1]))
            if self.centred_:
                out = X[i : i + k].reshape(k, w, c)
                out[:, :, self.centred_] -= out[:, :, self.centred_].mean(axis=1, keepdims=True)
            i += k
        return X, {"row": idx.ends.astype(np.int64)}

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Window rows (n, window * C) back to (n, window, C) in the channels' units (a centred
        channel's values about its training mean: its level is not modelled)."""
        w = np.asarray(X, dtype=np.float64).reshape(-1, self.window_, self.n_channels_)
        return w * self.std_ + self.mean_

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"time_column": self.time_column, "series_column": self.series_column,
                "window": self.window_, "label_column": self.label_column,
                "id_column": self.id_column, "channels": self.channels_, "slow": self.slow,
                "centred": [self.channels_[j] for j in self.centred_],
                "mean": self.mean_.tolist(), "std": self.std_.tolist(), "gaps": self.gaps_,
                "key_kinds": self.key_kinds_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequencePreprocessor:
        # Models saved before slow channels were centred kept every level.
        pre = cls(data["time_column"], data["series_column"], data["window"],
                  data["label_column"], data["id_column"], data.get("slow", "keep"))
        pre.window_ = int(data["window"])
        pre.channels_ = list(data["channels"])
        pre.centred_ = [pre.channels_.index(c) for c in data.get("centred", [])]
        pre.mean_ = np.asarray(data["mean"], dtype=np.float64)
        pre.std_ = np.asarray(data["std"], dtype=np.float64)
        pre.gaps_ = dict(data["gaps"])
        pre.key_kinds_ = dict(data["key_kinds"])
        return pre


def _frame(data: Any, source: str, channels: list[str] | None = None) -> pd.DataFrame:
    """A DataFrame as given, a 2-D array as one with columns x0, x1, ... (or the channels')."""
    if isinstance(data, pd.DataFrame):
        return data
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise DataError(f"expected a table of rows (n, channels), got shape {arr.shape}",
                        source=source)
    names = channels if channels and len(channels) == arr.shape[1] else \
        [f"x{i}" for i in range(arr.shape[1])]
    return pd.DataFrame(arr, columns=names)


def _is_number(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _plain_key(key: Any) -> Any:
    return key.item() if hasattr(key, "item") else key


def _shown_time(t: float) -> Any:
    return int(t) if float(t).is_integer() else float(t)
