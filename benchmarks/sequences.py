"""Sequence detectors on SKAB with the leaderboard's protocol, beside same-run baselines.

    nice -n 10 .venv/bin/python -m benchmarks.sequences --skab ../shared/datasets/skab \
        --seeds 0 1 2 --out bench-results/sequences

Protocol (SKAB's outlier-detection leaderboard): for every experiment file of valve1, valve2
and other, fit on its first 400 rows (no shuffling) and score the rest; binary F1, FAR (false
alarms / normal rows) and MAR (missed anomalies / anomalous rows) over all scored rows of a
group together (label ``anomaly`` = 1). No choice sees a test label: each method's threshold is
its own, from held-out rows of the 400 normal ones, at the detector's target FPR: the first
``FIT_ROWS`` rows fit, the windows ending in the last ``400 - FIT_ROWS`` calibrate (their first
steps may reach into the fitted rows; their last step never does).

Methods: ``seq_ae`` / ``seq_vae`` (our detectors, parameters by ``--params``), ``seq_ae_keep``
(``seq_ae`` keeping the levels of the slow channels, as before they were centred), ``pca_t2``
(Hotelling's T² on the principal components of the standardised rows, 95% of the variance),
``iforest`` (scikit-learn's IsolationForest on the same windows as our default model).

    --quick        valve1 only, one seed: a minute or two
    --groups       which groups (valve1 valve2 other)
    --methods      which methods
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger("benchmarks.sequences")

TRAIN_ROWS = 400  # the leaderboard's training rows per file
FIT_ROWS = 300  # of those, fitted; the rest calibrate the threshold
GROUPS = ("valve1", "valve2", "other")
LABEL, DROP = "anomaly", ("changepoint",)
TIME = "datetime"


def load_skab(root: Path, groups: tuple[str, ...] = GROUPS) -> dict[str, list[tuple[str,
                                                                                pd.DataFrame]]]:
    """Per group, ``(file name, frame)`` for every experiment file, in file-name order."""
    out = {}
    for g in groups:
        files = sorted((root / g).glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
        if not files:
            raise SystemExit(f"no SKAB files under {root / g}")
        out[g] = [(f.name, pd.read_csv(f, sep=";").drop(columns=list(DROP))) for f in files]
    return out


# -- methods: (frame, seed) -> (test scores, threshold) ------------------------------------------
Method = Callable[[pd.DataFrame, int], tuple[np.ndarray, float]]


def detector_method(kind: str, params: dict[str, Any]) -> Method:
    """Our SequenceDetector with its own calibrated threshold."""
    from training.detector import SequenceDetector

    def run(df: pd.DataFrame, seed: int) -> tuple[np.ndarray, float]:
        det = SequenceDetector(label_column=LABEL, kind=kind, time_column=TIME, seed=seed,
                               **params)
        det.fit(df.iloc[:FIT_ROWS])
        w = det.window_
        det.calibrate(df.iloc[FIT_ROWS - w + 1 : TRAIN_ROWS])
        scored = det.score_series(df)
        return scored["score"].to_numpy()[TRAIN_ROWS:], det.thresholds_[det.primary_score]
    return run


def _channels(df: pd.DataFrame) -> np.ndarray:
    x = df.drop(columns=[TIME, LABEL]).to_numpy(dtype=np.float64)
    mean, std = x[:FIT_ROWS].mean(0), x[:FIT_ROWS].std(0)
    return (x - mean) / np.where(std > 1e-12, std, 1.0)


def _conformal(cal: np.ndarray, target: float = 0.01) -> float:
    from training.calibration import ScoreCalibration

    return float(ScoreCalibration.fit(cal, target).threshold)


def pca_t2(df: pd.DataFrame, seed: int) -> tuple[np.ndarray, float]:
    """Hotelling's T² of each row on the components holding 95% of the variance."""
    from sklearn.decomposition import PCA

    z = _channels(df)
    pca = PCA(n_components=0.95, svd_solver="full", random_state=seed).fit(z[:FIT_ROWS])
    t2 = ((pca.transform(z) ** 2) / pca.explained_variance_).sum(axis=1)
    return t2[TRAIN_ROWS:], _conformal(t2[FIT_ROWS:TRAIN_ROWS])


