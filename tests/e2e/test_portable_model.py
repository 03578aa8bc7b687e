"""A registered model loads and scores where this project is not installed.

The environment is the one MLflow's virtualenv manager builds from the model's own
``python_env.yaml`` and ``requirements.txt`` (``mlflow models prepare-env``): nothing of this
project is in it; the model brings ``training/`` as its code. Scores there, and from
``mlflow models serve --env-manager virtualenv``, are identical to the project's own, for a
table VAE and an image VAE registered in a real ``mlflow server``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.registry.download import load_model
from tests.portable_support import (
    clean_env,
    model_env,
    portable_store,
    same_frames,
)
from tests.servers import free_port, wait_http

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.environ.get("PYENV_ROOT") and
                                 not Path.home().joinpath(".pyenv").is_dir(),
                                 reason="MLflow's virtualenv manager needs pyenv")]

LOAD = textwrap.dedent("""
    import json, sys
    import mlflow, pandas as pd
    uri, src, out = sys.argv[1:4]
    model = mlflow.pyfunc.load_model(uri)
    model.predict(pd.read_parquet(src)).to_parquet(out)
    import training
    try:
        import pipelines  # noqa: F401
        project = True
    except ImportError:
        project = False
    print(json.dumps({"training": training.__file__, "project_installed": project,
                      "python": sys.executable}))
""")


@pytest.fixture(scope="module")
def store(tmp_path_factory, request):
    return portable_store(tmp_path_factory, request.config)


@pytest.fixture(scope="module")
def env_root(request) -> Path:
    return Path(request.config.cache.mkdir("model-envs"))


@pytest.fixture(scope="module")
def python(env_root, store, tmp_path_factory) -> Path:
    return model_env(env_root, store, store.table_uri, tmp_path_factory.mktemp("env"))


def _inputs(store, uri: str) -> pd.DataFrame:
    if uri == store.image_uri:
        return store.images
    return store.frame.drop(columns=["id", "malignant"]).head(60).reset_index(drop=True)


def _project_scores(store, uri: str, df: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """What this project computes for ``df`` (the registry module's loader, in process)."""
    import mlflow

    loaded = load_model(uri, tracking_uri=store.uri, cache_dir=tmp_path / "cache")
    mlflow.set_tracking_uri(store.uri)
    mlflow.set_registry_uri(store.uri)
    model = mlflow.pyfunc.load_model(str(loaded.path))
    return model.predict(df)


@pytest.mark.parametrize("which", ["table", "image"])
def test_scores_in_an_environment_without_the_project(python, store, tmp_path, which):
    uri = store.table_uri if which == "table" else store.image_uri
    df = _inputs(store, uri)
    df.to_parquet(tmp_path / "in.parquet")
    (tmp_path / "load.py").write_text(LOAD)
    env = clean_env(MLFLOW_TRACKING_URI=store.uri)
    done = subprocess.run([str(python), "load.py", uri, "in.parquet", "out.parquet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["project_installed"] is False
    assert "/code/training/" in info["training"]  # the model's own copy
    assert not info["python"].startswith(str(Path(sys.prefix)))
    same_frames(pd.read_parquet(tmp_path / "out.parquet"),
                _project_scores(store, uri, df, tmp_path))


@pytest.mark.parametrize("which", ["table", "image"])
def test_mlflow_models_serve_virtualenv_answers_the_same_scores(python, env_root, store,
                                                               tmp_path, which):
    uri = store.table_uri if which == "table" else store.image_uri
    log = _serve_and_compare(store, uri, "virtualenv", env_root, tmp_path)
    assert "already exists" in log  # the environment of the tests above


def _uv() -> str | None:
    found = shutil.which("uv")
    beside = Path(sys.executable).with_name("uv")
    return found or (str(beside) if beside.is_file() else None)


@pytest.mark.skipif(_uv() is None, reason="needs uv (pip install uv)")
def test_mlflow_models_serve_uv_answers_the_same_scores(request, store, tmp_path):
    """``--env-manager uv`` builds its own environment (once, then cached) from the same
    requirements; uv reads its own index settings, so pip's local wheel folder is passed on."""
    env_root = Path(request.config.cache.mkdir("model-envs-uv"))
    tools = tmp_path / "tools"  # uv alone on the PATH, not this project's interpreter
    tools.mkdir()
    (tools / "uv").symlink_to(_uv())
    extra = {"UV_PYTHON_DOWNLOADS": "never"}
    if os.environ.get("PIP_FIND_LINKS"):
        extra["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]
    log = _serve_and_compare(store, store.table_uri, "uv", env_root, tmp_path,
                             path_first=tools, extra=extra, timeout=1200)
    assert "using uv" in log or "already exists" in log


def _serve_and_compare(store, uri: str, manager: str, env_root: Path, tmp_path: Path,
                       path_first: Path | None = None, extra: dict[str, str] | None = None,
                       timeout: float = 300) -> str:
    """``mlflow models serve --env-manager MANAGER``: /invocations answers the project's own
    scores; returns the server's log."""
    df = _inputs(store, uri)
    port = free_port()
    env = clean_env(MLFLOW_ENV_ROOT=str(env_root), MLFLOW_TRACKING_URI=store.uri,
                    MLFLOW_LOGGING_LEVEL="INFO", **(extra or {}))  # the log names the env
    if path_first is not None:
        env["PATH"] = os.pathsep.join([str(path_first), env["PATH"]])
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                             "--env-manager", manager, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=timeout)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations",
                       json={"dataframe_split": df.to_dict(orient="split")}, timeout=120)
        assert r.status_code == 200, r.text[:2000]
        got = pd.DataFrame(r.json()["predictions"])
    finally:
        _stop_group(proc)
        log.close()
    want = _project_scores(store, uri, df, tmp_path)
    same_frames(got.astype(want.dtypes.to_dict()), want)
    return (tmp_path / "serve.log").read_text(errors="replace")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop ``mlflow models serve`` and the scoring server it started in the environment."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a scoring server left behind
    except ProcessLookupError:
        pass
