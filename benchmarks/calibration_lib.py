"""Thresholds benchmark: does "1% false alarms" mean 1% on the protocol's test normals?

For our Detector, on each (dataset, seed) of the one-class protocol
(:func:`benchmarks.quality_lib.protocol_split`):

1. the n training normals are cut like the product cuts a training job's normal data
   (:func:`pipelines.train.splits.cut`, no labels, ``calibration_fraction`` 0.2): ``fit``
   rows train the Detector, ``calibration`` rows (n_cal of them) set its thresholds at the
   target FPR; a cross-fitting Detector (an ensemble, by default) fits on all n and
   calibrates on all of them (n_cal = n);
2. the m test normals are flagged with the calibrated Detector (``is_anomaly``, the primary
   score); the observed FPR is the flagged fraction;
3. the reference: an exact conformal threshold calibrated on all n training normals, at
   l = floor(target * n) allowed exceedances, has FPR ~ Beta(l + 1, n - l); the number of
   flagged test normals is then Beta-binomial(m, l + 1, n - l). Its 2.5% and 97.5% quantiles
   over m are the 95% interval the observed FPR should fall in. The same interval for n_cal
   (the product's own calibration set) is reported beside it.

Resumable: rows already in ``<out>/calibration.csv`` are skipped. Writes
``<out>/calibration.md``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import quality_lib as q

log = logging.getLogger(__name__)

EVAL_FRACTION = 0.2
CALIBRATION_FRACTION = 0.2
LEVEL = 0.95
FIELDS = ["dataset", "group", "seed", "method", "target_fpr", "primary", "n", "n_fit", "n_cal",
          "m", "flagged", "fpr", "lo_all", "hi_all", "lo_cal", "hi_cal", "mean_all", "mean_cal",
          "achievable_fpr", "fpr_by_kind", "fit_s", "calibrate_s", "score_s"]


@dataclass
class CutConfig:
    """What :func:`pipelines.train.splits.cut` reads from a training configuration."""

    seed: int
    eval_fraction: float = EVAL_FRACTION
    calibration_fraction: float = CALIBRATION_FRACTION


def conformal_interval(n: int, m: int, target: float, level: float = LEVEL
                       ) -> tuple[float, float, float]:
    """(low, high, mean) FPR on m fresh normals of an exact conformal threshold from n normals.

    The threshold allows l = floor(target * n) calibration scores above it, so its FPR is
    Beta(l + 1, n - l) and the flagged count of m normals Beta-binomial(m, l + 1, n - l).
    """
    from scipy.stats import betabinom

    l_ = int(math.floor(target * n + 1e-9))  # as training.calibration.threshold_at_fpr
    a, b = l_ + 1, n - l_
    tail = (1.0 - level) / 2.0
    dist = betabinom(m, a, b)
    return float(dist.ppf(tail)) / m, float(dist.ppf(1.0 - tail)) / m, a / (a + b)


def achievable_fpr(det: Any) -> float | None:
    """The FPR the Detector says its calibration can achieve, where it exposes one.

    Looks at ``achievable_fpr_`` (a number, or a mapping by score kind), then at the primary
    score's calibration object (attribute or ``to_dict()`` key ``achievable_fpr``).
    """
    primary = getattr(det, "primary_score", None)

    def pick(v: Any) -> float | None:
        if isinstance(v, dict):
            v = v.get(primary, next(iter(v.values()), None) if v else None)
        try:
            return None if v is None else float(v)
        except (TypeError, ValueError):
            return None

    value = pick(getattr(det, "achievable_fpr_", None))
    if value is not None:
        return value
    cal = (getattr(det, "calibrations_", None) or {}).get(primary)
    if cal is None:
        return None
    for name in ("achievable_fpr", "achievable_fpr_"):
        value = pick(getattr(cal, name, None))
        if value is not None:
            return value
    try:
        d = cal.to_dict() if hasattr(cal, "to_dict") else dict(cal)
    except (TypeError, ValueError):
        return None
    return pick(d.get("achievable_fpr"))


def _flags(det: Any, data: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Primary ``is_anomaly`` flags, and the flagged fraction of every score kind."""
    cols = det.score_columns(data) if hasattr(det, "score_columns") else None
    if cols is None:
        return np.asarray(det.predict(data), dtype=bool), {}
    flags = np.asarray(cols["is_anomaly"], dtype=bool)
    by_kind: dict[str, float] = {}
    thresholds = getattr(det, "thresholds_", None) or {}
    for k, t in thresholds.items():
        s = cols.get(f"score_{k}")
        if s is not None:
            by_kind[k] = float(np.mean(np.asarray(s) > t))
    return flags, by_kind


def parse_method(name: str, params: dict[str, Any] | None, tag: str
                 ) -> tuple[str, str, dict[str, Any]]:
    """``vae``, ``vae@tag`` or ``vae:elbo`` -> (kind, column name, Detector parameters).

    ``:<score kind>`` makes that score kind the primary one.
    """
    head, _, name_tag = name.partition("@")
    kind, _, score = head.partition(":")
    p = dict(params or {})
    if score:
        p["primary_score"] = score
    tag = name_tag or tag
    return kind, f"{kind}{':' + score if score else ''}{'@' + tag if tag else ''}", p


