"""Detection-quality benchmark CLI: our detectors next to PyOD's, on the one-class protocol.

    nice -n 10 .venv/bin/python -m benchmarks.quality --data-dir DATA \
        --seeds 0 1 2 --out bench-results

Resumable: rows already in ``<out>/results.csv`` are skipped. Writes ``<out>/results.md``:
overall means and ranks, the same per group (tables, embeddings) and size band (training
normals under 500, 500-3,000, over 3,000), and per dataset.

    --modality all          the 12 ADBench tables and the 8 ADBench embedding sets
    --modality mnist_table  one-class MNIST as 784-column tables (needs DATA/mnist)
    --modality mnist_binary the same with each pixel 0 or 1: a wide, sparse binary table
    --modality mnist_sized  the binary table with the digit's height, width and ink count
                            in pixels beside: a few columns hold most of each row's length
    --modality sklearn      small tables that ship with scikit-learn (breast cancer, wine,
                            8x8 digits) as one-class tasks; needs no DATA
    --modality skab_table   SKAB's sensor rows as three 8-column tables (needs DATA/skab)
    --calibration           the thresholds benchmark instead (benchmarks/calibration_lib.py):
                            --methods vae (or vae@tag, vae:elbo), writes calibration.csv/.md
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
                   help="folder holding adbench/*.npz and adbench_embeddings/*.npz "
                        "(default: $BENCH_DATA_DIR or ./datasets)")
    p.add_argument("--modality", default="tabular", choices=sorted(q.LOADERS),
                   help="which kind of datasets to load")
    p.add_argument("--datasets", nargs="*", default=None,
                   help="short names (cardio, Wilt...) or file stems; default: all")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="*", default=list(q.METHODS),
                   help="ae, vae (every score kind) or ae:recon, vae:elbo...; knn, lof, "
                        "iforest, ocsvm, pyod_ae, pyod_vae, ecod")
    p.add_argument("--params", type=json.loads, default=None,
                   help='JSON Detector parameters for ae/vae, e.g. \'{"n_models": 3}\'')
    p.add_argument("--tag", default="",
                   help="suffix (@tag) naming a variant run with --params")
    p.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="folder for results.csv and results.md")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.md from results.csv without running anything")
    p.add_argument("--calibration", action="store_true",
                   help="thresholds benchmark of our detector (--methods vae, vae@tag...): "
                        "observed FPR on the test normals against the conformal interval")
    p.add_argument("--target-fpr", type=float, default=0.01,
                   help="target FPR of the thresholds benchmark (default 0.01)")
    args = p.parse_args(argv)
    if args.calibration and args.methods == list(q.METHODS):
        args.methods = ["vae"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("training").setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    if args.calibration:
        return calibration_main(args)
    methods = q.all_methods(args.params, args.tag)
    wanted = q.select(methods, args.methods)
    csv_path = args.out / "results.csv"
    datasets = load(args, required=not args.report_only)
    groups = {d.name: d.group for d in datasets} if datasets is not None else None
    if args.report_only:
        results = q.read_results(csv_path)
    else:
        results = q.run_benchmark(datasets, args.seeds, methods, wanted, csv_path)
    known = {k: m.columns for k, m in methods.items()}
    table = q.write_report(results, wanted, args.seeds, args.out, args.datasets, groups, known)
    print(table)
    return 0


def load(args: argparse.Namespace, required: bool = True) -> list[q.Dataset] | None:
    """The datasets of ``--modality``; None when they are not there and not ``required``
    (a report from the CSV alone then has no per-group tables)."""
    try:
        return q.LOADERS[args.modality](args.data_dir, args.datasets)
    except FileNotFoundError as e:
        if required:
            raise
        log.warning("%s: no per-group or per-band tables", e)
        return None


def calibration_main(args: argparse.Namespace) -> int:
    from benchmarks import calibration_lib as c

    csv_path = args.out / "calibration.csv"
    datasets = load(args, required=not args.report_only)
    if args.report_only:
        results = c.read_results(csv_path)
    else:
        for m in args.methods:
            if m.split("@")[0].split(":")[0] in q.BASELINES:
                raise SystemExit(f"--calibration runs our detectors only, not {m!r}")
        results = c.run_calibration(datasets, args.seeds, args.methods, args.params, args.tag,
                                    csv_path, args.target_fpr)
    names = [d.name for d in datasets] if datasets is not None else None
    if names is None and args.datasets:
        names = list(args.datasets)
    text = c.write_report(results, args.methods, args.seeds, args.out, names, args.params,
                          args.tag, args.target_fpr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
