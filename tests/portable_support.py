"""Registered models in a real ``mlflow server``, and the Python environment built from their own
``requirements.txt`` by MLflow's virtualenv manager, for the tests that load models where this
project is not installed (a fresh environment, ``mlflow models serve``, Spark executors).

Building the environment takes minutes the first time (torch, mlflow and their dependencies);
it lives under the pytest cache (``.pytest_cache/d/model-envs``) and is reused by every later
run whose models have the same requirements.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.cli.main import main
from pipelines.demo.run import write_demo_data
from tests.servers import MlflowServer
from tests.training.image_data import normal_images, paint_defect, write_mvtec
from training.preprocessing.images import to_png

TABLE, IMAGE = "portable-bc", "portable-blob"
_STATE: dict[Path, Portable] = {}


@dataclass
class Portable:
    """The registry, its two models (``@champion``) and their data."""

    server: MlflowServer
    uri: str
    folder: Path
    csv: Path
    frame: pd.DataFrame
    images: pd.DataFrame  # column ``image``: base64 PNGs, normal and painted

    @property
    def table_uri(self) -> str:
        return f"models:/{TABLE}@champion"

    @property
    def image_uri(self) -> str:
        return f"models:/{IMAGE}@champion"


def portable_store(tmp_path_factory, config) -> Portable:
    """A VAE on the breast-cancer table and a convolutional VAE on small PNGs, trained once per
    session into a real ``mlflow server`` on loopback (stopped when the session ends)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _STATE:
        folder = tmp_path_factory.mktemp("portable")
        server = MlflowServer(folder / "server").start()
        config.add_cleanup(server.stop)
        csv = write_demo_data(folder)
        common = ["--alias", "champion", "--experiment", "portable-tests",
                  "--tracking-uri", server.uri]
        assert main(["train", "--data", str(csv), "--kind", "vae", "--name", TABLE,
                     "--id-column", "id", "--label-column", "malignant", "--epochs", "2",
                     *common]) == 0
        root = write_mvtec(folder / "blob", n_train=40, n_test_good=6, n_defect=6)
        assert main(["train", "--data", str(root), "--kind", "conv_vae", "--name", IMAGE,
                     "--epochs", "3", *common]) == 0
        shots = [*normal_images(4, seed=7), paint_defect(normal_images(1, seed=8)[0])]
        images = pd.DataFrame({"image": [base64.b64encode(to_png(im)).decode("ascii")
                                         for im in shots]})
        _STATE[base] = Portable(server, server.uri, folder, csv, pd.read_csv(csv), images)
    return _STATE[base]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would put this project on a child's path,
    nor the MLflow store URIs earlier tests left in it (``mlflow.set_registry_uri`` writes
    ``MLFLOW_REGISTRY_URI`` into the environment): a child talks to the store it is given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP",
                        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p != venv_bin)
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return {**env, **extra}


def mlflow_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 1500
               ) -> subprocess.CompletedProcess:
    """This project's ``mlflow`` command (the one a user runs), in a child process."""
    return subprocess.run([sys.executable, "-m", "mlflow", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def model_env(env_root: Path, store: Portable, uri: str, workdir: Path) -> Path:
    """The Python interpreter of the environment MLflow's virtualenv manager builds for
    ``uri`` from the model's own ``python_env.yaml`` and ``requirements.txt``
    (``mlflow models prepare-env``); built once, then found in ``env_root``."""
    import mlflow
    from mlflow.utils.virtualenv import _get_python_env, _get_virtualenv_name

    env = clean_env(MLFLOW_ENV_ROOT=str(env_root), MLFLOW_TRACKING_URI=store.uri)
    done = mlflow_cli("models", "prepare-env", "-m", uri, "--env-manager", "virtualenv",
                      env=env, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    # A models:/ URI is resolved by the process-wide registry client whatever the arguments
    # say, and earlier tests point it elsewhere.
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(workdir / "model-files"), tracking_uri=store.uri))
    name = _get_virtualenv_name(_get_python_env(local), local)
    python = env_root / name / "bin" / "python"
    assert python.is_file(), f"no environment {name} in {env_root}: {sorted(os.listdir(env_root))}"
    shutil.rmtree(local, ignore_errors=True)
    return python


def same_frames(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns in the same order; flags, counts and p-values identical, float scores to
    1e-9 relative (another environment's math library may sum float64 terms in another order:
    seen at 1e-10 on the aggregate-prior score)."""
    assert list(got.columns) == list(want.columns)
    for c in want.columns:
        g, w = got[c].to_numpy(), want[c].to_numpy()
        if c.startswith("score") and np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=0, err_msg=c)
        else:
            np.testing.assert_array_equal(g, w, err_msg=c)
