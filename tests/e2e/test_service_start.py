"""Restarts on a warm cache: served from the cache at once (a table model through its ONNX
graph), confirmed with the registry behind it, a moved alias swapped in."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from training.detector.graph_files import graph_ready

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
NAME = "bc-start"
GRAPHS = {"ANOMALY_GRAPH_RUNTIME": "true"}


@pytest.fixture(scope="module")
def start_registry(svc_registry):
    """``bc-start``: v1 the AE, v2 the VAE of the session's registry, @champion on v1."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=svc_registry.uri, registry_uri=svc_registry.uri)
    mlflow.set_registry_uri(svc_registry.uri)
    for source in ("bc", "bc-vae"):
        mlflow.register_model(client.get_model_version(source, "1").source, NAME)
    client.set_registered_model_alias(NAME, "champion", "1")
    return client


def _status(c) -> dict:
    """The model's entry in ``/v1/models`` with its ``/readyz`` status (origin, note)."""
    described = {m["name"]: m for m in c.get("/v1/models").json()["models"]}[NAME]
    ready = {m["name"]: m for m in c.get("/readyz").json()["models"]}[NAME]
    return {**described, **ready}


def _until(c, done, timeout: float = 60.0) -> dict:
    """The first status ``done`` accepts, or the last one after ``timeout``. /v1/models and
    /readyz are two requests: during a swap one may already name the new version while the
    other still describes the old, so wait for the whole state, not for one field of it."""
    deadline = time.monotonic() + timeout
    while True:
        got = _status(c)
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _records(svc_registry, n: int = 50) -> list[dict]:
    return pd.read_csv(svc_registry.data).drop(columns=["id", "malignant"]).head(n) \
        .to_dict(orient="records")


def test_a_restart_on_a_warm_cache_scores_through_the_graph(svc_registry, start_registry,
                                                            service_factory, tmp_path):
    cache, uri, records = tmp_path / "cache", f"models:/{NAME}@champion", \
        _records(svc_registry)
    first = service_factory([uri], svc_registry.uri, GRAPHS, cache_dir=cache)
    with first.client() as c:
        assert _status(c)["runtime"] == "torch" and _status(c)["origin"] == "registry"
        want = c.post(f"/v1/models/{NAME}/score", json={"records": records}).json()
    deadline = time.monotonic() + 180  # written by a background process
    while not graph_ready(cache / NAME / "v1" / "graph") and time.monotonic() < deadline:
        time.sleep(0.5)
    first.stop()
    assert graph_ready(cache / NAME / "v1" / "graph")

    again = service_factory([uri], svc_registry.uri, GRAPHS, cache_dir=cache)
    with again.client() as c:
        state = ("onnxruntime", "registry", "1")
        status = _until(c, lambda s: s["note"] is None and
                        (s["runtime"], s["origin"], s["version"]) == state)
        assert (status["runtime"], status["origin"], status["version"]) == state
        got = c.post(f"/v1/models/{NAME}/score", json={"records": records}).json()
        explained = c.post(f"/v1/models/{NAME}/score", params={"explain": "true"},
                           json={"records": records[:3]})
    assert "from cache" in again.logs() and "onnxruntime" in again.logs()
    np.testing.assert_allclose([r["score"] for r in got["results"]],
                               [r["score"] for r in want["results"]], rtol=1e-5)
    assert got["model"] == want["model"]
    assert explained.status_code == 200
    assert all(r["explanation"] for r in explained.json()["results"])


def test_an_alias_moved_while_the_service_was_down_is_swapped_in(
        svc_registry, start_registry, service_factory, tmp_path):
    cache, uri = tmp_path / "cache", f"models:/{NAME}@champion"
    start_registry.set_registered_model_alias(NAME, "champion", "1")
    service_factory([uri], svc_registry.uri, GRAPHS, cache_dir=cache).stop()
    start_registry.set_registered_model_alias(NAME, "champion", "2")
    try:
        svc = service_factory([uri], svc_registry.uri, GRAPHS, cache_dir=cache)
        with svc.client() as c:
            want = ("2", "vae", "registry", None)
            status = _until(c, lambda s: (s["version"], s["kind"], s["origin"], s["note"]) == want)
            assert (status["version"], status["kind"], status["origin"], status["note"]) == want
            r = c.post(f"/v1/models/{NAME}/score", json={"records": _records(svc_registry, 2)})
            assert r.status_code == 200 and r.json()["model"]["version"] == "2"
        assert "the registry names version 2 (cached: 1)" in svc.logs()
    finally:
        start_registry.set_registered_model_alias(NAME, "champion", "1")
