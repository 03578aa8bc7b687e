"""One-class MNIST: our convolutional detectors next to PyOD's, on the shared protocol.

Each digit in turn is the normal class and every other digit an anomaly (ten datasets); the
MNIST test set (10,000 images) is split by :func:`benchmarks.quality_lib.protocol_split`, so
600 normal images train and 400 normals plus 9,000 anomalies test. Pixels are scaled to [0, 1];
our detectors read the 28x28 images, the baselines the same pixels flattened to 784 values.
Default settings only: nothing is tuned per digit.

    nice -n 10 .venv/bin/python -m benchmarks.mnist --data-dir DATA \\
        --seeds 0 1 2 --out bench-results/mnist

Resumable: rows already in ``<out>/results.csv`` are skipped. Writes ``<out>/results.md``.
"""

from __future__ import annotations

import os

# One thread per process: the numbers are then comparable and the machine stays shared.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import quality_lib as q  # noqa: E402

log = logging.getLogger("benchmarks.mnist")

BASELINES = ("pyod_ae", "iforest", "knn", "lof")
METHODS = ("conv_ae", "conv_vae", *BASELINES)


def load_mnist(data_dir: Path, names: Iterable[str] | None = None) -> list[q.Dataset]:
    """Ten one-class datasets ``mnist-<digit>`` from the MNIST test set under ``data_dir``.

    ``X`` is (10000, 1, 28, 28) float32 in [0, 1], shared by all ten; ``y`` is 1 where the
    digit is not the dataset's normal digit.
    """
    from training.data.images import load_images

    folder = data_dir / "mnist" if (data_dir / "mnist").is_dir() else data_dir
    data, _ = load_images(folder / "t10k-images-idx3-ubyte.gz")
    wanted = {n.lower() for n in names} if names else None
    out = []
    for digit in range(10):
        name = f"mnist-{digit}"
        if wanted is None or name in wanted or str(digit) in wanted:
            out.append(q.Dataset(name, data.images, (data.classes != digit).astype(int),
                                 modality="image"))
    return out


def image_method(kind: str) -> q.Method:
    """An ImageDetector of ``kind`` with default parameters; one column per score kind."""
    from training.detector.image_params import ImageDetectorParams

    kinds = ImageDetectorParams(kind=kind).score_kinds

    def run(train_raw, train_std, test_raw, test_std, seed):
        from training.detector.image import ImageDetector

        det = ImageDetector(kind=kind, seed=seed)
        t0 = time.perf_counter()
        det.fit(train_raw)
        t1 = time.perf_counter()
        raw = det.raw_scores(test_raw)
        return {f":{k}": raw[k] for k in kinds}, t1 - t0, time.perf_counter() - t1

    return q.Method(kind, tuple(f"{kind}:{k}" for k in kinds), run, modalities=("image",))


def on_pixels(method: q.Method) -> q.Method:
    """A tabular baseline fed the flattened [0, 1] pixels (the protocol's MNIST preprocessing)."""
    def run(train_raw, train_std, test_raw, test_std, seed):
        train = train_raw.reshape(len(train_raw), -1)
        test = test_raw.reshape(len(test_raw), -1)
        return method.run(train, train, test, test, seed)

    return dataclasses.replace(method, run=run, modalities=("image",))


def all_methods() -> dict[str, q.Method]:
    """Our two image kinds and the pixel baselines, by name."""
    tabular = q.all_methods()
    methods = {k: image_method(k) for k in ("conv_ae", "conv_vae")}
    methods.update({k: on_pixels(tabular[k]) for k in BASELINES})
    return methods


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mnist", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("BENCH_DATA_DIR", "datasets")),
                   help="folder holding mnist/t10k-images-idx3-ubyte.gz and the labels "
                   "(default: $BENCH_DATA_DIR or ./datasets)")
    p.add_argument("--digits", nargs="*", default=None, help="normal digits; default: all ten")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=list(METHODS),
                   help="conv_ae, conv_vae (every score kind) or conv_vae:elbo...; "
                        f"baselines {', '.join(BASELINES)}")
    p.add_argument("--out", type=Path, default=Path("bench-results/mnist"),
                   help="folder for results.csv and results.md")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.md from results.csv without running anything")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("training").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    methods = all_methods()
    wanted = q.select(methods, args.methods)
    csv_path = args.out / "results.csv"
    names = [f"mnist-{d}" for d in args.digits] if args.digits else None
    if args.report_only:
        results = q.read_results(csv_path)
    else:
        results = q.run_benchmark(load_mnist(args.data_dir, names), args.seeds, methods, wanted,
                                  csv_path)
    results = results[results.seed.isin(args.seeds)]
    if names:
        results = results[results.dataset.isin(names)]
    columns = [c for cols in wanted.values() for c in cols]
    table = q.to_markdown(q.summarize(results, columns))
    (args.out / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