def run_one(ds: q.Dataset, seed: int, kind: str, params: dict[str, Any], target: float
            ) -> dict[str, Any]:
    """One (dataset, seed): fit, calibrate and flag like the product; the reference intervals."""
    from pipelines.train.splits import cut
    from training import Detector

    split = q.protocol_split(ds.y, seed)
    train = ds.X[split.train].reshape(len(split.train), -1)
    test_normals = ds.X[split.test][ds.y[split.test] == 0]
    test_normals = test_normals.reshape(len(test_normals), -1)
    n, m = len(train), len(test_normals)
    det = Detector(kind=kind, **{"seed": seed, "target_fpr": target, **params})
    c = cut(None, n, CutConfig(seed=seed), "bench", hold_out=not det.calibrated_by_fit)
    t0 = time.perf_counter()
    det.fit(train[c.fit])
    t1 = time.perf_counter()
    if not det.calibrated_by_fit:
        det.calibrate(train[c.calibration])
    t2 = time.perf_counter()
    flags, by_kind = _flags(det, test_normals)
    t3 = time.perf_counter()
    n_cal = int(det.calibrations_[det.primary_score].scores.size)
    lo_all, hi_all, mean_all = conformal_interval(n, m, target)
    lo_cal, hi_cal, mean_cal = conformal_interval(n_cal, m, target)
    return {
        "dataset": ds.name, "group": ds.group, "seed": seed, "target_fpr": target,
        "primary": str(getattr(det, "primary_score", "")), "n": n, "n_fit": len(c.fit),
        "n_cal": n_cal, "m": m, "flagged": int(flags.sum()), "fpr": round(float(flags.mean()), 6),
        "lo_all": round(lo_all, 6), "hi_all": round(hi_all, 6), "lo_cal": round(lo_cal, 6),
        "hi_cal": round(hi_cal, 6), "mean_all": round(mean_all, 6),
        "mean_cal": round(mean_cal, 6), "achievable_fpr": achievable_fpr(det),
        "fpr_by_kind": json.dumps({k: round(v, 6) for k, v in by_kind.items()}),
        "fit_s": round(t1 - t0, 3), "calibrate_s": round(t2 - t1, 3),
        "score_s": round(t3 - t2, 3),
    }


def read_results(path: Path) -> pd.DataFrame:
    """The calibration CSV, or an empty frame with the right columns."""
    if path.is_file() and path.stat().st_size:
        return pd.read_csv(path)
    return pd.DataFrame(columns=FIELDS)


def run_calibration(datasets: list[q.Dataset], seeds: Iterable[int], methods: Iterable[str],
                    params: dict[str, Any] | None, tag: str, out_csv: Path,
                    target: float = 0.01) -> pd.DataFrame:
    """Every (dataset, seed, method) not yet in ``out_csv``, appended as it finishes."""
    done = {(r.dataset, int(r.seed), r.method, float(r.target_fpr))
            for r in read_results(out_csv).itertuples()}
    parsed = [parse_method(m, params, tag) for m in methods]
    with q.appending_rows(out_csv, FIELDS) as writer:
        for ds in datasets:
            for seed in seeds:
                for kind, name, p in parsed:
                    if (ds.name, seed, name, target) in done:
                        continue
                    try:
                        row = run_one(ds, seed, kind, p, target)
                    except Exception:  # noqa: BLE001 - one failing run must not stop the rest
                        log.exception("%s seed %d: %s FAILED", ds.name, seed, name)
                        continue
                    row["method"] = name
                    writer.writerow(row)
                    log.info("%-20s seed %d %-10s n %5d n_cal %4d m %5d FPR %.4f "
                             "all-n [%.4f, %.4f] n_cal [%.4f, %.4f] fit %.1fs",
                             ds.name, seed, name, row["n"], row["n_cal"], row["m"], row["fpr"],
                             row["lo_all"], row["hi_all"], row["lo_cal"], row["hi_cal"],
                             row["fit_s"])
    return read_results(out_csv)


def _where(fpr: float, lo: float, hi: float) -> str:
    return "below" if fpr < lo else "above" if fpr > hi else "inside"


def _fractions(r: pd.DataFrame, lo: str, hi: str) -> dict[str, float]:
    where = [_where(f, a, b) for f, a, b in zip(r.fpr, r[lo], r[hi], strict=True)]
    n = max(len(where), 1)
    return {w: where.count(w) / n for w in ("inside", "above", "below")}


