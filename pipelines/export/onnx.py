"""A detector as an ONNX graph: from the preprocessed input matrix to every score kind that is
network math, with a JSON sidecar for everything around it.

The graph has one input, ``x``: float32 (n, n_features), the matrix the detector's
preprocessing makes of n records (``preprocessor_.transform``; the sidecar describes it), and
one float64 output (n,) per exported score kind, named as the kind: ``recon``, and for a VAE
``elbo`` and ``agg_elbo`` with the detector's fixed Monte-Carlo draws baked in as a constant
(the same draws as in Python, so the same numbers), and with ``neighbours`` the ``knn``
distance to the training rows kept with the model (a constant too) and ``combined``; for an
image model ``elbo_vs_local`` / ``recon_vs_local`` (its background predictor and
standardisations as constants, through the detector's own ``_derived_scores``).

Not exported: a score that is not a function of the matrix alone. ``elbo_vs_png`` (image VAEs)
subtracts the PNG-compressed length of each image, which a compressor computes, not a graph;
the sidecar lists it under ``not_exported`` with the reason.

The sidecar (``<output>.json``) holds what a runtime needs around the graph: the input and
output names, the preprocessing (the fitted ``preprocessing.json``: columns, medians, means,
standard deviations, categories; or the image shape), the primary score, and per score kind
its threshold and sorted calibration scores, so that ``is_anomaly`` is ``score > threshold``
and the p-value is ``(1 + #{calibration >= score}) / (n + 1)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.detector.base import BaseDetector
from training.errors import ConfigError, OutputError, output_error, output_target

SIDECAR_VERSION = 1
OPSET = 18
INPUT = "x"
# Score kinds a graph cannot compute, and why.
NOT_GRAPH = {"elbo_vs_png": "subtracts each image's PNG-compressed length: a compressor's "
                            "output, not a function a graph computes"}


def exportable_kinds(detector: BaseDetector) -> list[str]:
    """The detector's score kinds that the graph computes, in the detector's order."""
    return [k for k in detector.score_kinds if k not in NOT_GRAPH]


class ScoreGraph(torch.nn.Module):
    """The detector's scoring pass on a preprocessed matrix, as one traceable module.

    The same tensor operations as :meth:`BaseDetector._raw_from_matrix` (through the detector's
    own ``_squared_errors`` and ``_variational_terms``), with the random draws and the stored
    tensors held as constants.
    """

    def __init__(self, detector: BaseDetector):
        super().__init__()
        self.detector = [detector]  # not a submodule: only its network is traced
        self.network = detector.network_
        self.kinds = exportable_kinds(detector)
        self.variational = "elbo" in detector.score_kinds
        self.register_buffer("scale", torch.from_numpy(
            np.asarray(detector.feature_scale_, dtype=np.float32)))
        if self.variational:
            self.register_buffer("eps", detector._eps(detector.params.mc_samples))
        self.reference = detector.reference_ is not None
        if self.reference:
            ref = detector.reference_.double()
            self.register_buffer("ref", ref)
            self.register_buffer("ref_sq", ref.pow(2).sum(1))
            self.k = int(min(detector.params.neighbours, ref.shape[0]))
            self.knn_mean = detector.knn_mean_
        self.combination = dict(detector.combination_ or {})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        det = self.detector[0]
        elbos: dict[str, torch.Tensor] = {}
        if self.variational:  # the draws as a constant: a graph cannot hold a seeded generator
            err, elbos = det._variational_terms(x, self.network.encode(x), self.eps)
        else:
            err = det._squared_errors(x)
        raw = {"recon": det._recon(err / self.scale).double(), **elbos}
        raw.update(det._derived_scores(x, raw))
        if self.reference:
            raw["knn"] = self._neighbour_distance(x)
        if "combined" in self.kinds:
            parts = [(raw[k].double() - loc) / scale
                     for k, (loc, scale) in self.combination.items()]
            raw["combined"] = torch.stack(parts).mean(dim=0)
        return tuple(raw[k].double() for k in self.kinds)

    def _neighbour_distance(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`BaseDetector._neighbour_distances`, as tensors."""
        xd = x.double()
        part = torch.addmm(self.ref_sq, xd, self.ref.T, alpha=-2.0)
        d2 = part.topk(self.k, dim=1, largest=False).values + xd.pow(2).sum(1, keepdim=True)
        nearest = d2.clamp(min=0).sqrt()
        return nearest.mean(dim=1) if self.knn_mean else nearest[:, -1]


