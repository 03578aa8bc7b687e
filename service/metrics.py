"""Prometheus metrics of one app instance (its own registry, so apps never share counters).

- ``anomaly_http_requests_total{route, model, status}`` and
  ``anomaly_http_request_duration_seconds{route, model, status}``;
- ``anomaly_records_scored_total{model, version}``, ``anomaly_anomalies_flagged_total{...}``;
- ``anomaly_primary_score{model, version}``: a histogram of the primary scores served, with
  buckets at the calibration normals' quantiles and beyond the threshold: the raw material for
  drift alerts (compare the share above the calibration median with 0.5, say);
- ``anomaly_model_reloads_total{model, outcome}``, ``anomaly_model_loaded{model, version,
  alias, kind, origin}``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from service.model import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
_QUANTILES = np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
_BEYOND = np.array([1.0, 2.0, 5.0, 10.0, 100.0])
_FEW = 8  # batches up to this size are counted record by record


def score_buckets(model: ServedModel) -> np.ndarray:
    """Sorted upper bounds: calibration quantiles, the threshold, and multiples of its margin."""
    q = model.calibration_quantiles(_QUANTILES)
    t = model.metadata()["threshold"]
    margin = max(t - float(q[3]), abs(t) * 1e-3, 1e-9)  # threshold minus calibration median
    return np.unique(np.r_[q, t, t + margin * _BEYOND])


class ScoreHistograms(Collector):
    """Per (model, version) histograms of primary scores, updated a whole batch at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[str, str], list] = {}  # -> [bounds (a list), counts, sum]

    def observe(self, model: ServedModel, scores: np.ndarray) -> None:
        """Count a batch of (n,) primary scores."""
        key = (model.name, model.source.version)
        with self._lock:
            if key not in self._data:
                bounds = score_buckets(model).tolist()
                self._data[key] = [bounds, np.zeros(len(bounds) + 1, dtype=np.int64), 0.0]
            entry = self._data[key]
            if len(scores) <= _FEW:  # a request's few records: no array passes
                for s in scores.tolist():
                    if s == s:  # not NaN (no score): counted nowhere, as below
                        entry[1][bisect_left(entry[0], s)] += 1  # bucket: first bound >= s
                        entry[2] += s
                return
            if np.isnan(scores).any():
                scores = scores[~np.isnan(scores)]
            idx = np.searchsorted(entry[0], scores, side="left")
            entry[1] += np.bincount(idx, minlength=len(entry[0]) + 1)
            entry[2] += float(np.sum(scores))

    def collect(self) -> Iterable[Metric]:
        fam = HistogramMetricFamily("anomaly_primary_score",
                                    "Primary anomaly scores served (higher = more abnormal)",
                                    labels=["model", "version"])
        with self._lock:
            for (name, version), (bounds, counts, total) in self._data.items():
                cum = np.cumsum(counts)
                buckets = [(f"{b:.6g}", int(c))
                           for b, c in zip(bounds, cum[:-1], strict=True)]
                buckets.append(("+Inf", int(cum[-1])))
                fam.add_metric([name, version], buckets, total)
        yield fam


class LoadedModels(Collector):
    """``anomaly_model_loaded``: 1 per version served now (read at each scrape)."""

    def __init__(self, loaded: Callable[[], list[ServedModel]]) -> None:
        self.loaded = loaded

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("anomaly_model_loaded", "Model versions served now",
                              labels=["model", "version", "alias", "kind", "origin"])
        for m in self.loaded():
            s = m.source
            g.add_metric([s.name, s.version, s.alias or "", m.kind, s.origin], 1)
        yield g


class Metrics:
    """The app's metrics and its registry.

    Args:
        loaded: returns the versions served now (read at each scrape).
    """

    def __init__(self, loaded: Callable[[], list[ServedModel]]) -> None:
        self.registry = CollectorRegistry()
        labels = ["route", "model", "status"]
        self.requests = Counter("anomaly_http_requests", "HTTP requests answered", labels,
                                registry=self.registry)
        self.latency = Histogram("anomaly_http_request_duration_seconds",
                                 "Time to answer HTTP requests", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.records = Counter("anomaly_records_scored", "Records scored",
                               ["model", "version"], registry=self.registry)
        self.anomalies = Counter("anomaly_anomalies_flagged", "Records flagged as anomalies",
                                 ["model", "version"], registry=self.registry)
        self.reloads = Counter("anomaly_model_reloads", "Model reloads by outcome",
                               ["model", "outcome"], registry=self.registry)
        # Labelled children by label values: label sets are bounded (route templates,
        # configured models, statuses; served versions), and nothing is ever removed.
        self._per_request: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._per_version: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.scores = ScoreHistograms()
        self.registry.register(self.scores)
        self.registry.register(LoadedModels(loaded))

    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (route, model, status)
        children = self._per_request.get(key)
        if children is None:  # label lookups once per label set, not per request
            labels = (route, model, str(status))
            children = self._per_request[key] = (self.requests.labels(*labels),
                                                  self.latency.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)

    def observe_scores(self, model: ServedModel, scores: np.ndarray, flagged: int) -> None:
        """Count a batch of scored records: (n,) primary scores, ``flagged`` anomalies."""
        key = (model.name, model.source.version)
        children = self._per_version.get(key)
        if children is None:
            children = self._per_version[key] = (self.records.labels(*key),
                                                  self.anomalies.labels(*key))
        children[0].inc(len(scores))
        children[1].inc(flagged)
        self.scores.observe(model, scores)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
