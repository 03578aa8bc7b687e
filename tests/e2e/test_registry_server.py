"""Training against a real ``mlflow server`` process over HTTP (tracking, artifacts, registry)."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.servers import MlflowServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv
    srv.stop()


def test_train_register_and_load_over_http(server, breast_cancer_csv, breast_cancer, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    for kind in ("ae", "vae"):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "train", "--data", str(breast_cancer_csv),
             "--kind", kind, "--name", "bc-http", "--label-column", "malignant",
             "--id-column", "id", "--epochs", "10", "--alias", f"{kind}-latest"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "registered models:/bc-http/" in proc.stdout
    # nothing was written to a local store: everything went to the server
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    client = MlflowClient()
    aliases = client.get_registered_model("bc-http").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"ae-latest": "1", "vae-latest": "2"}
    model = mlflow.pyfunc.load_model("models:/bc-http@vae-latest")
    out = model.predict(breast_cancer.drop(columns=["id", "malignant"]).head(50))
    assert len(out) == 50 and {"score_elbo", "p_value_elbo", "is_anomaly"} <= set(out.columns)

    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", "promote", "bc-http",
                           "--version", "1", "--alias", "champion"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert client.get_model_version_by_alias("bc-http", "champion").version == "1"


def test_unreachable_registry_is_an_environment_error(breast_cancer_csv, tmp_path):
    from tests.servers import free_port

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "train", "--data", str(breast_cancer_csv),
         "--kind", "ae", "--name", "x", "--epochs", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
