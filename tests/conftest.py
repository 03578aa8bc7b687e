"""Shared fixtures: small real tables that ship with scikit-learn, written as files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

# Two cores: one intra-op thread per test process keeps parallel subprocesses from thrashing.
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# No background graph exports after every batch job or served model on two cores: the tests of
# the graph paths turn it on where they need it.
os.environ.setdefault("ANOMALY_GRAPH_RUNTIME", "false")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Downloaded models go to a folder of the test session (child processes inherit it),
    never to the user's own cache."""
    folder = tmp_path_factory.mktemp("model-cache")
    os.environ["ANOMALY_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def breast_cancer() -> pd.DataFrame:
    """569 rows: ``id``, 30 numeric features, ``malignant`` (1 = anomaly)."""
    from pipelines.demo.run import load_demo_frame

    return load_demo_frame()


@pytest.fixture(scope="session")
def breast_cancer_csv(tmp_path_factory, breast_cancer) -> Path:
    path = tmp_path_factory.mktemp("data") / "breast_cancer.csv"
    breast_cancer.to_csv(path, index=False)
    return path


@pytest.fixture()
def mixed_table() -> pd.DataFrame:
    """Numeric and categorical columns with missing values, 300 normal rows."""
    rng = np.random.default_rng(0)
    n = 300
    a = rng.normal(size=n)
    return pd.DataFrame({
        "id": np.arange(n),
        "a": a,
        "b": 2 * a + rng.normal(scale=0.1, size=n),
        "c": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        "color": rng.choice(["red", "green", "blue"], size=n),
        "flag": rng.random(n) < 0.5,
        "const": 1.0,
    })
