"""``anomaly score --engine spark`` on a real Spark standalone cluster.

A master and one worker run as separate processes on 127.0.0.1; the executors' Python
(``PYSPARK_PYTHON``) is the environment built from the model's own requirements, without this
project: the registered model brings what it needs. The scores of a multi-file Parquet input
are those of the local engine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest

from pipelines.batch.job import run_batch
from pipelines.batch.options import ScoreOptions
from tests.portable_support import TABLE, model_env, portable_store
from tests.scores_support import assert_scores_close
from tests.servers import SparkCluster

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java")]

PARTS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory, request):
    return portable_store(tmp_path_factory, request.config)


@pytest.fixture(scope="module")
def python(store, request, tmp_path_factory):
    env_root = request.config.cache.mkdir("model-envs")
    return model_env(env_root, store, store.table_uri, tmp_path_factory.mktemp("env"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SparkCluster(tmp_path_factory.mktemp("spark-cluster")).start()
    yield c
    c.stop()


def test_cluster_scores_equal_the_local_engine(store, python, cluster, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    bounds = np.linspace(0, len(store.frame), PARTS + 1).astype(int)
    for i in range(PARTS):
        store.frame.iloc[bounds[i]:bounds[i + 1]].to_parquet(folder / f"part-{i}.parquet",
                                                             index=False)
    pattern = str(folder / "*.parquet")
    run_batch(ScoreOptions(model=store.table_uri, input=pattern, output=str(tmp_path / "local"),
                           keep=["id"], tracking_uri=store.uri))
    want = pd.concat([pd.read_parquet(tmp_path / "local" / f"part-{i}.parquet")
                      for i in range(PARTS)]).sort_values("id").reset_index(drop=True)

    env = {**cluster.env, "PYSPARK_PYTHON": str(python),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "score", "--model", store.table_uri,
         "--input", pattern, "--output", str(tmp_path / "spark"), "--keep", "id",
         "--engine", "spark", "--spark-master", cluster.url, "--tracking-uri", store.uri],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    got = pd.read_parquet(tmp_path / "spark").sort_values("id").reset_index(drop=True)
    assert list(got.columns) == list(want.columns) and len(got) == len(store.frame)
    assert set(got["model_name"]) == {TABLE} and set(got["model_version"]) == {"1"}
    for c in want.columns:
        if c.startswith("score"):
            assert_scores_close(got[c], want[c], 1e-6, c)
        elif c.startswith("p_value"):
            # float32 sums differ with the batch sizes: a score within ~1e-7 of a calibration
            # score may land on the other side of it, one p-value step away
            step = want[c][want[c] > 0].min()
            moved = np.abs(got[c] - want[c])
            assert (moved <= step + 1e-12).all() and (moved > 1e-12).mean() < 0.01, c
        elif c not in ("model_name", "model_version"):
            assert (got[c] == want[c]).all(), c
    # The job ran on the cluster, its executors on the worker, not in this process.
    state = httpx.get(f"http://127.0.0.1:{cluster.ui_port}/json/", timeout=5).json()
    apps = [a for a in state.get("completedapps", []) + state.get("activeapps", [])
            if a.get("name") == "anomaly-score"]
    assert apps, state
    executor_logs = list((cluster.folder / "work").glob("app-*/*/stderr"))
    assert executor_logs, "no executor ran on the worker"
