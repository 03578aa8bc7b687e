"""Per-timestamp scoring of a sequence model, torch-free: shared by the detector
(:class:`~training.detector.sequence.SequenceDetector`) and its ONNX graph
(:class:`~training.detector.graph.GraphScorer`).

A row's score is the score of the window that ends at it (see
:mod:`training.detector.sequence` for why); the first ``window - 1`` rows of a series are
``warm_up``. :class:`SeriesStream` scores a series as it arrives, with the same scores as one
pass over the whole series.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd

from training.errors import DataError


class SeriesScoring:
    """Scores per timestamp for a scorer of windows (``score_columns`` over a
    :class:`~training.preprocessing.sequences.SequencePreprocessor`'s windows, the calibration
    checked by ``_check_fitted`` and ``_check_calibrated``)."""

    @property
    def window_(self) -> int:
        """Steps per window."""
        self._check_fitted()
        return int(self.preprocessor_.window_)

    # -- per timestamp -----------------------------------------------------------------------
    def series_columns(self, data: Any, source: str = "data", explain: bool = False
                       ) -> dict[str, np.ndarray]:
        """Score every row of a table of series (the one per-timestamp path: the pyfunc, the
        service, batch and streams call it).

        Args:
            data: a DataFrame with the model's time, series and channel columns, validated
                request records, or a 2-D array of channels (rows in time order).
            explain: add ``explanation`` (n_rows, n_channels): each channel's error in the
                row's window.

        Returns:
            columns, each (n_rows,), in input order: ``warm_up`` (no full window ends at this
            row yet), then the :meth:`score_columns` columns; warm-up rows have NaN scores,
            p-values and explanations, and ``is_anomaly`` false.
        """
        self._check_calibrated()
        table = self.preprocessor_.table(data, source)
        cols = self.score_columns(table, source, explain=explain)
        n = table.n
        rows = cols.pop("row")
        out: dict[str, np.ndarray] = {"warm_up": np.ones(n, dtype=bool)}
        out["warm_up"][rows] = False
        for k, v in cols.items():
            if v.dtype == bool:
                full = np.zeros(n, dtype=bool)
            else:
                full = np.full((n, *v.shape[1:]), np.nan)
            full[rows] = v
            out[k] = full
        return out

    def score_series(self, data: Any, source: str = "data", explain: bool = False
                     ) -> pd.DataFrame:
        """:meth:`series_columns` as a DataFrame, one row per input row (the input's index);
        with ``explain``, one column ``explain_<channel>`` per channel."""
        cols = self.series_columns(data, source, explain)
        explanation = cols.pop("explanation", None)
        if explanation is not None:
            for j, c in enumerate(self.preprocessor_.channels_):
                cols[f"explain_{c}"] = explanation[:, j]
        frame = pd.DataFrame(cols)
        if isinstance(data, pd.DataFrame):
            frame.index = data.index
        return frame

    def score(self, data: Any, source: str = "data") -> pd.DataFrame:
        """Per timestamp: :meth:`score_series` (one row per input row, warm-up marked)."""
        return self.score_series(data, source)

    def predict(self, data: Any, source: str = "data") -> np.ndarray:
        """(n_rows,) booleans: is each row an anomaly (false during warm-up)."""
        return self.series_columns(data, source)["is_anomaly"]

    def stream(self, max_keys: int | None = None, idle_seconds: float | None = None,
               clock: Callable[[], float] = time.monotonic) -> SeriesStream:
        """A :class:`SeriesStream` scoring this detector's series point by point or chunk by
        chunk, with the same scores as one pass over the whole series."""
        self._check_calibrated()
        return SeriesStream(self, max_keys, idle_seconds, clock)

    def score_chunks(self, chunks: Iterable[pd.DataFrame], source: str = "data",
                     explain: bool = False) -> Iterator[pd.DataFrame]:
        """:meth:`score_series` over a long table read in chunks (in time order per series):
        each chunk's rows are scored with the last ``window - 1`` rows of their series from the
        chunks before, so the scores are those of one pass. Record numbers in errors count
        from the first chunk's first row."""
        stream = self.stream()
        offset = 0
        for chunk in chunks:
            try:
                yield stream.push(chunk, source, explain=explain)
            except DataError as e:
                raise e.located(offset=offset) from None
            offset += len(chunk)


# The longest text a stream keeps as a series key or a timestamp: what it holds per series is
# bounded in rows, and so, with this, in bytes.
MAX_KEY_CHARS = 1_000


def _check_key_lengths(df: pd.DataFrame, columns: list[str], source: str) -> None:
    """Refuse a text series key or timestamp longer than ``MAX_KEY_CHARS``, naming it."""
    for c in columns:
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_datetime64_any_dtype(col):
            continue
        try:
            lengths = col.str.len().fillna(0).to_numpy()  # not text: NaN
        except AttributeError:  # no text at all (booleans, times...)
            continue
        if lengths.size and lengths.max() > MAX_KEY_CHARS:
            i = int(lengths.argmax())
            raise DataError(f"a value of {lengths[i]} characters; series keys and timestamps "
                            f"are at most {MAX_KEY_CHARS}", source=source, record=i, column=c)


class SeriesStream:
    """Scores a series as it arrives: per series key, the last ``window - 1`` rows (input
    columns) and the last timestamp, so each new row's window spans what came before.

    The state is bounded: at most ``max_keys`` series (the least recently seen is dropped
    first) of ``window - 1`` rows each, and a series not seen for ``idle_seconds`` is dropped.
    A dropped series starts again with warm-up rows.

    Args:
        detector: a fitted, calibrated sequence scorer (:class:`SeriesScoring`).
        max_keys: most series kept; None: no bound (one batch job's series).
        idle_seconds: drop a series idle this long; None: never.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, detector: SeriesScoring, max_keys: int | None = None,
                 idle_seconds: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.detector = detector
        self.max_keys = max_keys
        self.idle_seconds = idle_seconds
        self.clock = clock
        # series key -> (tail rows, last timestamp or None, last seen), least recent first
        self._state: OrderedDict[Any, tuple[pd.DataFrame, float | None, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def keys(self) -> list[Any]:
        """The series keys held, least recently seen first."""
        return list(self._state)

    def buffered(self, key: Any = None) -> int:
        """Rows of context held for a series (at most ``window - 1``)."""
        entry = self._state.get(key)
        return 0 if entry is None else len(entry[0])

    def expire(self) -> int:
        """Drop the series idle longer than ``idle_seconds``; returns how many."""
        if self.idle_seconds is None:
            return 0
        now = self.clock()
        old = [k for k, (_, _, seen) in self._state.items() if now - seen > self.idle_seconds]
        for k in old:
            del self._state[k]
        return len(old)

    def push(self, data: pd.DataFrame, source: str = "data", explain: bool = False
             ) -> pd.DataFrame:
        """Append rows (in time order per series, after the rows pushed before) and score them.

        Returns:
            :meth:`SeriesScoring.score_series` of the new rows only, in their order.

        Raises:
            DataError: a row earlier than (or at) its series' last timestamp, naming it.
        """
        det = self.detector
        pre = det.preprocessor_
        if not isinstance(data, pd.DataFrame):
            raise DataError("expected a table of records", source=source)
        self.expire()
        columns = pre.input_columns_
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise DataError(f"missing column(s) {missing}; the model reads {columns}",
                            source=source)
        new = data[columns].reset_index(drop=True)
        _check_key_lengths(new, [c for c in (pre.time_column, pre.series_column) if c], source)
        groups = pre.groups(new, source)
        last = {k: self._state[k][1] for k, _ in groups if k in self._state}
        pre.check_order(new, source, after=last)
        tails = [self._state[k][0] for k, _ in groups if k in self._state]
        combined = pd.concat([*tails, new], ignore_index=True) if tails else new
        n_context = len(combined) - len(new)
        try:
            scored = det.score_series(combined, source, explain=explain).iloc[n_context:]
        except DataError as e:  # its record counted in the combined rows: count it in ``data``
            if e.record is None or e.record < n_context:
                raise
            raise e.located(offset=-n_context) from None
        scored.index = data.index
        now = self.clock()
        keep = det.window_ - 1
        times = pre.times(new, source) if pre.time_column else None
        for key, pos in groups:
            old = self._state.pop(key, None)
            tail = new.iloc[pos[-keep:]] if keep else new.iloc[:0]
            if old is not None and len(tail) < keep:
                tail = pd.concat([old[0], tail], ignore_index=True).iloc[-keep:]
            stamp = float(times[pos[-1]]) if times is not None else None
            self._state[key] = (tail.reset_index(drop=True), stamp, now)
        if self.max_keys is not None:
            while len(self._state) > self.max_keys:
                self._state.popitem(last=False)
        return scored
