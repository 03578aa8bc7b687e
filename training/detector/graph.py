"""A saved detector scored through its ONNX graph: onnxruntime and numpy, no torch.

The graph (:mod:`pipelines.export.onnx`) computes every score kind of a preprocessed matrix
with the detector's own operations and its fixed Monte-Carlo draws held as a constant, so a
:class:`GraphScorer` gives the detector's scores to float32 rounding (about 3e-7 relative on
the test models, 1e-5 at most) and builds p-values and flags from the same saved calibration
(:class:`~training.detector.scores.CalibratedScores`). What it saves is the start-up: importing
onnxruntime takes a fraction of a second where torch takes one to two, and a single record's
pass is several times faster (``docs/export.md``).

It scores only: explanations, latent codes and reconstructions need the detector's networks.
A sequence model's graph scores its windows; :func:`graph_scorer` gives it the per-timestamp
scoring and streams of :class:`~training.detector.series.SeriesScoring`, as the detector has.
An image model's graph scores the images its preprocessing decodes; ``elbo_vs_png`` is
computed beside it (:class:`ImageGraphScorer`).

The graph folder's layout and completeness check: :mod:`training.detector.graph_files`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.detector.graph_files import GRAPH_FILE, INPUT, MARKER, graph_ready
from training.detector.image_params import IMAGE_KINDS, ImageDetectorParams
from training.detector.persistence import read_calibrations, read_saved
from training.detector.scores import CalibratedScores
from training.detector.sequence_params import SEQUENCE_KINDS, SequenceDetectorParams
from training.detector.series import SeriesScoring
from training.errors import ModelFormatError
from training.params import KINDS, DetectorParams
from training.preprocessing.images import ImagePreprocessor, png_bytes
from training.preprocessing.sequences import SequencePreprocessor
from training.preprocessing.tabular import TabularPreprocessor

# What a graph scores, per data kind: the kinds, their parameters, their preprocessing.
_READS = [(KINDS, DetectorParams, TabularPreprocessor),
          (SEQUENCE_KINDS, SequenceDetectorParams, SequencePreprocessor),
          (IMAGE_KINDS, ImageDetectorParams, ImagePreprocessor)]
GRAPH_KINDS = tuple(k for kinds, _, _ in _READS for k in kinds)


def graph_scorer(detector_dir: Path | str, graph_dir: Path | str, threads: int = 1,
                 saved: tuple[dict[str, Any], dict[str, Any]] | None = None) -> GraphScorer:
    """The scorer of the detector saved in ``detector_dir`` through the graph in
    ``graph_dir``: a :class:`GraphScorer`; for a sequence model a
    :class:`SequenceGraphScorer`, for an image model an :class:`ImageGraphScorer`. Arguments
    and errors: :class:`GraphScorer`."""
    saved = saved or read_saved(detector_dir)
    kind = saved[0].get("params", {}).get("kind")
    cls = SequenceGraphScorer if kind in SEQUENCE_KINDS else \
        ImageGraphScorer if kind in IMAGE_KINDS else GraphScorer
    return cls(detector_dir, graph_dir, threads, saved=saved)


class GraphScorer(CalibratedScores):
    """The scores of the table or sequence detector saved in ``detector_dir``, from the graph
    in ``graph_dir`` (for a sequence model, of its windows: use :func:`graph_scorer`).

    Args:
        detector_dir: the saved detector (its ``detector.json`` and ``preprocessing.json``).
        graph_dir: a complete graph folder made from it (:func:`graph_ready`).
        threads: onnxruntime intra-op threads.
        saved: :func:`~training.detector.persistence.read_saved` of ``detector_dir``, when
            the caller has read it already.

    Raises:
        ModelFormatError: an unknown kind, an incomplete or stale graph folder, or a graph
            whose outputs are not the model's score kinds (less those computed beside it).
        ImportError: onnxruntime is not installed.
    """

    runtime = "onnxruntime"
    beside: tuple[str, ...] = ()  # score kinds computed beside the graph, not in it

    def __init__(self, detector_dir: Path | str, graph_dir: Path | str, threads: int = 1,
                 saved: tuple[dict[str, Any], dict[str, Any]] | None = None):
        import onnxruntime as ort

        meta, preprocessing = saved or read_saved(detector_dir)
        kind = meta.get("params", {}).get("kind")
        reads = [(p, pre) for kinds, p, pre in _READS if kind in kinds]
        if not reads:
            raise ModelFormatError(f"{detector_dir}: a {kind} model; graph scoring reads "
                                   f"{', '.join(GRAPH_KINDS)} models")
        params_class, preprocessor_class = reads[0]
        graph_dir = Path(graph_dir)
        if not graph_ready(graph_dir):
            raise ModelFormatError(f"{graph_dir}: no complete graph of the current format")
        self.id_column = meta["id_column"]
        self.label_column = meta["label_column"]
        self.params = params_class.from_dict({**params_class.saved_defaults, **meta["params"]})
        self.preprocessor_ = preprocessor_class.from_dict(preprocessing)
        self.resolved_ = meta["resolved"]
        self.calibrations_ = read_calibrations(detector_dir, meta, self.score_kinds)
        self._chunk = int(json.loads((graph_dir / MARKER).read_text())["score_chunk"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(graph_dir / GRAPH_FILE), options,
                                             providers=["CPUExecutionProvider"])
        outputs = [o.name for o in self._session.get_outputs()]
        self._outputs = [k for k in self.score_kinds if k not in self.beside]  # its order
        if sorted(outputs) != sorted(self._outputs):
            raise ModelFormatError(f"{graph_dir}: the graph computes {sorted(outputs)}, the "
                                   f"model scores {sorted(self._outputs)} through it")

    @property
    def score_kinds(self) -> tuple[str, ...]:
        """Every score kind the model computes, the primary one among them."""
        return tuple(self.params.score_kinds)

    def _check_fitted(self) -> None:
        """Loaded from a fitted detector: always fitted."""

    def _check_calibrated(self) -> None:
        """Loaded with its calibration: always calibrated."""

    def _matrix(self, data: Any, source: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.preprocessor_.transform(data, source)

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Every score kind of the matrix's rows, ``score_chunk`` records per pass."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self._outputs}
        for i in range(0, len(X), self._chunk):
            for k, v in zip(self._outputs,
                            self._session.run(self._outputs, {INPUT: X[i : i + self._chunk]})):
                parts[k].append(np.asarray(v, dtype=np.float64))
        # one pass (a request's records, mostly) is returned as it is, not copied
        return {k: (v[0] if len(v) == 1 else np.concatenate(v) if v else np.zeros(0))
                for k, v in parts.items()}

    def _explanation_of(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError("explanations need the detector's networks: load it with "
                                  "training.detector.load_detector")


class SequenceGraphScorer(SeriesScoring, GraphScorer):
    """A sequence model's graph with the detector's per-timestamp scoring and streams."""


class ImageGraphScorer(GraphScorer):
    """An image model's graph, and ``elbo_vs_png`` beside it: the ``elbo`` less the slope
    the detector fitted times each image's PNG-compressed length (a compressor's output, which
    no graph computes)."""

    beside = ("elbo_vs_png",)

    def __init__(self, detector_dir: Path | str, graph_dir: Path | str, threads: int = 1,
                 saved: tuple[dict[str, Any], dict[str, Any]] | None = None):
        saved = saved or read_saved(detector_dir)
        super().__init__(detector_dir, graph_dir, threads, saved=saved)
        slope = saved[0].get("complexity_slope")
        self.complexity_slope_ = None if slope is None else float(slope)

    def _raw_from_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]:
        raw = super()._raw_from_matrix(X)
        if "elbo_vs_png" in self.score_kinds and self.complexity_slope_ is not None:
            raw["elbo_vs_png"] = raw["elbo"] - self.complexity_slope_ * png_bytes(
                X, self.preprocessor_.shape)
        return {k: raw[k] for k in self.score_kinds if k in raw}