def export_onnx(detector: BaseDetector, output: str | Path, *, source: dict[str, Any]
                ) -> dict[str, Any]:
    """Write ``output`` (the ONNX graph) and ``output.json`` (the sidecar) for ``detector``.

    Args:
        detector: a fitted, calibrated detector.
        output: the ``.onnx`` file to write (replaced atomically, with its sidecar).
        source: where the model came from (uri, name, version, run_id), for the sidecar.

    Returns:
        the sidecar, as written.

    Raises:
        ConfigError: the model has no score kind a graph can compute.
    """
    if not str(output):
        raise OutputError("the output is an empty path; give the graph's file name (model.onnx)")
    output = output_target(Path(output))
    kinds = exportable_kinds(detector)
    if not kinds:
        raise ConfigError(f"{source.get('uri', 'model')}: none of its scores "
                          f"{list(detector.score_kinds)} can be exported as a graph")
    # both checked before either is written
    for path in (output, output_target(sidecar_path(output))):
        if path.is_dir():
            raise OutputError(f"{path}: is a folder; give the graph's file name "
                              "(model.onnx; its sidecar goes beside it as model.onnx.json)")
    graph = ScoreGraph(detector).eval()
    n_features = int(detector.preprocessor_.n_features_)
    example = torch.zeros(3, n_features)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".onnx", dir=output.parent)
    except OSError as e:
        raise output_error(e, f"{output}: cannot write there") from None
    os.close(fd)
    from pipelines.registry.download import file_umask

    os.chmod(tmp, 0o666 & ~file_umask())  # as an ordinary new file, not mkstemp's 0600
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:
        exporter_log.setLevel(logging.ERROR)  # its notes on optional torchvision operators
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
                output_names=kinds, dynamic_shapes={"x": {0: torch.export.Dim("records")}},
                external_data=False, verbose=False)
        program.save(tmp, external_data=False)
        sidecar = _sidecar(detector, kinds, n_features, source, output.name)
        side_tmp = Path(f"{tmp}.json")
        side_tmp.write_text(json.dumps(sidecar, indent=1))
        os.replace(tmp, output)
        os.replace(side_tmp, sidecar_path(output))
    finally:
        exporter_log.setLevel(level)
        for leftover in (Path(tmp), Path(f"{tmp}.json")):
            leftover.unlink(missing_ok=True)
    return sidecar


def sidecar_path(output: str | Path) -> Path:
    """The sidecar of ``output``: ``model.onnx`` -> ``model.onnx.json``."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def _sidecar(det: BaseDetector, kinds: list[str], n_features: int, source: dict[str, Any],
             graph_file: str) -> dict[str, Any]:
    pre = det.preprocessor_
    return {
        "format": "ae-anomaly-onnx",
        "version": SIDECAR_VERSION,
        "graph": graph_file,
        "source": source,
        "model_kind": det.params.kind,
        "input": {"name": INPUT, "dtype": "float32", "shape": ["n", n_features],
                  "feature_names": list(pre.feature_names_),
                  "description": "the preprocessed matrix: apply 'preprocessing' to the "
                                 "records first"},
        "outputs": {k: {"dtype": "float64", "shape": ["n"]} for k in kinds},
        "preprocessing": {"class": type(pre).__name__, **pre.to_dict()},
        "primary_score": det.primary_score,
        "target_fpr": det.params.target_fpr,
        "scores": {k: {"threshold": c.threshold, "achievable_fpr": c.achievable_fpr,
                       "method": c.method, "calibration_scores": c.scores.tolist(),
                       "exported": k in kinds}
                   for k, c in det.calibrations_.items()},
        "rules": {"is_anomaly": "score > threshold (strictly), for the primary score",
                  "p_value": "(1 + #{calibration_scores >= score}) / (n_calibration + 1)"},
        "monte_carlo_draws": int(det.params.mc_samples) if "elbo" in det.score_kinds else 0,
        "not_exported": {k: NOT_GRAPH[k] for k in det.score_kinds if k in NOT_GRAPH},
    }


def write_graph_folder(detector_dir: str | Path, graph_dir: str | Path) -> Path:
    """Write the graph folder a :class:`~training.detector.graph.GraphScorer` reads, for the
    detector saved in ``detector_dir``: built in a temporary folder beside
    ``graph_dir`` and renamed into place, so a reader never sees half of one.

    Returns:
        ``graph_dir``.
    """
    from pipelines.registry.download import replace_folder
    from training.detector.graph_files import GRAPH_FILE, MARKER, graph_marker
    from training.detector.persistence import load_detector

    detector_dir, graph_dir = Path(detector_dir), Path(graph_dir)
    det = load_detector(detector_dir)
    graph_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{graph_dir.name}-", dir=graph_dir.parent))
    try:
        export_onnx(det, tmp / GRAPH_FILE, source={"detector": str(detector_dir)})
        chunk = det._score_chunk(int(det.preprocessor_.n_features_))
        (tmp / MARKER).write_text(json.dumps(graph_marker(chunk, det.params.kind)))
        replace_folder(tmp, graph_dir, marker=MARKER)  # a stale one (another format) goes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return graph_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.export.onnx DETECTOR_DIR GRAPH_DIR``: :func:`write_graph_folder`
    (what the scoring service runs in the background, niced, for a model it serves with
    torch)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m pipelines.export.onnx DETECTOR_DIR GRAPH_DIR", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    try:
        write_graph_folder(*args)
    except Exception as e:  # noqa: BLE001 - the parent logs this one line
        print(f"{type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