def iforest(window: int) -> Method:
    """IsolationForest on flattened windows (a row's score: its window's, as ours)."""
    def run(df: pd.DataFrame, seed: int) -> tuple[np.ndarray, float]:
        from sklearn.ensemble import IsolationForest

        z = _channels(df)
        win = np.lib.stride_tricks.sliding_window_view(z, window, axis=0).reshape(
            len(z) - window + 1, -1)
        s = np.full(len(z), np.nan)
        model = IsolationForest(random_state=seed).fit(win[: FIT_ROWS - window + 1])
        s[window - 1 :] = -model.score_samples(win)
        return s[TRAIN_ROWS:], _conformal(s[FIT_ROWS:TRAIN_ROWS])
    return run


def rates(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Binary F1, FAR and MAR (anomaly = 1)."""
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    tn = float(np.sum(~pred & (y == 0)))
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"f1": f1, "far": fp / (fp + tn) if fp + tn else 0.0,
            "mar": fn / (fn + tp) if fn + tp else 0.0}


def run(data: dict[str, list[tuple[str, pd.DataFrame]]], methods: dict[str, Method],
        seeds: list[int]) -> pd.DataFrame:
    """One row per (method, seed, group) and per (method, seed) over all groups."""
    rows = []
    for name, method in methods.items():
        for seed in seeds:
            all_y, all_p, total_fit = [], [], 0.0
            for group, files in data.items():
                ys, ps, seconds = [], [], 0.0
                for _name, df in files:
                    t0 = time.perf_counter()
                    scores, threshold = method(df, seed)
                    seconds += time.perf_counter() - t0
                    ys.append(df[LABEL].to_numpy()[TRAIN_ROWS:].astype(int))
                    ps.append(np.nan_to_num(scores, nan=-np.inf) > threshold)
                y, p = np.concatenate(ys), np.concatenate(ps)
                rows.append({"method": name, "seed": seed, "group": group, "files": len(files),
                             "seconds": seconds, **rates(y, p)})
                log.info("%s seed %d %s: %s", name, seed, group, rows[-1])
                all_y.append(y)
                all_p.append(p)
                total_fit += seconds
            rows.append({"method": name, "seed": seed, "group": "all",
                         "files": sum(len(f) for f in data.values()), "seconds": total_fit,
                         **rates(np.concatenate(all_y), np.concatenate(all_p))})
    return pd.DataFrame(rows)


def _ms(r: pd.DataFrame, col: str, pct: bool = False) -> str:
    k = 100 if pct else 1
    m, s = r[col].mean() * k, r[col].std(ddof=0) * k
    return f"{m:.1f}% ± {s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def to_markdown(results: pd.DataFrame) -> str:
    """Mean ± std over seeds, per method and group."""
    lines = ["| method | group | files | F1 | FAR | MAR | seconds (fit + score, all files) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (method, group), r in results.groupby(["method", "group"], sort=False):
        lines.append(f"| {method} | {group} | {int(r['files'].iloc[0])} | {_ms(r, 'f1')} | "
                     f"{_ms(r, 'far', True)} | {_ms(r, 'mar', True)} | "
                     f"{r['seconds'].mean():.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sequences", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skab", type=Path, default=Path("../shared/datasets/skab"))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--groups", nargs="*", default=list(GROUPS))
    p.add_argument("--methods", nargs="*", default=["seq_ae", "pca_t2", "iforest"])
    p.add_argument("--params", type=json.loads, default={},
                   help='JSON SequenceDetector parameters, e.g. \'{"window": 60}\'')
    p.add_argument("--quick", action="store_true", help="valve1 only, seed 0")
    p.add_argument("--out", type=Path, default=None, help="folder for results.csv/.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(1)
    if args.quick:
        args.groups, args.seeds = ["valve1"], [0]
    data = load_skab(args.skab, tuple(args.groups))
    window = int(args.params.get("window") or 0)
    if not window:  # the baseline's windows: those our default chooses on the first file
        from training.preprocessing.sequences import choose_window

        first = _channels(next(iter(data.values()))[0][1])[:FIT_ROWS]
        window = choose_window(first, FIT_ROWS)
    known: dict[str, Method] = {
        "seq_ae": detector_method("seq_ae", args.params),
        "seq_vae": detector_method("seq_vae", args.params),
        "seq_ae_keep": detector_method("seq_ae", {**args.params, "slow_channels": "keep"}),
        "pca_t2": pca_t2, "iforest": iforest(window)}
    results = run(data, {m: known[m] for m in args.methods}, args.seeds)
    table = to_markdown(results)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.out / "results.csv", index=False)
        (args.out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
