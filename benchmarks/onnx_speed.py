"""ONNX Runtime against torch on CPU: the same detector, the same preprocessed matrix.

For each model the detector is fitted in memory, exported with ``anomaly export``'s exporter,
and both engines score the preprocessed matrix (preprocessing excluded, it is the same Python
either way): torch through the detector's own scoring pass (``_raw_from_matrix``, the code the
service and batch jobs run) and onnxruntime through ``InferenceSession.run``. One intra-op
thread each. Printed: the median and p90 time per call for 1 record and for 1,000 records, the
records/s, the speed-up of onnxruntime over torch, and the largest relative difference of the
scores (the primary score kind's and every other).

    python benchmarks/onnx_speed.py                 # about a minute
    python benchmarks/onnx_speed.py --repeats 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.cli.text import format_table
from pipelines.demo.run import load_demo_frame
from pipelines.export.onnx import export_onnx
from training.detector import Detector
from training.detector.image import ImageDetector


def _models():
    df = load_demo_frame()
    normal = df[df.malignant == 0].drop(columns=["malignant"])
    rows = df.sample(1000, replace=True, random_state=0)
    for kind in ("ae", "vae"):
        det = Detector(id_column="id", label_column="malignant", kind=kind, max_epochs=20)
        det.fit(normal.iloc[:280]).calibrate(normal.iloc[280:])
        yield f"table {kind} ({det.params.n_models} member{'s' * (det.params.n_models > 1)}, "\
              f"30 columns)", det, det._matrix(rows, "rows")[0]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.stack([np.exp(-((yy - 14 - rng.normal()) ** 2 + (xx - 14 - rng.normal()) ** 2)
                              / 40.0) for _ in range(400)]).astype(np.float32)
    det = ImageDetector(kind="conv_vae", max_epochs=3).fit(images[:300]).calibrate(images[300:])
    batch = images[rng.integers(0, len(images), 1000)]
    yield "image conv_vae (28x28)", det, det._matrix(batch, "images")[0]


def _time(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=100, help="Calls timed per case.")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    torch.set_num_threads(1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, det, X in _models():
            path = Path(tmp) / "model.onnx"
            kinds = list(export_onnx(det, path, source={"uri": name})["outputs"])
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            got = dict(zip(kinds, session.run(None, {"x": X}), strict=True))
            want = det._raw_from_matrix(X)
            diff = max(float(np.max(np.abs(got[k] - want[k])
                                    / np.maximum(np.abs(want[k]), 1e-12))) for k in kinds)
            for n in (1, 1000):
                x = np.ascontiguousarray(X[:n])
                t_torch = _time(lambda x=x, d=det: d._raw_from_matrix(x), args.repeats)
                t_ort = _time(lambda x=x, s=session: s.run(None, {"x": x}), args.repeats)
                rows.append({
                    "model": name, "records": n,
                    "torch p50 ms": f"{np.median(t_torch) * 1e3:.3f}",
                    "torch p90 ms": f"{np.quantile(t_torch, 0.9) * 1e3:.3f}",
                    "onnxruntime p50 ms": f"{np.median(t_ort) * 1e3:.3f}",
                    "onnxruntime p90 ms": f"{np.quantile(t_ort, 0.9) * 1e3:.3f}",
                    "torch rec/s": f"{n / np.median(t_torch):,.0f}",
                    "onnxruntime rec/s": f"{n / np.median(t_ort):,.0f}",
                    "speed-up": f"{np.median(t_torch) / np.median(t_ort):.1f}x",
                    "max rel diff": f"{diff:.1e}",
                })
    print(format_table(rows, list(rows[0])))
    print(f"({args.repeats} calls per case; one intra-op thread each; torch "
          f"{torch.__version__}, onnxruntime {ort.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
