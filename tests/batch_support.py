"""A registered model for the batch-scoring tests, trained once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.cli.main import main
from pipelines.demo.run import write_demo_data

NAME = "batch-bc"
_STORES: dict[Path, Store] = {}


@dataclass
class Store:
    """A SQLite MLflow store holding ``NAME`` version 1 as ``@champion``, and its data."""

    folder: Path
    uri: str
    model_uri: str
    csv: Path
    frame: pd.DataFrame


def trained_store(tmp_path_factory) -> Store:
    """Train a small AE once per session (every test module shares it)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _STORES:
        folder = tmp_path_factory.mktemp("batch-store")
        csv = write_demo_data(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        code = main(["train", "--data", str(csv), "--kind", "ae", "--name", NAME,
                     "--id-column", "id", "--label-column", "malignant", "--epochs", "8",
                     "--alias", "champion", "--experiment", "batch-tests",
                     "--tracking-uri", uri])
        assert code == 0
        _STORES[base] = Store(folder, uri, f"models:/{NAME}@champion", csv, pd.read_csv(csv))
    return _STORES[base]


def anomaly(*args: str, cwd: Path | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the ``anomaly`` CLI in a child process."""
    full_env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def pandas_written_frame(n: int) -> pd.DataFrame:
    """A frame whose CSV (``to_csv``, index included) holds what pandas writes and reads back
    its own way: an unnamed first column, lowercase true/false (pandas: booleans), 'None' and
    '<NA>' for missing numbers and categories."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=n)
    frame = pd.DataFrame({"a": a, "b": 3 * a + rng.normal(scale=0.2, size=n),
                          "c": rng.normal(10, 2, size=n).round(3).astype(object),
                          "color": rng.choice(["red", "green", "blue"], size=n).astype(object),
                          "flag": rng.choice(["true", "false"], size=n)})
    frame.loc[::10, "c"] = "None"
    frame.loc[5::10, "c"] = "<NA>"
    frame.loc[3::17, "color"] = "None"
    return frame
