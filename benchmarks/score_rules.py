"""Score rules compared on the same fits: every score kind of the default VAE (with the
``knn`` score, ``neighbours`` = 5) and combinations of them, next to the PyOD baselines.

Step 1 fits the VAE once per (dataset, seed) on the protocol split and saves every test score
and the scores of the detector's own validation normals (which standardise a combination):

    nice -n 10 .venv/bin/python -m benchmarks.score_rules fit --data-dir DATA \\
        --modality all --seeds 0 1 2 --out bench-results/rules

Step 2 tabulates rules (single score kinds, and means of validation-standardised kinds) against
the baselines of a ``benchmarks.quality`` run on the same seeds, by group and by size band:

    .venv/bin/python -m benchmarks.score_rules report --out bench-results/rules \\
        --baselines bench-results/results.csv
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


def fit(args: argparse.Namespace) -> None:
    """Step 1: one VAE per (dataset, seed); saves ``<out>/<dataset>_<seed>.npz``."""
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
            det = Detector(kind="vae", seed=seed, neighbours=5).fit(train)
            fit_s = time.perf_counter() - t0
            # the validation rows fit() held out: the same seeded permutation
            order = np.random.default_rng(seed).permutation(len(train))
            n_val = max(2, int(round(det.params.validation_fraction * len(train))))
            val = det.raw_scores(train[order[:n_val]])
            scores = det.raw_scores(test)
            np.savez(path, y=ds.y[split.test], n_train=len(train), fit_s=fit_s, group=ds.group,
                     **{f"test_{k}": v for k, v in scores.items()},
                     **{f"val_{k}": v for k, v in val.items()})
            print(ds.name, seed, {k: round(roc_auc_score(ds.y[split.test], v), 3)
                                  for k, v in scores.items()}, flush=True)


def _standardised(f: dict, kind: str) -> np.ndarray:
    q25, q50, q75 = np.quantile(f[f"val_{kind}"], [0.25, 0.5, 0.75])
    return (f[f"test_{kind}"] - q50) / max((q75 - q25) / 1.349, 1e-12)


RULES = {
    "elbo": lambda f: f["test_elbo"],
    "agg_elbo": lambda f: f["test_agg_elbo"],
    "recon": lambda f: f["test_recon"],
    "knn": lambda f: f["test_knn"],
    "mean(agg_elbo, knn)": lambda f: (_standardised(f, "agg_elbo") + _standardised(f, "knn")) / 2,
    "mean(elbo, knn)": lambda f: (_standardised(f, "elbo") + _standardised(f, "knn")) / 2,
    "mean(elbo, recon)": lambda f: (_standardised(f, "elbo") + _standardised(f, "recon")) / 2,
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
            rows.append((dataset, int(seed), f"vae {rule}", roc_auc_score(f["y"], s),
                         average_precision_score(f["y"], s), int(f["n_train"]),
                         str(f.get("group", "all"))))
    ours = pd.DataFrame(rows, columns=["dataset", "seed", "method", "auroc", "ap", "n_train",
                                       "group"])
    for group, part in ours.groupby("group"):
        seeds = sorted(part.seed.unique())
        n_train = part.groupby("dataset").n_train.first()
        theirs = base[base.seed.isin(seeds) & base.dataset.isin(n_train.index)
                      & base.method.isin(BASELINES)]
        both = pd.concat([part[["dataset", "seed", "method", "auroc", "ap"]],
                          theirs[["dataset", "seed", "method", "auroc", "ap"]]])
        auroc = both.pivot_table(index="dataset", columns="method", values="auroc")
        ap = both.pivot_table(index="dataset", columns="method", values="ap")
        band = pd.cut(n_train.reindex(auroc.index), *BANDS)
        present = [b for b in BANDS[1] if (band == b).sum()]
        cols = [f"vae {r}" for r in RULES] + BASELINES
        stats = {}
        for m in cols:
            vals = [auroc[m].mean(), ap[m].mean()]
            for b in present:
                idx = band[band == b].index
                vals += [auroc.loc[idx, m].mean(), ap.loc[idx, m].mean()]
            stats[m] = vals
        best = np.max([stats[m] for m in BASELINES], axis=0)
        print(f"\n{group}: {len(auroc)} sets, seeds {seeds}\n")
        print("| method | AUROC | AP | " + " | ".join(
            f"{b} ({(band == b).sum()}) AUROC | AP" for b in present) + " |")
        print("|---" * (3 + 2 * len(present)) + "|")
        for m in cols:
            cells = [f"**{v:.3f}**" if m in BASELINES and v == b else f"{v:.3f}"
                     for v, b in zip(stats[m], best, strict=True)]
            print(f"| {m} | " + " | ".join(cells) + " |")


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
