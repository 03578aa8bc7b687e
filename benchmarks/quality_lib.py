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

import contextlib
import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
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
    modality: str = "tabular"  # what methods accept: embeddings are tables too
    group: str = "tables"  # report group: "tables" (ADBench) or "embeddings"


def _npz_files(folder: Path) -> list[Path]:
    """``.npz`` files of a folder, numeric prefixes first in numeric order, then by name."""
    def key(p: Path) -> tuple[int, str]:
        head = p.stem.split("_")[0]
        return (int(head) if head.isdigit() else 10**9, p.stem)
    return sorted(folder.glob("*.npz"), key=key)


def _short_name(stem: str) -> str:
    """``6_cardio`` -> ``cardio``; a stem without a numeric prefix stays as it is."""
    head, _, rest = stem.partition("_")
    return rest if head.isdigit() and rest else stem


def _load_npz(files: list[Path], wanted: set[str] | None, group: str) -> list[Dataset]:
    out = []
    for f in files:
        short = _short_name(f.stem)
        if wanted is not None and short.lower() not in wanted and f.stem.lower() not in wanted:
            continue
        with np.load(f) as d:
            out.append(Dataset(short, np.asarray(d["X"], dtype=np.float64),
                               np.asarray(d["y"]).astype(int).ravel(), group=group))
    return out


def _check_found(wanted: set[str] | None, files: list[Path], where: str) -> None:
    if wanted is None:
        return
    known = {_short_name(f.stem).lower() for f in files} | {f.stem.lower() for f in files}
    missing = sorted(wanted - known)
    if missing:
        raise FileNotFoundError(f"dataset(s) not found under {where}: {missing}")


def _wanted(names: Iterable[str] | None) -> set[str] | None:
    return {n.lower() for n in names} if names else None


def _tables_folder(data_dir: Path) -> Path:
    return data_dir / "adbench" if (data_dir / "adbench").is_dir() else data_dir


