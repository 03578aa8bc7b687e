"""The demo job: AE vs VAE on scikit-learn's breast-cancer table, end to end.

Benign tumours are the normal class; malignant ones are anomalies kept for evaluation only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer

from pipelines.demo.images import run_image_demo
from pipelines.demo.serve import show_service
from pipelines.registry.versions import promote
from pipelines.train.config import TrainConfig
from pipelines.train.run import run_training


def load_demo_frame() -> pd.DataFrame:
    """The breast-cancer table: an ``id`` column, 30 features, ``malignant`` (1 = anomaly)."""
    data = load_breast_cancer(as_frame=True)
    df = data.frame.drop(columns=["target"])
    df.columns = [c.replace(" ", "_") for c in df.columns]
    df.insert(0, "id", range(1, len(df) + 1))
    df["malignant"] = (data.frame["target"] == 0).astype(int)  # sklearn: 0 = malignant
    return df


def write_demo_data(folder: Path) -> Path:
    """Write ``breast_cancer.csv`` into ``folder`` and return its path."""
    path = folder / "breast_cancer.csv"
    load_demo_frame().to_csv(path, index=False)
    return path


def run_demo(workdir: str, max_epochs: int | None = None) -> int:
    """Train both kinds, promote the better one to ``champion``, print a comparison."""
    from pipelines.cli.text import format_table

    folder = Path(workdir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = write_demo_data(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    name = "breast-cancer"
    results = []
    for kind in ("ae", "vae"):
        cfg = TrainConfig(data=str(data), name=name, kind=kind, label_column="malignant",
                          id_column="id", experiment="demo-breast-cancer",
                          model={"max_epochs": max_epochs} if max_epochs else {})
        print(f"training {kind} on {data.name} ...", flush=True)
        results.append(run_training(cfg, tracking_uri=uri))
    best = max(results, key=lambda r: r.metrics.get("eval/auroc", 0.0))
    promote(name, best.version, "champion")
    rows = []
    for r in results:
        m = r.metrics
        for kind in r.thresholds:
            rows.append({
                "version": r.version, "kind": r.kind,
                "score": kind + (" *" if kind == r.primary_score else ""),
                "AUROC": f"{m[f'eval/auroc_{kind}']:.4f}", "AP": f"{m[f'eval/ap_{kind}']:.4f}",
                "threshold": f"{r.thresholds[kind]:.4g}",
                "FPR held-out normals": f"{m[f'eval/fpr_{kind}']:.3f}",
                "recall": f"{m[f'eval/recall_{kind}']:.3f}",
                "fit s": f"{m['fit/seconds']:.1f}",
            })
    print()
    print(format_table(rows, list(rows[0])))
    print("(* = the model's primary score, which decides is_anomaly; target FPR 0.01)")
    print(f"\nmodels:/{name}@champion -> version {best.version} ({best.kind}, "
          f"AUROC {best.metrics['eval/auroc']:.4f}); the other stays @challenger")
    run_image_demo(folder, uri, max_epochs)
    print("\nCompare the runs in the MLflow UI:")
    print(f"  anomaly ui --tracking-uri {uri}")
    show_service(uri, name, data, folder)
    return 0
