"""One registry failure, one answer: the service, ``anomaly score`` and Spark agree.

An unknown alias, a version without ``artifacts/detector`` and an unreachable registry (a
loopback port nothing listens on) each give the same error class everywhere: the same exit code
from ``anomaly score`` (local and ``--engine spark``) and ``anomaly serve``, the same HTTP
status and type from the service, and the same words in the message. Real processes, a real
SQLite MLflow store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines.registry.download import ModelCache
from service.errors import error_response
from service.settings import load_settings
from service.store import ModelStore
from tests.batch_support import NAME, anomaly, trained_store
from tests.registry_support import register_without_detector
from tests.servers import free_port
from training.errors import (
    ModelFormatError,
    ModelNotFoundError,
    ModelNotReadyError,
    RegistryUnavailable,
)

NO_DETECTOR = "batch-bc-no-detector"
FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
        "ANOMALY_REGISTRY_RETRIES": "0", "ANOMALY_REGISTRY_TIMEOUT_S": "3"}

# case: (model URI, registry: "store" or "dead", error class, words in every message)
CASES = {
    "unknown_alias": (f"models:/{NAME}@nope", "store", ModelNotFoundError,
                      "has no alias 'nope'"),
    "missing_artifact": (f"models:/{NO_DETECTOR}@champion", "store", ModelFormatError,
                         "no artifacts/detector"),
    "unreachable": (f"models:/{NAME}@champion", "dead", RegistryUnavailable,
                    "registry unreachable at http://127.0.0.1:"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The session's batch store, plus a version that holds no detector."""
    s = trained_store(tmp_path_factory)
    folder = ModelCache(tmp_path_factory.mktemp("source-cache"), s.uri).fetch(s.model_uri).path
    register_without_detector(s.uri, folder, NO_DETECTOR, alias="champion")
    return s


@pytest.fixture(scope="module")
def dead() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def src(store, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("registry-errors") / "in.parquet"
    store.frame.head(50).to_parquet(path)
    return path


@pytest.fixture(autouse=True)
def fast_failures(monkeypatch):
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)


def _case(name: str, store, dead):
    uri, where, cls, words = CASES[name]
    return uri, (store.uri if where == "store" else dead), cls, words


def _one_error_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    return last


@pytest.mark.parametrize("engine", ["local", "spark"])
@pytest.mark.parametrize("case", list(CASES))
def test_anomaly_score(store, dead, src, tmp_path, case, engine):
    if engine == "spark" and shutil.which("java") is None:
        pytest.skip("Spark needs Java")
    uri, tracking, cls, words = _case(case, store, dead)
    out = tmp_path / ("out" if engine == "spark" else "out.parquet")
    proc = anomaly("score", "--model", uri, "--input", str(src), "--output", str(out),
                   "--engine", engine, "--tracking-uri", tracking, cwd=tmp_path,
                   env={**FAST, "ANOMALY_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == cls.exit_code, proc.stderr[-3000:]
    assert words in _one_error_line(proc)
    assert not out.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_model_store(store, dead, tmp_path, case):
    """The service's store raises the class; its HTTP answer is the class's status and type."""
    uri, tracking, cls, words = _case(case, store, dead)
    settings = load_settings(models=[uri], cache_dir=str(tmp_path / "cache"))
    ms = ModelStore(settings, tracking)
    if cls is RegistryUnavailable:  # at start: degraded, not fatal (nothing cached to serve)
        ms.start()
        name = ms.status()[0]["name"]
        assert words in ms.status()[0]["last_error"]
        with pytest.raises(ModelNotReadyError):
            ms.get(name)
        with pytest.raises(cls) as info:
            ms.reload(name)
        assert "nothing is served" in str(info.value)
    else:
        with pytest.raises(cls) as info:
            ms.start()
    assert words in str(info.value)
    answer = error_response(info.value)
    assert answer.status_code == cls.status
    assert json.loads(answer.body)["error"]["type"] == cls.type


@pytest.mark.parametrize("case", ["unknown_alias", "missing_artifact"])
def test_anomaly_serve_exits(store, dead, tmp_path, case):
    uri, tracking, cls, words = _case(case, store, dead)
    proc = anomaly("serve", "--model", uri, "--tracking-uri", tracking, "--port",
                   str(free_port()), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path,
                   env=FAST)
    assert proc.returncode == cls.exit_code, proc.stderr[-3000:]
    assert words in _one_error_line(proc)


def test_service_reload_against_an_unreachable_registry(store, dead, service_factory, tmp_path):
    """A service that cannot reach its registry starts degraded; asking it to reload answers
    the registry's own status, as ``anomaly score`` exits with the class's code."""
    uri, tracking, cls, words = _case("unreachable", store, dead)
    svc = service_factory([uri], tracking, env=FAST, cache_dir=tmp_path / "cache")
    with svc.client() as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and not r.json()["models"][0]["loaded"]
        r = c.post(f"/v1/models/{NAME}/reload")
        assert r.status_code == cls.status, r.text
        assert r.json()["error"]["type"] == cls.type
        assert words in r.json()["error"]["message"]
    svc.stop()
    assert "Traceback" not in svc.logs()
