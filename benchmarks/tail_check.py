"""Does a threshold extrapolated by a fitted tail keep a 1% target on few calibration scores?

Real score distributions stand in for fresh normals: the out-of-fold training scores saved by
``benchmarks.score_rules fit`` (one file per dataset and seed, thousands of scores on the large
sets). For each set with at least ``--min-scores`` of them, ``--draws`` times: n scores drawn
at random calibrate a :class:`training.calibration.ScoreCalibration` (too few for 1% by
exchangeability, so the tail is fitted), and the realised false-positive rate is the share of
the other scores above its threshold. Compared with the target and with ``1 / (n + 1)``, what a
threshold at the largest calibration score gives on average.

    .venv/bin/python -m benchmarks.tail_check --fits bench-results/rules --kinds elbo knn
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np


def realised(scores: np.ndarray, n: int, draws: int, target: float,
             rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(draws,) realised rates of thresholds calibrated on n of ``scores``, and the share of
    draws whose threshold came from the tail."""
    from training.calibration import ScoreCalibration

    rates, tails = np.empty(draws), 0
    for i in range(draws):
        order = rng.permutation(len(scores))
        cal = ScoreCalibration.fit(scores[order[:n]], target)
        rates[i] = np.mean(scores[order[n:]] > cal.threshold)
        tails += cal.method == "tail"
    return rates, tails / draws


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tail_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fits", type=Path, default=Path("bench-results/rules"),
                   help="folder of benchmarks.score_rules fit files (<dataset>_<seed>.npz)")
    p.add_argument("--kinds", nargs="*", default=["elbo", "knn"],
                   help="score kinds whose out-of-fold training scores to use")
    p.add_argument("--sizes", nargs="*", type=int, default=[20, 35, 50, 75, 98])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--min-scores", type=int, default=1000)
    p.add_argument("--target", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # one warning per draw: too few scores, as intended
    rng = np.random.default_rng(args.seed)
    files = sorted(args.fits.glob("*.npz"))
    print(f"target {args.target}, {args.draws} draws per set and size\n")
    print("| score | n | sets | tail used | mean realised FPR | worst set's mean | "
          "90th percentile (mean over sets) | 1 / (n + 1) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        sets = []
        for f in files:
            with np.load(f) as d:
                key = f"train_{kind}"
                if key in d and d[key].size >= args.min_scores:
                    sets.append(np.asarray(d[key], dtype=np.float64))
        if not sets:
            print(f"| {kind} | - | 0 | | | | | |")
            continue
        for n in args.sizes:
            per_set = [realised(s, n, args.draws, args.target, rng) for s in sets]
            means = np.array([r.mean() for r, _ in per_set])
            p90 = np.mean([np.quantile(r, 0.9) for r, _ in per_set])
            tail = np.mean([t for _, t in per_set])
            print(f"| {kind} | {n} | {len(sets)} | {tail:.0%} | {means.mean():.4f} | "
                  f"{means.max():.4f} | {p90:.4f} | {1 / (n + 1):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
