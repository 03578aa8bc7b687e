"""Where a detector's ONNX graph lies beside it, and whether it is complete: files only,
no onnxruntime or torch (a batch job decides from these whether to start its MLflow helper
before it imports anything heavy). The scorer is :mod:`training.detector.graph`.

A graph folder, beside the saved detector it was made from::

    score.onnx      the scoring graph (input ``x``, one output per score kind)
    score.onnx.json the export's sidecar (thresholds, preprocessing, as ``anomaly export``)
    graph.json      written last: the graph's format, the detector format it was made from,
                    the records per pass
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from training.detector.persistence import FORMAT_VERSION

GRAPH_VERSION = 1  # bumped whenever what a graph folder holds changes meaning
GRAPH_FILE = "score.onnx"
MARKER = "graph.json"
INPUT = "x"
GRAPH_DIR = "graph"  # in a cached model folder, beside artifacts/
# What exporting a graph needs (torch's exporter writes through onnxscript), and scoring one.
_EXPORT_NEEDS = ("onnxruntime", "onnx", "onnxscript")


def graph_export_command(detector_dir: Path, graph_dir: Path) -> list[str]:
    """The command that writes ``graph_dir`` for the detector saved in ``detector_dir``
    (``python -m pipelines.export.onnx``), niced before it imports anything: loading torch is
    most of its work, and it runs beside a process that is scoring."""
    return [sys.executable, "-c", "import os, runpy; os.nice(10); "
            "runpy.run_module('pipelines.export.onnx', run_name='__main__')",
            str(detector_dir), str(graph_dir)]


def graph_runtime_available() -> bool:
    """Whether onnxruntime, onnx and onnxscript are installed (graphs are made and read)."""
    return all(importlib.util.find_spec(m) is not None for m in _EXPORT_NEEDS)


def graph_marker(score_chunk: int, model_kind: str) -> dict[str, Any]:
    """What ``graph.json`` records: the formats, the records per pass and the model's kind."""
    return {"graph_version": GRAPH_VERSION, "detector_format": FORMAT_VERSION,
            "score_chunk": int(score_chunk), "model_kind": model_kind}


def graph_model_kind(graph_dir: Path) -> str | None:
    """The model kind ``graph.json`` records (None when it records none or cannot be read),
    without reading the detector's own, larger files."""
    try:
        marker = json.loads((Path(graph_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker.get("model_kind") if isinstance(marker, dict) else None


def graph_ready(graph_dir: Path) -> bool:
    """Whether ``graph_dir`` holds a complete graph of the current formats."""
    try:
        marker = json.loads((Path(graph_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("graph_version") == GRAPH_VERSION
            and marker.get("detector_format") == FORMAT_VERSION
            and (Path(graph_dir) / GRAPH_FILE).is_file())
