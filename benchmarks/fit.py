"""Fit time of the default table model next to PyOD's AutoEncoder, and of its training step
against autograd's, on the benchmark tables.

For every table and seed, the protocol's training normals (``benchmarks/quality_lib.py``) are
fitted, in one process and one thread, alternating the order round by round:
- ``ours``: the default Detector (``anomaly train`` with no flags);
- ``autograd``: the same Detector with its gradients from autograd instead of the dense
  ensembles' hand-written step (the reference the step is measured against);
- ``pyod_ae``: PyOD's AutoEncoder with its defaults, on the z-scored features, as the quality
  benchmark runs it.

Prints per table: training normals, epochs and gradient steps of ``ours``, each fit's seconds
(the best of the rounds), time per step, and the ratios ours / PyOD and ours / autograd per
step (the two trainings may stop at different epochs: float rounding differs between them).

    pip install -e '.[bench]'     # PyOD
    python benchmarks/fit.py --data-dir DATA --seeds 0 --rounds 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.quality_lib import load_adbench, protocol_split, standardize  # noqa: E402
from training.detector.base import BaseDetector, _folds  # noqa: E402
from training.detector.tabular import Detector  # noqa: E402


class AutogradDetector(Detector):
    """The default Detector trained with autograd's gradients (the reference)."""

    _gradient_step = BaseDetector._gradient_step


def _fit_ours(cls: type[Detector], frame: pd.DataFrame, seed: int) -> tuple[float, Detector]:
    t0 = time.perf_counter()
    det = cls(seed=seed).fit(frame)
    return time.perf_counter() - t0, det


def _fit_pyod(train_std: np.ndarray, seed: int) -> float:
    from pyod.models.auto_encoder import AutoEncoder

    model = AutoEncoder(random_state=seed, verbose=0)
    t0 = time.perf_counter()
    model.fit(train_std)
    return time.perf_counter() - t0


def _steps(det: Detector, n_records: int) -> int:
    """Gradient steps a fit on ``n_records`` took: epochs × the batches of an epoch of its
    training rows (the records less the validation rows)."""
    p = det.params
    n_train = n_records - max(2, int(round(p.validation_fraction * n_records)))
    folds = _folds(n_train, p.n_models, p.seed) if p.cross_fit else None
    per_epoch = sum(1 for _ in det._batches(n_train, folds, torch.Generator()))
    return len(det.history_) * per_epoch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("BENCH_DATA_DIR", "datasets")))
    ap.add_argument("--datasets", nargs="*")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # the first fit of each in a process pays for lazy imports and first-call set-up
    warm = np.random.default_rng(0).normal(size=(200, 4))
    _fit_pyod(warm, 0)
    Detector(max_epochs=2).fit(warm)
    rows = []
    for ds in load_adbench(args.data_dir, args.datasets):
        for seed in args.seeds:
            X = ds.X[protocol_split(ds.y, seed).train]
            frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
            train_std, _ = standardize(X, X[:1])
            best = {"ours": math.inf, "autograd": math.inf, "pyod_ae": math.inf}
            fits = {}
            for r in range(args.rounds):
                order = ["ours", "autograd", "pyod_ae"]
                for name in order if r % 2 == 0 else order[::-1]:
                    if name == "pyod_ae":
                        best[name] = min(best[name], _fit_pyod(train_std, seed))
                        continue
                    cls = Detector if name == "ours" else AutogradDetector
                    seconds, fits[name] = _fit_ours(cls, frame, seed)
                    best[name] = min(best[name], seconds)
            steps = {k: _steps(fits[k], len(X)) for k in fits}
            rows.append({
                "table": ds.name, "seed": seed, "normals": len(X),
                "epochs": len(fits["ours"].history_), "steps": steps["ours"],
                "ours s": best["ours"], "autograd s": best["autograd"],
                "pyod_ae s": best["pyod_ae"],
                "ours ms/step": 1e3 * best["ours"] / steps["ours"],
                "autograd ms/step": 1e3 * best["autograd"] / steps["autograd"],
                "ours / pyod_ae": best["ours"] / best["pyod_ae"],
                "ours / autograd per step": (best["ours"] / steps["ours"])
                / (best["autograd"] / steps["autograd"]),
            })
            r = rows[-1]
            print(f"{ds.name} seed {seed}: ours {r['ours s']:.2f} s, autograd "
                  f"{r['autograd s']:.2f} s, pyod_ae {r['pyod_ae s']:.2f} s", flush=True)
    table = pd.DataFrame(rows)
    means = table.drop(columns=["table", "seed"]).mean()
    # the mean of the ratios is not the ratio of the mean fit times: give both
    ratios = {"ours / pyod_ae": means["ours s"] / means["pyod_ae s"],
              "ours / autograd per step": means["ours ms/step"] / means["autograd ms/step"]}
    table = pd.concat([table.astype(object), pd.DataFrame([
        {"table": "mean", "seed": "", **means.to_dict()},
        {"table": "ratio of means", "seed": "", **ratios}])], ignore_index=True)
    print()
    print(_markdown(table))


def _markdown(table: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float) and v.is_integer() and v > 10:
            return f"{v:.0f}"
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.2f}"
        return str(v)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