def load_adbench(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """ADBench tables ``<data_dir>/adbench/*.npz`` (or ``<data_dir>/*.npz``), by short name.

    A short name drops the numeric prefix: ``6_cardio.npz`` is ``cardio``. ``names`` selects
    by short name or file stem, case-insensitively.
    """
    return _load_group(_tables_folder(data_dir), names, "tables")


def load_embeddings(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """ADBench embedding sets ``<data_dir>/adbench_embeddings/*.npz``; short name = file stem."""
    return _load_group(data_dir / "adbench_embeddings", names, "embeddings")


def _load_group(folder: Path, names: Iterable[str] | None, group: str) -> list[Dataset]:
    """Every ``.npz`` of one group's folder (or those ``names`` picks), as ``group``."""
    files = _npz_files(folder)
    if not files:
        raise FileNotFoundError(f"no .npz {group} under {folder}")
    wanted = _wanted(names)
    _check_found(wanted, files, str(folder))
    return _load_npz(files, wanted, group)


def load_all(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """The ADBench tables, then the embedding sets; ``names`` may pick from either."""
    t_files = _npz_files(_tables_folder(data_dir))
    e_files = _npz_files(data_dir / "adbench_embeddings")
    if not t_files or not e_files:
        raise FileNotFoundError(f"--modality all needs {data_dir}/adbench/*.npz and "
                                f"{data_dir}/adbench_embeddings/*.npz")
    wanted = _wanted(names)
    _check_found(wanted, t_files + e_files, str(data_dir))
    return _load_npz(t_files, wanted, "tables") + _load_npz(e_files, wanted, "embeddings")


def load_mnist_table(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """One-class MNIST (``benchmarks.mnist``) as tables: each image flattened to a row of 784
    pixel columns in [0, 1], the table detector's input; group ``mnist (a table)``. Data that
    no table default was chosen on, of a width only vectors have."""
    from benchmarks.mnist import load_mnist

    out = []
    for ds in load_mnist(data_dir, names):
        out.append(Dataset(ds.name, ds.X.reshape(len(ds.X), -1), ds.y,
                           group="mnist (a table)"))
    return out


def load_mnist_binary(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """One-class MNIST as tables of 784 binary columns (each pixel 1 above half intensity, 0
    otherwise): a wide, sparse table of 0/1 values; group ``mnist (binary)``."""
    return [Dataset(ds.name, (ds.X > 0.5).astype(np.float64), ds.y, group="mnist (binary)")
            for ds in load_mnist_table(data_dir, names)]


def load_mnist_sized(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """The binary MNIST tables with three columns in pixels beside the 784 flags: the digit's
    height and width (its bounding box) and its count of set pixels. The layout of a table of
    0/1 flags with a few sizes (an ad's width and height beside its keyword flags), where the
    few columns hold most of each row's length; group ``mnist (binary, sized)``."""
    out = []
    for ds in load_mnist_binary(data_dir, names):
        images = ds.X.reshape(len(ds.X), 28, 28) > 0
        extents = []
        for axis in (2, 1):  # rows holding ink (height), then columns (width)
            inked = images.any(axis=axis)
            first = np.argmax(inked, axis=1)
            last = 27 - np.argmax(inked[:, ::-1], axis=1)
            extents.append(np.where(inked.any(axis=1), last - first + 1, 0))
        X = np.column_stack([ds.X, *extents, images.sum(axis=(1, 2))]).astype(np.float64)
        out.append(Dataset(ds.name, X, ds.y, group="mnist (binary, sized)"))
    return out


# Share of the other classes kept as anomalies where one class of a labelled set is normal
# (ADBench's rule for its class-derived sets); a set too small for it keeps them all.
OTHER_CLASS_SHARE = 0.05
MIN_ANOMALIES = 50


def _one_class(name: str, X: np.ndarray, labels: np.ndarray, normal: Any, group: str
               ) -> Dataset:
    """Class ``normal`` of a labelled set as the normals, a fixed 5% sample of the other
    classes as the anomalies (all of them where 5% is under ``MIN_ANOMALIES``)."""
    others = np.flatnonzero(labels != normal)
    keep = int(round(OTHER_CLASS_SHARE * len(others)))
    if keep >= MIN_ANOMALIES:
        others = np.sort(np.random.default_rng(0).choice(others, size=keep, replace=False))
    rows = np.concatenate([np.flatnonzero(labels == normal), others])
    y = (labels[rows] != normal).astype(int)
    return Dataset(name, np.asarray(X[rows], dtype=np.float64), y, group=group)


def load_sklearn_tables(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """Small real tables that ship with scikit-learn (no download, ``data_dir`` unused), as
    one-class tasks; group ``scikit-learn tables``. Data that no default was chosen on, all in
    the under-500 band: ``breast_cancer`` (benign normal, malignant the anomalies; 30
    columns), ``wine_<c>`` (cultivar 0 or 1 normal; 13 columns) and ``digits_<d>`` (8x8
    digit d normal; 64 pixel columns), the last two with :func:`_one_class`'s anomalies."""
    from sklearn import datasets

    group = "scikit-learn tables"
    bc = datasets.load_breast_cancer()
    out = [Dataset("breast_cancer", bc.data.astype(np.float64), (bc.target == 0).astype(int),
                   group=group)]
    wine = datasets.load_wine()
    # Cultivar 2 has 48 rows, 29 training normals: under one batch of PyOD's AE, which fails.
    out += [_one_class(f"wine_{c}", wine.data, wine.target, c, group) for c in range(2)]
    digits = datasets.load_digits()
    out += [_one_class(f"digits_{d}", digits.data, digits.target, d, group) for d in range(10)]
    return _picked(out, names, "the scikit-learn tables")


def _picked(datasets: list[Dataset], names: Iterable[str] | None, where: str) -> list[Dataset]:
    """The ``datasets`` that ``names`` picks (all without names); a name none has is an
    error naming ``where``."""
    wanted = _wanted(names)
    if wanted is None:
        return datasets
    missing = sorted(wanted - {d.name.lower() for d in datasets})
    if missing:
        raise FileNotFoundError(f"dataset(s) not among {where}: {missing}")
    return [d for d in datasets if d.name.lower() in wanted]


def load_skab_table(data_dir: Path, names: Iterable[str] | None = None) -> list[Dataset]:
    """SKAB's experiments (``<data_dir>/skab``, ``benchmarks.sequences``) as tables of sensor
    readings, one per folder (``skab_valve1``, ``skab_valve2``, ``skab_other``): each 1 Hz row
    of the 8 sensors is a record, labelled by its ``anomaly`` column; group ``SKAB rows``.
    Few columns and thousands of rows, with no time order used: data that no table default was
    chosen on."""
    from benchmarks.sequences import LABEL, TIME, load_skab

    out = []
    for group, files in load_skab(data_dir / "skab").items():
        frame = pd.concat([f for _, f in files], ignore_index=True)
        X = frame.drop(columns=[TIME, LABEL]).to_numpy(dtype=np.float64)
        out.append(Dataset(f"skab_{group}", X, frame[LABEL].to_numpy().astype(int),
                           group="SKAB rows"))
    return _picked(out, names, "the SKAB tables")


# modality -> loader(data_dir, names); image loaders register here.
LOADERS: dict[str, Callable[[Path, Iterable[str] | None], list[Dataset]]] = {
    "tabular": load_adbench,
    "embeddings": load_embeddings,
    "all": load_all,
    "mnist_table": load_mnist_table,
    "mnist_binary": load_mnist_binary,
    "mnist_sized": load_mnist_sized,
    "sklearn": load_sklearn_tables,
    "skab_table": load_skab_table,
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

    def ecod(seed):
        from pyod.models.ecod import ECOD
        return ECOD()

    facts = {"knn": knn, "lof": lof, "iforest": iforest, "ocsvm": ocsvm, "pyod_ae": pyod_ae,
             "pyod_vae": pyod_vae, "ecod": ecod}
    return {k: Method(k, (k,), _pyod(f)) for k, f in facts.items()}


def score_kinds_of(kind: str, params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The score kinds a Detector of ``kind`` with ``params`` produces.

    Asks the parameters first (kinds may come to depend on them), then
    ``training.params.SCORE_KINDS``.
    """
    from training import params as tp

    try:
        kinds = tp.DetectorParams.from_dict({**(params or {}), "kind": kind}).score_kinds
    except Exception:  # noqa: BLE001 - an unknown parameter is reported when the run fits
        kinds = None
    return tuple(kinds or tp.SCORE_KINDS[kind])


def detector_scores(det: Any, data: np.ndarray, kinds: Iterable[str] | None = None
                    ) -> dict[str, np.ndarray]:
    """Score kind -> (n,) float64 scores of a fitted Detector, before calibration.

    ``raw_scores`` when the Detector has it; else ``score_columns`` (``score_<kind>`` columns,
    which need a calibrated Detector). Kinds asked for and not produced are left out (logged).
    """
    if hasattr(det, "raw_scores"):
        raw = dict(det.raw_scores(data))
    else:
        cols = det.score_columns(data)
        raw = {k[len("score_"):]: v for k, v in cols.items() if k.startswith("score_")}
    out = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in raw.items()}
    if kinds is not None:
        missing = [k for k in kinds if k not in out]
        if missing:
            log.warning("the Detector gave no %s score(s); it gave %s", missing, sorted(out))
    return out


def detector_method(kind: str, params: dict[str, Any] | None = None, tag: str = "") -> Method:
    """Our Detector of ``kind`` with default (or given) parameters; one column per score kind.

    Columns are named ``<kind>:<score kind>`` (plus ``@<tag>`` for an experimental variant).
    A run also returns the score kinds the fitted Detector reports beyond those (its
    ``score_kinds``), and leaves out the ones it does not produce.
    """
    params = dict(params or {})
    suffix = f"@{tag}" if tag else ""
    kinds = score_kinds_of(kind, params)

    def run(train_raw, train_std, test_raw, test_std, seed):
        from training import Detector

        det = Detector(kind=kind, **{"seed": seed, **params})
        t0 = time.perf_counter()
        det.fit(train_raw.reshape(len(train_raw), -1))
        t1 = time.perf_counter()
        if not hasattr(det, "raw_scores"):  # score_columns needs thresholds; none are used
            det.calibrate(train_raw.reshape(len(train_raw), -1))
        raw = detector_scores(det, test_raw.reshape(len(test_raw), -1), kinds)
        return {f":{k}": v for k, v in raw.items()}, t1 - t0, time.perf_counter() - t1

    return Method(f"{kind}{suffix}", tuple(f"{kind}:{k}{suffix}" for k in kinds), run)


def all_methods(params: dict[str, Any] | None = None, tag: str = "") -> dict[str, Method]:
    """Every method by name: PyOD baselines and our ``ae`` and ``vae``."""
    methods = _pyod_methods()
    for kind in ("ae", "vae"):
        m = detector_method(kind, params, tag)
        methods[m.name] = m
    return methods


BASELINES = ("knn", "lof", "iforest", "ocsvm", "pyod_ae", "pyod_vae", "ecod")
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


@contextlib.contextmanager
def appending_rows(out_csv: Path, fields: list[str]) -> Iterator[csv.DictWriter]:
    """A CSV writer appending to ``out_csv`` (created with its header if new or empty): how
    every benchmark run records its rows as they finish, so an interrupted run resumes."""
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out_csv.is_file() or out_csv.stat().st_size == 0
    with out_csv.open("a", newline="", buffering=1) as fh:  # line-buffered: each row lands
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new_file:
            writer.writeheader()
        yield writer


def run_benchmark(datasets: list[Dataset], seeds: Iterable[int], methods: dict[str, Method],
                  wanted: dict[str, tuple[str, ...]], out_csv: Path) -> pd.DataFrame:
    """Run every (dataset, seed, method) not yet in ``out_csv``, appending rows as they finish.

    Returns:
        all rows of ``out_csv`` afterwards.
    """
    done = {(r.dataset, int(r.seed), r.method) for r in read_results(out_csv).itertuples()}
    with appending_rows(out_csv, FIELDS) as writer:
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
                    try:
                        scores, fit_s, score_s = m.run(train_raw, train_std, test_raw, test_std,
                                                       seed)
                    except Exception:  # noqa: BLE001 - one failing method must not stop a run
                        log.exception("%s seed %d: %s FAILED", ds.name, seed, m.name)
                        continue
                    base, _, tag = m.name.partition("@")
                    extra = [f"{base}{k}" + (f"@{tag}" if tag else "") for k in scores
                             if k and f"{base}{k}" + (f"@{tag}" if tag else "") not in m.columns]
                    if set(cols) == set(m.columns):  # the whole method asked for: new kinds too
                        todo += [c for c in extra if (ds.name, seed, c) not in done]
                    for col in (*m.columns, *extra):
                        if col not in todo:
                            continue
                        key = col[len(m.name.split("@")[0]):].split("@")[0]
                        if key not in scores:
                            log.warning("%s seed %d: %s gave no %s column", ds.name, seed,
                                        m.name, col)
                            continue
                        auroc, ap = _metrics(y_test, scores[key])
                        writer.writerow({
                            "dataset": ds.name, "seed": seed, "method": col,
                            "auroc": round(auroc, 5), "ap": round(ap, 5),
                            "fit_s": round(fit_s, 3), "score_s": round(score_s, 3),
                            "n_train": len(split.train), "n_test": len(split.test),
                            "anomaly_ratio": round(float(y_test.mean()), 4),
                        })
                        done.add((ds.name, seed, col))
                        log.info("%-14s seed %d %-16s AUROC %.4f AP %.4f fit %.1fs score %.2fs",
                                 ds.name, seed, col, auroc, ap, fit_s, score_s)
    return read_results(out_csv)


# -- reporting -------------------------------------------------------------------------------
# Size bands by the number of training normals of the protocol split: (label, low, high), a
# dataset is in a band when low <= n_train < high.
BANDS = (("under 500", 0, 500), ("500-3,000", 500, 3001), ("over 3,000", 3001, math.inf))


def band_of(n_train: float) -> str:
    """The size band of a dataset with ``n_train`` training normals."""
    return next(label for label, lo, hi in BANDS if lo <= n_train < hi)


def is_baseline(column: str) -> bool:
    """Whether a result column is a PyOD baseline (not one of our detectors)."""
    return column.split("@")[0] in BASELINES


@dataclass
class Summary:
    """Per-dataset means over seeds, per method, and the overall means and ranks."""

    auroc: pd.DataFrame  # datasets x methods
    ap: pd.DataFrame
    overall: pd.DataFrame  # methods x (auroc, ap, rank, fit_s, score_s)
    seeds: list[int] = field(default_factory=list)
    n_train: pd.Series | None = None  # dataset -> training normals (mean over seeds)
    groups: dict[str, str] | None = None  # dataset -> report group ("tables", "embeddings")


def summarize(results: pd.DataFrame, methods: Iterable[str] | None = None,
              datasets: Iterable[str] | None = None,
              groups: dict[str, str] | None = None) -> Summary:
    """Means over seeds; a method's rank is its AUROC rank per dataset (1 = best), averaged.

    Only datasets every selected method has results on are compared. ``groups`` (dataset ->
    group, in report order) orders the datasets and enables the per-group and per-band tables.
    """
    r = results.copy()
    if methods is not None:
        r = r[r.method.isin(list(methods))]
    if datasets is not None:
        r = r[r.dataset.isin(list(datasets))]
    auroc = r.pivot_table(index="dataset", columns="method", values="auroc", aggfunc="mean")
    ap = r.pivot_table(index="dataset", columns="method", values="ap", aggfunc="mean")
    complete = auroc.dropna().index
    if groups:
        complete = [d for d in groups if d in set(complete)] + sorted(
            d for d in complete if d not in groups)
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
    n_train = rc.groupby("dataset")["n_train"].mean().reindex(complete)
    grp = None
    if groups is not None:
        grp = {d: groups.get(d, "other") for d in complete}
    return Summary(auroc, ap, overall, sorted(int(s) for s in r.seed.unique()), n_train, grp)


def subsets(s: Summary) -> list[tuple[str, list[str]]]:
    """(label, datasets) of every non-empty group, band and group x band, after "all"."""
    names = list(s.auroc.index)
    groups = s.groups or {}
    bands = {d: band_of(float(s.n_train[d])) for d in names} if s.n_train is not None else {}
    group_names = list(dict.fromkeys(groups[d] for d in names)) if groups else []
    out = [("all", names)]
    out += [(g, [d for d in names if groups[d] == g]) for g in group_names]
    if bands:
        out += [(b, [d for d in names if bands[d] == b]) for b, _, _ in BANDS]
    if len(group_names) > 1 and bands:
        out += [(f"{g} · {b}", [d for d in names if groups[d] == g and bands[d] == b])
                for g in group_names for b, _, _ in BANDS]
    return [(label, ds) for label, ds in out if ds]


def breakdown(s: Summary) -> dict[str, pd.DataFrame]:
    """Mean AUROC, mean AP and average rank per subset (rows) and method (columns)."""
    rank = s.auroc.rank(axis=1, ascending=False)
    out = {}
    for what, table in (("auroc", s.auroc), ("ap", s.ap), ("rank", rank)):
        rows = {f"{label} ({len(ds)})": table.loc[ds].mean() for label, ds in subsets(s)}
        out[what] = pd.DataFrame(rows).T[list(table.columns)]
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _breakdown_markdown(table: pd.DataFrame, title: str, higher_better: bool = True,
                        digits: int = 3) -> list[str]:
    """A subsets x methods table; **bold** = best baseline, ↑ = ours beating it."""
    cols = list(table.columns)
    base = [c for c in cols if is_baseline(c)]
    lines = ["", title, "",
             "| datasets | " + " | ".join(cols) + " | best baseline |",
             "|---" * (len(cols) + 2) + "|"]
    for label, row in table.iterrows():
        best_col = None
        if base:
            vals = row[base]
            best_col = vals.idxmax() if higher_better else vals.idxmin()
        best = row[best_col] if best_col is not None else math.nan
        cells = []
        for c in cols:
            v = _fmt(row[c], digits)
            if c == best_col:
                v = f"**{v}**"
            elif not is_baseline(c) and best_col is not None and (
                    row[c] > best if higher_better else row[c] < best):
                v = f"{v} ↑"
            cells.append(v)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {best_col or ''} |")
    return lines


def to_markdown(s: Summary) -> str:
    """The summary as markdown tables: overall, per group and band (with ``groups``), then
    per-dataset AUROC and AP."""
    fmt = _fmt
    lines = [f"Seeds {s.seeds}, {len(s.auroc)} datasets; means over seeds, then over datasets. "
             "Rank: AUROC rank per dataset (1 = best), averaged. Seconds: mean per (dataset, "
             "seed).", "",
             "| method | mean AUROC | mean AP | avg rank | fit s | score s |",
             "|---|---|---|---|---|---|"]
    for m, row in s.overall.iterrows():
        lines.append(f"| {m} | {fmt(row.auroc)} | {fmt(row.ap)} | {fmt(row['rank'], 2)} | "
                     f"{fmt(row.fit_s, 2)} | {fmt(row.score_s, 2)} |")
    if s.groups is not None and len(s.auroc):
        b = breakdown(s)
        lines += ["", "By group (tables = the 12 ADBench tables, embeddings = the 8 ADBench "
                  "embedding sets) and size band (training normals of the protocol split: under "
                  "500, 500-3,000, over 3,000); (k) = number of datasets. **Bold**: the best "
                  "baseline of the row; ↑: one of ours above it."]
        lines += _breakdown_markdown(b["auroc"], "Mean AUROC:")
        lines += _breakdown_markdown(b["ap"], "Mean average precision:")
        lines += _breakdown_markdown(b["rank"], "Average AUROC rank (1 = best):",
                                     higher_better=False, digits=2)
    extra = s.groups is not None and s.n_train is not None
    for title, table in (("AUROC", s.auroc), ("Average precision", s.ap)):
        head = "| dataset | " + ("group | train normals | " if extra else "")
        lines += ["", f"{title} per dataset:", "",
                  head + " | ".join(table.columns) + " |",
                  "|---" * (len(table.columns) + 1 + 2 * extra) + "|"]
        for ds, row in table.iterrows():
            best = row.max()
            cells = [f"**{fmt(v)}**" if v == best else fmt(v) for v in row]
            pre = f"{s.groups[ds]} | {s.n_train[ds]:.0f} | " if extra else ""
            lines.append(f"| {ds} | " + pre + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: pd.DataFrame, wanted: dict[str, tuple[str, ...]], seeds: Iterable[int],
                 out_dir: Path, datasets: Iterable[str] | None = None,
                 groups: dict[str, str] | None = None,
                 known_columns: dict[str, tuple[str, ...]] | None = None) -> str:
    """Summarise ``results`` for the wanted columns and seeds into ``<out_dir>/results.md``.

    ``groups`` (dataset -> group) limits the report to those datasets and adds the per-group
    and per-band tables. ``known_columns`` (method -> declared columns) lets a method asked
    for in full also report the score kinds its runs added.

    Returns:
        the markdown written.
    """
    results = results[results.seed.isin(list(seeds))]
    if datasets:
        results = results[results.dataset.str.lower().isin([d.lower() for d in datasets])]
    if groups is not None:
        results = results[results.dataset.isin(list(groups))]
    columns = [c for cols in wanted.values() for c in cols]
    if known_columns is not None:  # score kinds a Detector gave beyond its declared ones
        for key, cols in wanted.items():
            base, _, tag = key.partition("@")
            if set(cols) != set(known_columns.get(key, cols)):
                continue  # only some columns of this method were asked for
            columns += [c for c in dict.fromkeys(results.method)
                        if c not in columns and c.split(":")[0] == base and ":" in c
                        and c.partition("@")[2] == tag]
    table = to_markdown(summarize(results, columns, groups=groups))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(table)
    return table
