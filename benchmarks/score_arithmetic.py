"""Scoring arithmetic per record: the scores of a fitted detector on an in-memory matrix.

Fits each configuration once on a demo-shaped table (the breast-cancer columns, rows resampled
with a little noise so that the aggregate prior can hold its full count of training codes),
then times ``_raw_from_matrix`` (every score kind, no reading, preprocessing, p-values or
output) on the same preprocessed rows, the configurations alternated round by round so that
outside load hits them alike. One torch thread.

    python benchmarks/score_arithmetic.py [--rows 100000] [--rounds 5] [--train-rows 5000]
        [--config 'vae:{"mc_samples": 8}@1024' ...]

A configuration is ``KIND:PARAMS@PRIOR``: the detector kind, its JSON parameters, and the
number of training codes in the aggregate prior (``AGGREGATE_PRIOR_ROWS``; omitted: the
library's). The first configuration is the reference of the ratios.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DEFAULT_CONFIGS = ['vae:{"mc_samples": 8}@1024', "vae:{}", "ae:{}"]


def demo_table(n: int, seed: int = 0):
    """``n`` breast-cancer-shaped rows: the demo's rows resampled, numeric columns jittered by
    5% of their standard deviation."""
    from pipelines.demo.run import load_demo_frame

    base = load_demo_frame()
    rng = np.random.default_rng(seed)
    df = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
    num = [c for c in df.columns if c not in ("id", "malignant")]
    df[num] = df[num] + rng.normal(0, 0.05, (n, len(num))) * base[num].std().to_numpy()
    df["id"] = np.arange(n)
    return df


def fit(config: str, train):
    """A detector fitted on the normal rows of ``train`` for ``KIND:PARAMS@PRIOR``."""
    from training import Detector
    from training.detector import base

    spec, _, prior = config.partition("@")
    kind, _, params = spec.partition(":")
    saved = base.AGGREGATE_PRIOR_ROWS
    if prior:
        base.AGGREGATE_PRIOR_ROWS = int(prior)
    try:
        det = Detector(kind=kind, id_column="id", label_column="malignant", max_epochs=5,
                       **json.loads(params or "{}"))
        det.fit(train[train["malignant"] == 0])
    finally:
        base.AGGREGATE_PRIOR_ROWS = saved
    return det


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-rows", type=int, default=5000)
    ap.add_argument("--config", nargs="+", default=DEFAULT_CONFIGS)
    args = ap.parse_args()
    import torch

    from pipelines.cli.text import format_table

    torch.set_num_threads(1)
    dets = {c: fit(c, demo_table(args.train_rows)) for c in args.config}
    X, _ = dets[args.config[0]].preprocessor_.transform(demo_table(args.rows, seed=1))
    best = dict.fromkeys(dets, float("inf"))
    for _ in range(args.rounds):
        for c, det in dets.items():
            t = time.perf_counter()
            det._raw_from_matrix(X)
            best[c] = min(best[c], time.perf_counter() - t)
    ref = best[args.config[0]]
    rows = []
    for c, det in dets.items():
        prior = det.prior_["mu"].shape[1] if det.prior_ is not None else 0
        rows.append({"config": c, "members": det.params.n_models,
                     "draws": det.params.mc_samples if "elbo" in det.score_kinds else 0,
                     "prior codes": prior, "rows/s": f"{args.rows / best[c]:,.0f}",
                     "us/record": f"{best[c] / args.rows * 1e6:.2f}",
                     "time vs first": f"{best[c] / ref:.3f}"})
    print(format_table(rows, list(rows[0])))
    print(f"best of {args.rounds} alternated rounds, {args.rows:,} rows, one torch thread")


if __name__ == "__main__":
    main()
