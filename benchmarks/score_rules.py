"""Score rules compared on the same fits: every score kind of the default VAE, neighbour and
local-density terms in the detector's own preprocessed space, and combinations of them, next to
the PyOD baselines.

Step 1 fits the default VAE once per (dataset, seed) on the protocol split and saves every test
score and, for each, the out-of-fold scores of the training normals (the scores the thresholds
are calibrated on, see ``training/detector/base.py``), which standardise a combination:

    nice -n 10 .venv/bin/python -m benchmarks.score_rules fit --data-dir DATA \\
        --modality all --seeds 0 1 2 --out bench-results/rules

Step 2 tabulates rules (single scores, and means of scores standardised by the median and
interquartile range of their out-of-fold training scores) against the baselines of a
``benchmarks.quality`` run on the same seeds, by group and by size band:

    .venv/bin/python -m benchmarks.score_rules report --out bench-results/rules \\
        --baselines bench-results/results.csv

The neighbour terms, each computed on the training rows leaving the row itself out:
``knn``, the distance to the 5th nearest training row (PyOD's KNN statistic); ``knn_ratio``,
that distance divided by the mean of the same distance of those 5 neighbours (a local density
ratio); ``lof``, scikit-learn's local outlier factor with 20 neighbours.
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
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

BASELINES = ["knn", "lof", "iforest", "ocsvm", "pyod_ae", "pyod_vae", "ecod"]
BANDS = ([0, 500, 3000, 1e9], ["under 500", "500-3,000", "over 3,000"])
K = 5  # neighbours of the knn and knn_ratio terms
LOF_K = 20  # scikit-learn's default


def neighbour_terms(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """``train_<term>`` (each training row against the others) and ``test_<term>`` of the
    neighbour terms, in the space the rows are given in."""
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

    nn = NearestNeighbors(n_neighbors=K + 1).fit(train)
    d_train, i_train = nn.kneighbors(train)  # the row itself first
    d_test, i_test = nn.kneighbors(test, n_neighbors=K)
    kdist = d_train[:, K]
    lof = LocalOutlierFactor(n_neighbors=LOF_K, novelty=True).fit(train)
    return {"train_knn": kdist, "test_knn": d_test[:, -1],
            "train_knn_ratio": kdist / (kdist[i_train[:, 1:]].mean(1) + 1e-12),
            "test_knn_ratio": d_test[:, -1] / (kdist[i_test].mean(1) + 1e-12),
            "train_lof": -lof.negative_outlier_factor_, "test_lof": -lof.score_samples(test)}


def fit(args: argparse.Namespace) -> None:
    """Step 1: one default VAE per (dataset, seed); saves ``<out>/<dataset>_<seed>.npz``."""
    import torch

    from benchmarks import quality_lib as q
    from training import Detector

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    for ds in q.LOADERS[args.modality](args.data_dir, args.datasets):
        for seed in args.seeds:
            path = args.out / f"{ds.name}_{seed}.npz"
            if path.exists():
                continue
            split = q.protocol_split(ds.y, seed)
            train, test = ds.X[split.train], ds.X[split.test]
            t0 = time.perf_counter()
            det = Detector(kind="vae", seed=seed).fit(train)
            fit_s = time.perf_counter() - t0
            scores = {f"test_{k}": v for k, v in det.raw_scores(test).items()}
            scores.update({f"train_{k}": c.scores for k, c in det.calibrations_.items()})
            X_train, _ = det._matrix(train, "train")
            X_test, _ = det._matrix(test, "test")
            scores.update(neighbour_terms(X_train.astype(np.float64),
                                          X_test.astype(np.float64)))
            np.savez(path, y=ds.y[split.test], n_train=len(train), fit_s=fit_s, group=ds.group,
                     **scores)
            print(ds.name, seed, {k[5:]: round(roc_auc_score(ds.y[split.test], v), 3)
                                  for k, v in scores.items() if k.startswith("test_")},
                  flush=True)


def _standardised(f: dict, kind: str) -> np.ndarray:
    q25, q50, q75 = np.quantile(f[f"train_{kind}"], [0.25, 0.5, 0.75])
    return (f[f"test_{kind}"] - q50) / max((q75 - q25) / 1.349, 1e-12)


def _mean_of(*kinds: str):
    return lambda f: np.mean([_standardised(f, k) for k in kinds], axis=0)


RULES = {
    "vae elbo (the default)": lambda f: f["test_elbo"],
    "vae agg_elbo": lambda f: f["test_agg_elbo"],
    "vae recon": lambda f: f["test_recon"],
    "input knn": lambda f: f["test_knn"],
    "input knn_ratio": lambda f: f["test_knn_ratio"],
    "input lof": lambda f: f["test_lof"],
    "mean(elbo, knn)": _mean_of("elbo", "knn"),
    "mean(elbo, knn_ratio)": _mean_of("elbo", "knn_ratio"),
    "mean(elbo, lof)": _mean_of("elbo", "lof"),
    "mean(elbo, knn, knn_ratio)": _mean_of("elbo", "knn", "knn_ratio"),
    "mean(elbo, knn, lof)": _mean_of("elbo", "knn", "lof"),
}


def report(args: argparse.Namespace) -> None:
    """Step 2: markdown tables per group, by size band, best baseline in bold."""
    base = pd.read_csv(args.baselines)
    rows = []
    for path in sorted(args.out.glob("*.npz")):
        dataset, seed = path.stem.rsplit("_", 1)
        f = dict(np.load(path))
        for rule, fn in RULES.items():
            s = fn(f)
            rows.append((dataset, int(seed), rule, roc_auc_score(f["y"], s),
                         average_precision_score(f["y"], s), int(f["n_train"]),
                         str(f.get("group", "all"))))
    ours = pd.DataFrame(rows, columns=["dataset", "seed", "method", "auroc", "ap", "n_train",
                                       "group"])
    for group, part in ours.groupby("group"):
        seeds = sorted(int(s) for s in part.seed.unique())
        n_train = part.groupby("dataset").n_train.first()
        theirs = base[base.seed.isin(seeds) & base.dataset.isin(n_train.index)
                      & base.method.isin(BASELINES)]
        both = pd.concat([part[["dataset", "seed", "method", "auroc", "ap"]],
                          theirs[["dataset", "seed", "method", "auroc", "ap"]]])
        auroc = both.pivot_table(index="dataset", columns="method", values="auroc")
        ap = both.pivot_table(index="dataset", columns="method", values="ap")
        band = pd.cut(n_train.reindex(auroc.index), BANDS[0], labels=BANDS[1])
        present = [b for b in BANDS[1] if (band == b).sum()]
        cols = list(RULES) + BASELINES
        stats = {}
        for m in cols:
            vals = [auroc[m].mean(), ap[m].mean()]
            for b in present:
                idx = band[band == b].index
                vals += [auroc.loc[idx, m].mean(), ap.loc[idx, m].mean()]
            stats[m] = vals
        best = np.max([stats[m] for m in BASELINES], axis=0)
        print(f"\n{group}: {len(auroc)} sets, seeds {seeds}\n")
        print("| rule | AUROC | AP | " + " | ".join(
            f"{b} ({(band == b).sum()}) AUROC | AP" for b in present) + " | above the best |")
        print("|---" * (4 + 2 * len(present)) + "|")
        for m in cols:
            cells = [f"**{v:.3f}**" if m in BASELINES and v == b else f"{v:.3f}"
                     for v, b in zip(stats[m], best, strict=True)]
            above = "" if m in BASELINES else \
                f"{sum(v > b for v, b in zip(stats[m], best, strict=True))}/{len(best)}"
            print(f"| {m} | " + " | ".join(cells) + f" | {above} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.score_rules", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["fit", "report"])
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("BENCH_DATA_DIR",
                                                                        "datasets")))
    p.add_argument("--modality", default="all")
    p.add_argument("--datasets", nargs="*", default=None)
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("bench-results/rules"))
    p.add_argument("--baselines", type=Path, default=Path("bench-results/results.csv"))
    args = p.parse_args(argv)
    (fit if args.step == "fit" else report)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
