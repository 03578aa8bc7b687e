"""Simpler images as the anomalies: does a score rank them above the normals?

Likelihood and reconstruction scores tend to call an image that is simpler than the normal
ones (smoother, fewer edges) more normal than the normals. This benchmark builds such tasks
from MNIST: for each normal digit, the protocol's 600 training normals fit the detector; the
test set is 200 held-out normals against anomalies made from the other 200 held-out normals,
blurred (Gaussian, sigma 1.5 pixels) or flattened to their mean grey level. Reported: AUROC
of every score kind of each ``--kinds`` detector, a pixel KNN (PyOD defaults, standardised
pixels), and the two complexity measures alone: the PNG size and the local predictor's
residual (the first kind's own background model, :mod:`training.detector.complexity`).
``--textures`` adds a task set that is not digits: synthetic grey textures (blurred white
noise), 600 to train, 200 held out against 200 smoother textures (simpler) and 200 sharper ones
(more complex, where a complexity correction must not lose the anomalies).

    nice -n 10 .venv/bin/python -m benchmarks.image_complexity --data-dir DATA \\
        --digits 0 1 7 --seeds 0 --kinds conv_vae conv_ae --textures --out bench-results/complexity
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402


def tasks(images: np.ndarray, test_normals: np.ndarray, rng: np.random.Generator
          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{task: (X_test, y_test)}`` from held-out normals (n, 1, 28, 28)."""
    from training.detector.image import gaussian_blur

    idx = rng.permutation(len(test_normals))
    half = len(idx) // 2
    normal, other = test_normals[idx[:half]], test_normals[idx[half:]]
    blurred = gaussian_blur(other[:, 0].astype(np.float64), 1.5)[:, None].astype(np.float32)
    flat = np.broadcast_to(other.mean(axis=(1, 2, 3), keepdims=True), other.shape).astype(
        np.float32)
    out = {}
    for name, anomalies in (("blurred", blurred), ("flat", flat)):
        X = np.concatenate([normal, anomalies])
        y = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
        out[name] = (X, y)
    return out


def textures(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 1, 28, 28) grey textures: white noise blurred by ``sigma`` pixels, each image
    standardised to the same contrast (mean 0.5, sd 0.15), so that only its smoothness
    differs."""
    from training.detector.image import gaussian_blur

    z = gaussian_blur(rng.normal(size=(n, 28, 28)), sigma)
    z = (z - z.mean(axis=(1, 2), keepdims=True)) / z.std(axis=(1, 2), keepdims=True)
    return np.clip(0.5 + 0.15 * z, 0, 1)[:, None].astype(np.float32)


def texture_set(seed: int) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """600 training textures (blur sigma 1) and two tasks against 200 held-out ones: smoother
    textures (sigma 2, the simpler images) and sharper ones (sigma 0.5, more complex)."""
    rng = np.random.default_rng(1000 + seed)
    train, normal = textures(600, 1.0, rng), textures(200, 1.0, rng)
    out = {}
    for name, sigma in (("texture: smoother", 2.0), ("texture: sharper", 0.5)):
        X = np.concatenate([normal, textures(200, sigma, rng)])
        out[name] = (X, np.r_[np.zeros(200), np.ones(200)])
    return train, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.image_complexity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BENCH_DATA_DIR",
                                                                        "datasets")))
    p.add_argument("--digits", nargs="*", type=int, default=[0, 1, 7])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--kinds", nargs="*", default=["conv_vae"], choices=["conv_vae", "conv_ae"])
    p.add_argument("--textures", action="store_true",
                   help="also the synthetic texture tasks (smoother and sharper textures)")
    p.add_argument("--out", type=Path, default=Path("bench-results/complexity"))
    args = p.parse_args(argv)
    import torch
    from pyod.models.knn import KNN

    from benchmarks import quality_lib as q
    from benchmarks.mnist import load_mnist
    from training.detector import ImageDetector
    from training.preprocessing.images import png_bytes

    torch.set_num_threads(1)
    rows = []

    def sets():
        """(name, seed, training images, {task: (X, y)}) of every task set asked for."""
        digits = [f"mnist-{d}" for d in args.digits]
        for ds in load_mnist(args.data_dir, digits) if digits else ():
            for seed in args.seeds:
                split = q.protocol_split(ds.y, seed)
                test_normals = ds.X[split.test][ds.y[split.test] == 0]
                yield ds.name, seed, ds.X[split.train], tasks(ds.X, test_normals,
                                                              np.random.default_rng(seed))
        for seed in args.seeds if args.textures else ():
            yield ("textures", seed, *texture_set(seed))

    for name, seed, train, task_sets in sets():
        dets, fit_s = {}, 0.0
        for kind in args.kinds:
            t0 = time.perf_counter()
            dets[kind] = ImageDetector(kind=kind, seed=seed).fit(train)
            fit_s += time.perf_counter() - t0
        flat_train = train.reshape(len(train), -1)
        mu, sd = flat_train.mean(0), np.maximum(flat_train.std(0), 1e-6)
        knn = KNN().fit((flat_train - mu) / sd)
        for task, (X, y) in task_sets.items():
            flat = X.reshape(len(X), -1)
            scores = {f"{kind}:{k}": v for kind, det in dets.items()
                      for k, v in det.raw_scores(X).items()}
            scores.update({
                "knn": knn.decision_function((flat - mu) / sd),
                "png_size": png_bytes(flat, dets[args.kinds[0]].preprocessor_.shape),
                "local_complexity": dets[args.kinds[0]].local_.complexity_of(flat)})
            for method, s in scores.items():
                rows.append({"digit": name, "seed": seed, "task": task, "method": method,
                             "auroc": roc_auc_score(y, s), "fit_s": fit_s})
            print(name, seed, task, {m: round(roc_auc_score(y, s), 3)
                                     for m, s in scores.items()}, flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "results.csv", index=False)
    table = df.pivot_table(index="method", columns="task", values="auroc", aggfunc="mean")
    text = table.round(3).to_string()
    (args.out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