def to_markdown(r: pd.DataFrame) -> str:
    """Per method: summary (fractions inside / above / below, mean FPR by group and band), then
    one row per (dataset, seed)."""
    if r.empty:
        return "No calibration results.\n"
    f = q._fmt
    r = r.copy()
    r["band"] = [q.band_of(float(n)) for n in r.n]
    targets = sorted(r.target_fpr.unique())
    lines = [f"Thresholds at target FPR {', '.join(f'{t:g}' for t in targets)}, seeds "
             f"{sorted(int(s) for s in r.seed.unique())}. The Detector fits on the product's "
             f"fit split of the n training normals and calibrates on its calibration split "
             f"(n_cal; pipelines.train.splits.cut, calibration_fraction "
             f"{CALIBRATION_FRACTION}), or, cross-fitting, on all n (n_cal = n); observed "
             "FPR = flagged fraction (is_anomaly) of the m test normals. Intervals: the "
             f"{LEVEL:.0%} Beta-binomial interval of the FPR on m normals of an exact conformal "
             "threshold calibrated on all n training normals (all-n) or on n_cal normals."]

    def summary_row(label: str, sub: pd.DataFrame) -> str:
        a, c = _fractions(sub, "lo_all", "hi_all"), _fractions(sub, "lo_cal", "hi_cal")
        return (f"| {label} | {len(sub)} | {sub.dataset.nunique()} | {a['inside']:.0%} | "
                f"{a['above']:.0%} | {a['below']:.0%} | {c['inside']:.0%} | {c['above']:.0%} | "
                f"{c['below']:.0%} | {f(sub.fpr.mean(), 4)} | {f(sub.fpr.max(), 4)} | "
                f"{f(sub.mean_cal.mean(), 4)} |")

    for method in dict.fromkeys(r.method):
        rm = r[r.method == method]
        primary = ", ".join(str(p) for p in dict.fromkeys(rm.primary.dropna()))
        lines += ["", f"### {method}" + (f" (is_anomaly by {primary})" if primary else ""), "",
                  "| runs in | runs | datasets | inside all-n | above all-n | below all-n | "
                  "inside n_cal | above n_cal | below n_cal | mean FPR | max FPR | "
                  "mean expected FPR (n_cal) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|",
                  summary_row("all", rm)]
        for g in dict.fromkeys(rm.group):
            lines.append(summary_row(str(g), rm[rm.group == g]))
        for b, _, _ in q.BANDS:
            if (rm.band == b).any():
                lines.append(summary_row(b, rm[rm.band == b]))
        ach = rm.achievable_fpr.dropna()
        lines += ["", "Achievable FPR exposed by the Detector: "
                  + (f"{len(ach)} runs, mean {ach.mean():.4f}, max {ach.max():.4f}, "
                     f"{int((ach > rm.loc[ach.index, 'target_fpr'] + 1e-12).sum())} above the "
                     "target." if len(ach) else "none (the Detector exposes no achievable FPR)."),
                  "", "Per (dataset, seed). where: the observed FPR against each interval; "
                  "expected: the mean FPR (l+1)/(n_cal+1) of the product's threshold.", "",
                  "| dataset | group | band | seed | n | n_cal | m | flagged | observed FPR | "
                  "all-n 95% | where | n_cal 95% | where | expected (n_cal) | achievable |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in rm.itertuples():
            ach_v = f(float(row.achievable_fpr), 4) if pd.notna(row.achievable_fpr) else ""
            lines.append(
                f"| {row.dataset} | {row.group} | {row.band} | {row.seed} | {row.n} | "
                f"{row.n_cal} | {row.m} | {row.flagged} | {f(row.fpr, 4)} | "
                f"[{f(row.lo_all, 4)}, {f(row.hi_all, 4)}] | "
                f"{_where(row.fpr, row.lo_all, row.hi_all)} | [{f(row.lo_cal, 4)}, "
                f"{f(row.hi_cal, 4)}] | {_where(row.fpr, row.lo_cal, row.hi_cal)} | "
                f"{f(row.mean_cal, 4)} | {ach_v} |")
    return "\n".join(lines) + "\n"


def write_report(results: pd.DataFrame, methods: Iterable[str], seeds: Iterable[int],
                 out_dir: Path, datasets: Iterable[str] | None = None,
                 params: dict[str, Any] | None = None, tag: str = "",
                 target: float | None = None) -> str:
    """``<out_dir>/calibration.md`` for the wanted methods, seeds and datasets."""
    names = [parse_method(m, params, tag)[1] for m in methods]
    r = results[results.method.isin(names) & results.seed.isin(list(seeds))]
    if target is not None:
        r = r[np.isclose(r.target_fpr.astype(float), target)]
    if datasets is not None:
        r = r[r.dataset.isin(list(datasets))]
    rank = {"method": {m: i for i, m in enumerate(names)},
            "dataset": {d: i for i, d in enumerate(datasets or [])}}

    def key(col: pd.Series) -> pd.Series:
        order = rank.get(str(col.name))
        return col.map(order).fillna(len(order)) if order else col

    r = r.sort_values(["method", "dataset", "seed"], key=key, kind="stable")
    text = to_markdown(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "calibration.md").write_text(text)
    return text
