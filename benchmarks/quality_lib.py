"""Detection-quality benchmark: the one-class protocol, methods, results and report.

The protocol (shared by every method, so numbers compare):
1. normals = X[y == 0], anomalies = X[y == 1];
2. the normals are shuffled with the seed; train = 60% of them (at most ``MAX_TRAIN``, sampled
   at random); test = the other 40% plus all anomalies, subsampled to ``MAX_TEST`` rows keeping
   the anomaly ratio;
3. preprocessing is fitted on the training rows only: baselines get features standardised with
   the training mean and std (std floored at 1e-6); our Detector gets the raw features (it
   standardises itself and carves its validation rows out of the training normals);
4. AUROC and average precision on the test set, fit and score seconds.

Datasets are loaded by modality (``LOADERS``): ``tabular`` reads ADBench ``.npz`` files. Image
datasets plug in by registering a loader that returns :class:`Dataset` objects with
``modality="image"`` and methods that accept them (see :data:`METHODS`).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

log = logging.getLogger(__name__)

MAX_TRAIN = 10_000
MAX_TEST = 20_000
TRAIN_FRACTION = 0.6
STD_FLOOR = 1e-6
FIELDS = ["dataset", "seed", "method", "auroc", "ap", "fit_s", "score_s", "n_train", "n_test",
          "anomaly_ratio"]


# -- data ------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """One labelled dataset: ``X`` (n, ...) features, ``y`` (n,) with 1 = anomaly."""

    name: str
    X: np.ndarray
    y: np.ndarray
    modality: str = "tabular"


def load_adbench(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """ADBench tables ``<data_dir>/adbench/*.npz`` (or ``<data_dir>/*.npz``), by short name.

    A short name drops the numeric prefix: ``6_cardio.npz`` is ``cardio``. ``names`` selects
    by short name or file stem, case-insensitively.
    """
    folder = data_dir / "adbench" if (data_dir / "adbench").is_dir() else data_dir
    files = sorted(folder.glob("*.npz"), key=lambda p: int(p.stem.split("_")[0])
                   if p.stem.split("_")[0].isdigit() else 10**9)
    if not files:
        raise FileNotFoundError(f"no .npz tables under {folder}")
    wanted = {n.lower() for n in names} if names else None
    out = []
    for f in files:
        short = f.stem.split("_", 1)[1] if f.stem.split("_")[0].isdigit() else f.stem
        if wanted is not None and short.lower() not in wanted and f.stem.lower() not in wanted:
            continue
        with np.load(f) as d:
            out.append(Dataset(short, np.asarray(d["X"], dtype=np.float64),
                               np.asarray(d["y"]).astype(int).ravel()))
    if wanted is not None:
        found = {d.name.lower() for d in out}
        missing = sorted(w for w in wanted if w not in found
                         and not any(f.stem.lower() == w for f in files))
        if missing:
            raise FileNotFoundError(f"dataset(s) not found under {folder}: {missing}")
    return out


# modality -> loader(data_dir, names); image loaders register here.
LOADERS: dict[str, Callable[[Path, Iterable[str] | None], list[Dataset]]] = {
    "tabular": load_adbench,
}


@dataclass
class Split:
    """Row indices of one protocol split: ``train`` (normals only) and ``test``."""

    train: np.ndarray
    test: np.ndarray


def protocol_split(y: np.ndarray, seed: int, max_train: int = MAX_TRAIN,
                   max_test: int = MAX_TEST) -> Split:
    """The protocol's train/test indices for labels ``y`` (1 = anomaly) and a seed."""
    rng = np.random.default_rng(seed)
    normals = rng.permutation(np.flatnonzero(y == 0))
    anomalies = np.flatnonzero(y == 1)
    n_train = int(round(TRAIN_FRACTION * len(normals)))
    train, rest = normals[:n_train], normals[n_train:]
    if len(train) > max_train:
        train = rng.choice(train, size=max_train, replace=False)
    if len(rest) + len(anomalies) > max_test:
        ratio = len(anomalies) / (len(rest) + len(anomalies))
        n_anom = int(round(max_test * ratio))
        rest = rng.choice(rest, size=max_test - n_anom, replace=False)
        anomalies = rng.choice(anomalies, size=n_anom, replace=False)
    return Split(train=np.sort(train), test=np.concatenate([np.sort(rest), np.sort(anomalies)]))


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both matrices scaled with the training mean and std (floored), flattened to 2-D."""
    train = train.reshape(len(train), -1)
    test = test.reshape(len(test), -1)
    mean, std = train.mean(axis=0), np.maximum(train.std(axis=0), STD_FLOOR)
    return (train - mean) / std, (test - mean) / std


# -- methods ---------------------------------------------------------------------------------
@dataclass
class Method:
    """A detector to benchmark: one fit, then one or more named score columns.

    ``run(train_raw, train_std, test_raw, test_std, seed)`` returns
    ``({column name: (n_test,) scores}, fit seconds, score seconds)``.
    """

    name: str
    columns: tuple[str, ...]
    run: Callable[..., tuple[dict[str, np.ndarray], float, float]]
    modalities: tuple[str, ...] = ("tabular",)


def _pyod(factory: Callable[[int], Any]) -> Callable[..., tuple[dict[str, np.ndarray], float,
                                                                  float]]:
    def run(train_raw, train_std, test_raw, test_std, seed):
        model = factory(seed)
        t0 = time.perf_counter()
        model.fit(train_std)
        t1 = time.perf_counter()
        s = np.asarray(model.decision_function(test_std), dtype=np.float64)
        return {"": s}, t1 - t0, time.perf_counter() - t1
    return run


def _pyod_methods() -> dict[str, Method]:
    """PyOD baselines with their defaults (only the seed and verbosity set)."""
    def knn(seed):
        from pyod.models.knn import KNN
        return KNN()

    def lof(seed):
        from pyod.models.lof import LOF
        return LOF()

    def iforest(seed):
        from pyod.models.iforest import IForest
        return IForest(random_state=seed)

    def ocsvm(seed):
        from pyod.models.ocsvm import OCSVM
        return OCSVM()

    def pyod_ae(seed):
        from pyod.models.auto_encoder import AutoEncoder
        return AutoEncoder(random_state=seed, verbose=0)

    def pyod_vae(seed):
        from pyod.models.vae import VAE
        return VAE(random_state=seed, verbose=0)

    facts = {"knn": knn, "lof": lof, "iforest": iforest, "ocsvm": ocsvm, "pyod_ae": pyod_ae,
             "pyod_vae": pyod_vae}
    return {k: Method(k, (k,), _pyod(f)) for k, f in facts.items()}


def detector_method(kind: str, params: dict[str, Any] | None = None, tag: str = "") -> Method:
    """Our Detector of ``kind`` with default (or given) parameters; one column per score kind.

    Columns are named ``<kind>:<score kind>`` (plus ``@<tag>`` for an experimental variant).
    """
    from training.params import SCORE_KINDS

    params = dict(params or {})
    suffix = f"@{tag}" if tag else ""
    kinds = SCORE_KINDS[kind]

    def run(train_raw, train_std, test_raw, test_std, seed):
        from training import Detector

        det = Detector(kind=kind, **{"seed": seed, **params})
        t0 = time.perf_counter()
        det.fit(train_raw.reshape(len(train_raw), -1))
        t1 = time.perf_counter()
        raw = det.raw_scores(test_raw.reshape(len(test_raw), -1))
        return {f":{k}": raw[k] for k in kinds}, t1 - t0, time.perf_counter() - t1

    return Method(f"{kind}{suffix}", tuple(f"{kind}:{k}{suffix}" for k in kinds), run)


def all_methods(params: dict[str, Any] | None = None, tag: str = "") -> dict[str, Method]:
    """Every method by name: PyOD baselines and our ``ae`` and ``vae``."""
    methods = _pyod_methods()
    for kind in ("ae", "vae"):
        m = detector_method(kind, params, tag)
        methods[m.name] = m
    return methods


BASELINES = ("knn", "lof", "iforest", "ocsvm", "pyod_ae", "pyod_vae")
METHODS = ("ae", "vae", *BASELINES)


def select(methods: dict[str, Method], wanted: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Method name -> columns to produce, from names like ``vae``, ``vae:elbo`` or ``knn``."""
    out: dict[str, list[str]] = {}
    for w in wanted:
        base = w.split(":")[0]
        key = next((k for k in methods if k == base or k.split("@")[0] == base), None)
        if key is None:
            raise ValueError(f"unknown method {w!r}; known: {sorted(methods)}")
        cols = methods[key].columns
        if ":" in w:
            chosen = [c for c in cols if c.split("@")[0] == w]
            if not chosen:
                raise ValueError(f"unknown score column {w!r}; {key} gives {list(cols)}")
        else:
            chosen = list(cols)
        out.setdefault(key, [])
        out[key] += [c for c in chosen if c not in out[key]]
    return {k: tuple(v) for k, v in out.items()}


# -- running ---------------------------------------------------------------------------------
def read_results(path: Path) -> pd.DataFrame:
    """The results CSV, or an empty frame with the right columns."""
    if path.is_file() and path.stat().st_size:
        return pd.read_csv(path)
    return pd.DataFrame(columns=FIELDS)


def _metrics(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    if not np.isfinite(s).all():  # a diverged model ranks its non-finite scores last
        s = np.nan_to_num(s, nan=-np.inf)
        s = np.where(np.isfinite(s), s, np.where(s > 0, np.finfo(float).max, -np.finfo(float).max))
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def run_benchmark(datasets: list[Dataset], seeds: Iterable[int], methods: dict[str, Method],
                  wanted: dict[str, tuple[str, ...]], out_csv: Path) -> pd.DataFrame:
    """Run every (dataset, seed, method) not yet in ``out_csv``, appending rows as they finish.

    Returns:
        all rows of ``out_csv`` afterwards.
    """
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    done = {(r.dataset, int(r.seed), r.method) for r in read_results(out_csv).itertuples()}
    new_file = not out_csv.is_file() or out_csv.stat().st_size == 0
    with out_csv.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for ds in datasets:
            for seed in seeds:
                split = protocol_split(ds.y, seed)
                train_raw, test_raw = ds.X[split.train], ds.X[split.test]
                y_test = ds.y[split.test]
                train_std, test_std = standardize(train_raw, test_raw)
                for name, cols in wanted.items():
                    m = methods[name]
                    if ds.modality not in m.modalities:
                        continue
                    todo = [c for c in cols if (ds.name, seed, c) not in done]
                    if not todo:
                        continue
                    scores, fit_s, score_s = m.run(train_raw, train_std, test_raw, test_std, seed)
                    for col in m.columns:
                        if col not in todo:
                            continue
                        key = col[len(m.name.split("@")[0]):].split("@")[0]
                        auroc, ap = _metrics(y_test, scores[key])
                        writer.writerow({
                            "dataset": ds.name, "seed": seed, "method": col,
                            "auroc": round(auroc, 5), "ap": round(ap, 5),
                            "fit_s": round(fit_s, 3), "score_s": round(score_s, 3),
                            "n_train": len(split.train), "n_test": len(split.test),
                            "anomaly_ratio": round(float(y_test.mean()), 4),
                        })
                        fh.flush()
                        done.add((ds.name, seed, col))
                        log.info("%-14s seed %d %-16s AUROC %.4f AP %.4f fit %.1fs score %.2fs",
                                 ds.name, seed, col, auroc, ap, fit_s, score_s)
    return read_results(out_csv)


# -- reporting -------------------------------------------------------------------------------
@dataclass
class Summary:
    """Per-dataset means over seeds, per method, and the overall means and ranks."""

    auroc: pd.DataFrame  # datasets x methods
    ap: pd.DataFrame
    overall: pd.DataFrame  # methods x (auroc, ap, rank, fit_s, score_s)
    seeds: list[int] = field(default_factory=list)


def summarize(results: pd.DataFrame, methods: Iterable[str] | None = None,
              datasets: Iterable[str] | None = None) -> Summary:
    """Means over seeds; a method's rank is its AUROC rank per dataset (1 = best), averaged.

    Only datasets every selected method has results on are compared.
    """
    r = results.copy()
    if methods is not None:
        r = r[r.method.isin(list(methods))]
    if datasets is not None:
        r = r[r.dataset.isin(list(datasets))]
    auroc = r.pivot_table(index="dataset", columns="method", values="auroc", aggfunc="mean")
    ap = r.pivot_table(index="dataset", columns="method", values="ap", aggfunc="mean")
    complete = auroc.dropna().index
    auroc, ap = auroc.loc[complete], ap.loc[complete]
    order = list(methods) if methods is not None else list(auroc.columns)
    order = [m for m in order if m in auroc.columns]
    auroc, ap = auroc[order], ap[order]
    rc = r[r.dataset.isin(complete)]
    timing = rc.groupby("method")[["fit_s", "score_s"]].mean()
    overall = pd.DataFrame({
        "auroc": auroc.mean(),
        "ap": ap.mean(),
        "rank": auroc.rank(axis=1, ascending=False).mean(),
        "fit_s": timing["fit_s"],
        "score_s": timing["score_s"],
    }).loc[order]
    return Summary(auroc, ap, overall, sorted(int(s) for s in r.seed.unique()))


def to_markdown(s: Summary) -> str:
    """The summary as markdown tables: overall, then per-dataset AUROC and AP."""
    def fmt(x: float, digits: int = 3) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"

    lines = [f"Seeds {s.seeds}, {len(s.auroc)} datasets; means over seeds, then over datasets. "
             "Rank: AUROC rank per dataset (1 = best), averaged. Seconds: mean per (dataset, "
             "seed).", "",
             "| method | mean AUROC | mean AP | avg rank | fit s | score s |",
             "|---|---|---|---|---|---|"]
    for m, row in s.overall.iterrows():
        lines.append(f"| {m} | {fmt(row.auroc)} | {fmt(row.ap)} | {fmt(row['rank'], 2)} | "
                     f"{fmt(row.fit_s, 2)} | {fmt(row.score_s, 2)} |")
    for title, table in (("AUROC", s.auroc), ("Average precision", s.ap)):
        lines += ["", f"{title} per dataset:", "",
                  "| dataset | " + " | ".join(table.columns) + " |",
                  "|---" * (len(table.columns) + 1) + "|"]
        for ds, row in table.iterrows():
            best = row.max()
            cells = [f"**{fmt(v)}**" if v == best else fmt(v) for v in row]
            lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: pd.DataFrame, wanted: dict[str, tuple[str, ...]], seeds: Iterable[int],
                 out_dir: Path, datasets: Iterable[str] | None = None) -> str:
    """Summarise ``results`` for the wanted columns and seeds into ``<out_dir>/results.md``.

    Returns:
        the markdown written.
    """
    results = results[results.seed.isin(list(seeds))]
    if datasets:
        results = results[results.dataset.str.lower().isin([d.lower() for d in datasets])]
    columns = [c for cols in wanted.values() for c in cols]
    table = to_markdown(summarize(results, columns))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(table)
    return table
