"""A model as the service serves it: the scorer, where it came from, and its input parsers.

A model whose cached folder holds a complete ONNX graph (``graph/``, see
:mod:`training.detector.graph`) scores through onnxruntime: serving it imports no torch, so a
restart on a warm cache is ready in about a second. A model the first time it is served
scores with its torch detector; the service then writes the graph beside the cached model in
a background process (:func:`export_graph_later`), for the next start. Explanations, latent
codes, reconstructions, anomaly maps and a sequence model's streams always use the torch
detector, loaded on the first request that needs it, and so do large requests of the kinds
whose networks are faster in bulk than their graph (``NETWORKS_IN_BULK``).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.registry.download import ModelSource
from service.scoring.inputs import ModelInputs
from training.detector.graph import GRAPH_KINDS, graph_scorer
from training.detector.graph_files import (
    graph_export_command,
    graph_ready,
    graph_runtime_available,
)
from training.detector.image_params import IMAGE_KINDS
from training.detector.persistence import read_saved
from training.detector.sequence_params import SEQUENCE_KINDS
from training.preprocessing.tabular import Records

log = logging.getLogger(__name__)

# Kinds whose networks score a large request faster than their graph does: onnxruntime's 1-D
# and transposed convolutions over many windows or images (in process, one thread, 1,000
# records: seq_ae 5 ms against 9, seq_vae 18 against 28, conv_ae 315 against 403; a
# conv_vae's graph and a table model's are the faster). A request of more than BULK_RECORDS
# records of such a kind scores with the networks, loaded on the first one (in a worker
# thread: it is past service.routes.deps.INLINE_RECORDS too).
NETWORKS_IN_BULK = ("seq_ae", "seq_vae", "conv_ae")
BULK_RECORDS = 256

_exports: dict[Path, threading.Thread] = {}
_exports_lock = threading.Lock()


def data_kind(kind: str) -> str:
    """``tables``, ``images`` or ``sequences``: what a model kind reads."""
    return "images" if kind in IMAGE_KINDS else "sequences" if kind in SEQUENCE_KINDS \
        else "tables"


def _load_torch_detector(detector_dir: Path, threads: int | None) -> Any:
    """The saved detector with its networks (imports torch), ``threads`` intra-op threads."""
    import torch

    from training.detector.persistence import load_detector

    if threads:
        torch.set_num_threads(threads)
    return load_detector(detector_dir)


def _warmed_up(scorer: Any) -> Any:
    """``scorer`` after one pass on one row of its matrix (one record, or one window), so the
    first request pays no one-off kernel set-up."""
    scorer._raw_from_matrix(np.zeros((1, scorer.preprocessor_.n_features_), np.float32))
    return scorer


def export_graph_later(detector_dir: Path, graph_dir: Path) -> threading.Thread | None:
    """Write the graph folder ``graph_dir`` of the detector saved in ``detector_dir`` in a
    background process (lowered priority; the service keeps answering), unless it is there
    or being written.

    Returns:
        the thread that waits for the export (and logs how it went), or None.
    """
    with _exports_lock:
        running = _exports.get(graph_dir)
        if graph_ready(graph_dir) or (running is not None and running.is_alive()):
            return None
        thread = threading.Thread(target=_export, args=(detector_dir, graph_dir), daemon=True,
                                  name=f"graph-export-{graph_dir.parent.name}")
        _exports[graph_dir] = thread
    thread.start()
    return thread


def _export(detector_dir: Path, graph_dir: Path) -> None:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(graph_export_command(detector_dir, graph_dir),
                              capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("%s: graph export did not run (%s); this model keeps scoring with torch",
                    graph_dir, e)
        return
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1][:300]
        log.warning("%s: graph export failed (%s); this model keeps scoring with torch",
                    graph_dir, why)
        return
    log.info("%s: ONNX graph written in %.1fs; the next start scores with it, without torch",
             graph_dir, time.perf_counter() - t0)


@dataclass(frozen=True)
class ServedModel:
    """An immutable loaded version: swapped whole on reload, never changed in place.

    Attributes:
        scorer: what scores requests: a :class:`~training.detector.graph.GraphScorer` or the
            detector itself; both give ``score_columns``, ``preprocessor_``, ``params`` and
            the calibration.
        runtime: ``onnxruntime`` or ``torch``.
    """

    source: ModelSource
    scorer: Any
    inputs: ModelInputs | None  # None for an image model
    path: Path
    threads: int | None = 1
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    _held: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, source: ModelSource, path: Path, max_records: int, threads: int | None = 1,
             graph_dir: Path | None = None) -> ServedModel:
        """Load the detector saved in ``path`` and build its request parser.

        Args:
            source: where it came from.
            path: the saved detector (a model folder's ``artifacts/detector``).
            max_records: records per request.
            threads: intra-op threads (torch's, or onnxruntime's for a graph).
            graph_dir: where the model's graph is kept (the service's cache): scored through
                it when it is there, else written there for the next start. None: score with
                torch.
        """
        saved = read_saved(path)
        kind = saved[0].get("params", {}).get("kind")
        scorer = None
        use_graph = graph_dir is not None and kind in GRAPH_KINDS and graph_runtime_available()
        if use_graph and graph_ready(graph_dir):
            try:
                scorer = _warmed_up(graph_scorer(path, graph_dir, threads or 1, saved=saved))
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors are plain Exceptions
                scorer = None
                log.warning("%s: its graph does not load (%s); scoring with torch",
                            graph_dir, str(e).splitlines()[0][:300] if str(e) else type(e))
        if scorer is None:
            scorer = _load_torch_detector(path, threads)
            if kind in GRAPH_KINDS:
                _warmed_up(scorer)
            if use_graph:
                export_graph_later(path, graph_dir)
        inputs = None
        if data_kind(kind) != "images":  # images arrive as files, not records
            inputs = ModelInputs(source.name, scorer.preprocessor_.columns_, max_records)
        return cls(source=source, scorer=scorer, inputs=inputs, path=path, threads=threads)

    @property
    def name(self) -> str:
        """Registered model name."""
        return self.source.name

    @property
    def kind(self) -> str:
        """The model kind (``ae``, ``vae``, ``conv_vae``, ``seq_ae``...)."""
        return str(self.scorer.params.kind)

    @property
    def data_kind(self) -> str:
        """``tables``, ``images`` or ``sequences``."""
        return data_kind(self.kind)

    @property
    def runtime(self) -> str:
        """``onnxruntime`` (the model's graph) or ``torch`` (its networks)."""
        return getattr(self.scorer, "runtime", "torch")

    @property
    def networks_loaded(self) -> bool:
        """Whether :attr:`detector` is at hand without loading anything."""
        return self.runtime == "torch" or "detector" in self._held

    @property
    def detector(self) -> Any:
        """The detector with its networks (explanations, codes, reconstructions, streams):
        the scorer itself, or loaded on first use when the scorer is a graph."""
        if self.runtime == "torch":
            return self.scorer
        with self._lock:
            if "detector" not in self._held:
                t0 = time.perf_counter()
                self._held["detector"] = _load_torch_detector(self.path, self.threads)
                log.info("%s version %s: networks loaded in %.2fs (first request that needs "
                         "them)", self.name, self.source.version, time.perf_counter() - t0)
            return self._held["detector"]

    def needs_networks(self, n: int, explain: bool = False) -> bool:
        """Whether a request of ``n`` records scores with the networks: for explanations (or
        anomaly maps), and for a large one of a kind whose networks are faster in bulk
        (``NETWORKS_IN_BULK``)."""
        return explain or (n > BULK_RECORDS and self.kind in NETWORKS_IN_BULK)

    def scorer_for(self, n: int, explain: bool = False) -> Any:
        """What scores a request of ``n`` records: :attr:`detector` when
        :meth:`needs_networks`, else :attr:`scorer`."""
        return self.detector if self.needs_networks(n, explain) else self.scorer

    def score(self, records: Records | Any, explain: bool = False) -> dict[str, np.ndarray]:
        """The columns of ``Detector.score_columns`` for validated request records (or a
        DataFrame); for a sequence model those of ``SequenceDetector.series_columns``, one per
        record."""
        n = records.n if isinstance(records, Records) else len(records)
        scorer = self.scorer_for(n, explain)
        if self.data_kind == "sequences":
            return scorer.series_columns(records, source="request", explain=explain)
        return scorer.score_columns(records, source="request", explain=explain)

    @property
    def explained_columns(self) -> list[str]:
        """What an explanation's entries name: the input columns, or a sequence's channels."""
        pre = self.scorer.preprocessor_
        return pre.channels_ if self.data_kind == "sequences" else pre.input_columns_

    def metadata(self) -> dict[str, Any]:
        """What identifies the version in every answer."""
        det = self.scorer
        primary = det.primary_score
        return {"name": self.name, "version": self.source.version, "alias": self.source.alias,
                "kind": det.params.kind, "primary_score": primary,
                "threshold": det.thresholds_[primary]}

    def describe(self) -> dict[str, Any]:
        """Everything about the loaded version, for GET /v1/models."""
        det = self.scorer
        schema = [{"name": s.name, "kind": s.kind, "dtype": s.dtype,
                   "categories": s.categories or None, "used": not s.dropped}
                  for s in (det.preprocessor_.columns_ if self.inputs is not None else [])]
        return {**self.metadata(), "uri": self.source.uri, "run_id": self.source.run_id,
                "origin": self.source.origin, "runtime": self.runtime,
                "thresholds": det.thresholds_,
                "target_fpr": det.params.target_fpr,
                "achievable_fpr": det.achievable_fpr_,
                "score_kinds": list(det.calibrations_),
                "latent_dim": int(det.resolved_["latent_dim"]),
                "input_schema": schema, "loaded_at": self.loaded_at.isoformat()}

    def calibration_quantiles(self, qs: np.ndarray) -> np.ndarray:
        """Quantiles of the primary score on the calibration normals."""
        return np.quantile(self.scorer.calibrations_[self.scorer.primary_score].scores, qs)
