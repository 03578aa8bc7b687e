"""Stateful scoring of sequence models: per model, a :class:`~training.detector.series.
SeriesStream` holding each series' last ``window - 1`` records.

State belongs to the loaded version: a reload that brings another version (or the same
version loaded again) starts every series afresh, since the new model's window, channels and
standardisation may differ from the ones the kept records were meant for; its first points
are warm-up again. A start from the cache that the registry then confirms keeps them: the
same networks go on serving. Requests for one model are scored one at a time (a series' points must
arrive in order); the state is bounded by ``stream_max_keys`` series of ``window - 1`` records
each, and a series idle for ``stream_idle_s`` seconds is dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.model import ServedModel
from service.scoring.records import Scored
from service.scoring.render import render_results
from training.detector.scores import scored_primary
from training.errors import DataError
from training.preprocessing.tabular import Records

if TYPE_CHECKING:
    from training.detector.series import SeriesStream


class StreamStates:
    """The streams of every served sequence model, created on first use.

    Args:
        max_keys: series kept per model.
        idle_s: seconds before an idle series is dropped.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, max_keys: int, idle_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_keys, self.idle_s, self.clock = max_keys, idle_s, clock
        self._streams: dict[str, tuple[ServedModel, SeriesStream, threading.Lock]] = {}
        self._lock = threading.Lock()

    def of(self, model: ServedModel) -> tuple[SeriesStream, threading.Lock]:
        """The stream of ``model``'s version; a new, empty one after a reload."""
        if model.data_kind != "sequences":
            raise DataError(f"model '{model.name}' is a {model.kind} model; "
                            "/stream scores sequence models (seq_ae, seq_vae): use /score")
        with self._lock:
            held = self._streams.get(model.name)
            # The same loaded networks keep their streams: a registry confirmation of the
            # version being served changes its source, not its model.
            if held is None or held[0].scorer is not model.scorer:
                stream = model.detector.stream(self.max_keys, self.idle_s, self.clock)
                held = (model, stream, threading.Lock())
                self._streams[model.name] = held
            return held[1], held[2]

    def status(self, name: str) -> dict[str, Any]:
        """How many series a model's stream holds."""
        held = self._streams.get(name)
        return {"series": 0 if held is None else len(held[1])}


def stream_batch(model: ServedModel, records: Records, states: StreamStates,
                 explain: bool = False, top_k: int = 5) -> Scored:
    """Append the records to their series' streams and score each one.

    Returns:
        the answer of ``score_batch``, plus ``n_series`` (series held after this request); a
        record is ``warm_up`` until its series has ``window`` records.
    """
    stream, lock = states.of(model)
    frame = records.frame(model.detector.preprocessor_.input_columns_)
    with lock:
        scored = stream.push(frame, "request", explain=explain)
        held = len(stream)
    channels = model.detector.preprocessor_.channels_
    cols = {c: scored[c].to_numpy() for c in scored.columns if not c.startswith("explain_")}
    if explain:
        cols["explanation"] = scored[[f"explain_{c}" for c in channels]].to_numpy()
    flagged = int(cols["is_anomaly"].sum())
    body = {"model": model.metadata(), "n_records": records.n, "n_anomalies": flagged,
            "n_series": held, "ignored_columns": records.ignored}
    rendered = render_results(cols, channels, top_k)
    return Scored(body=body, primary=scored_primary(cols), flagged=flagged,
                  rendered_results=rendered)
