"""A small fitted detector with numeric, categorical, boolean, constant and missing values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from service.model import ModelSource, ServedModel
from training.detector import Detector


@pytest.fixture(scope="package")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    n = 240
    a = rng.normal(size=n)
    return pd.DataFrame({
        "a": a,
        "b": 3 * a + rng.normal(scale=0.2, size=n),
        "c": np.where(rng.random(n) < 0.1, np.nan, rng.normal(10, 2, size=n)),
        "color": rng.choice(["red", "green", "blue"], size=n),
        "flag": rng.random(n) < 0.5,
        "const": 7.0,
    })


@pytest.fixture(scope="package", params=["ae", "vae"])
def served(request, table, tmp_path_factory) -> ServedModel:
    det = Detector(kind=request.param, max_epochs=3, seed=0).fit(table.iloc[:180])
    det.calibrate(table.iloc[180:])
    path = det.save(tmp_path_factory.mktemp(f"det-{request.param}") / "detector")
    source = ModelSource(uri=f"models:/t-{request.param}@champion", name=f"t-{request.param}",
                         version="3", alias="champion", run_id="r1")
    return ServedModel.load(source, path, max_records=100)


@pytest.fixture()
def records(table) -> list[dict]:
    out = table.head(6).astype(object).where(table.head(6).notna(), None)
    return out.to_dict(orient="records")
