"""Detection-quality benchmark CLI: our detectors next to PyOD's, on the one-class protocol.

    nice -n 10 .venv/bin/python -m benchmarks.quality --data-dir DATA \
        --seeds 0 1 2 --out bench-results

Resumable: rows already in ``<out>/results.csv`` are skipped. Writes ``<out>/results.md``.
"""

from __future__ import annotations

import os

# One thread per process: the numbers are then comparable and the machine stays shared.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks import quality_lib as q  # noqa: E402

log = logging.getLogger("benchmarks.quality")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("BENCH_DATA_DIR", "datasets")),
                   help="folder holding adbench/*.npz (default: $BENCH_DATA_DIR or ./datasets)")
    p.add_argument("--modality", default="tabular", choices=sorted(q.LOADERS),
                   help="which kind of datasets to load")
    p.add_argument("--datasets", nargs="*", default=None,
                   help="short names (cardio, Wilt...) or file stems; default: all")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=list(q.METHODS),
                   help="ae, vae (every score kind) or ae:recon, vae:elbo...; knn, lof, "
                        "iforest, ocsvm, pyod_ae, pyod_vae")
    p.add_argument("--params", type=json.loads, default=None,
                   help='JSON Detector parameters for ae/vae, e.g. \'{"n_models": 3}\'')
    p.add_argument("--tag", default="",
                   help="suffix (@tag) naming a variant run with --params")
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="folder for results.csv and results.md")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.md from results.csv without running anything")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("training").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    methods = q.all_methods(args.params, args.tag)
    wanted = q.select(methods, args.methods)
    csv_path = args.out / "results.csv"
    if args.report_only:
        results = q.read_results(csv_path)
    else:
        datasets = q.LOADERS[args.modality](args.data_dir, args.datasets)
        results = q.run_benchmark(datasets, args.seeds, methods, wanted, csv_path)
    table = q.write_report(results, wanted, args.seeds, args.out, args.datasets)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
