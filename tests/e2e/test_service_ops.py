"""Operating the service: API keys, request limits, and a registry that is down at start."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tests.servers import free_port

KEY, ADMIN = "scoring-key-1", "admin-key-1"


@pytest.fixture(scope="module")
def guarded(svc_registry, service_factory, tmp_path_factory):
    """API keys on, small limits, files scored 100 rows at a time; fills a model cache."""
    env = {"ANOMALY_API_KEYS": f"{KEY},other-key", "ANOMALY_ADMIN_API_KEYS": ADMIN,
           "ANOMALY_MAX_RECORDS": "5", "ANOMALY_MAX_BODY_BYTES": "8192",
           "ANOMALY_FILE_CHUNK_ROWS": "100"}
    cache = tmp_path_factory.mktemp("shared-cache")
    svc = service_factory(["models:/bc@champion", "models:/bc-vae@champion"], svc_registry.uri,
                          env, cache_dir=cache)
    svc.shared_cache = cache
    return svc


@pytest.fixture(scope="module")
def records(svc_registry) -> list[dict]:
    df = pd.read_csv(svc_registry.data).drop(columns=["id", "malignant"])
    return df.head(5).to_dict(orient="records")


def test_keys_are_required_and_checked(guarded, records):
    body = {"records": records[:2]}
    with guarded.client() as c:
        r = c.post("/v1/models/bc/score", json=body)
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]["message"]
        assert c.post("/v1/models/bc/score", json=body,
                      headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"X-API-Key": "scoring-key"}).status_code == 401
        for key in (KEY, "other-key", ADMIN):
            r = c.post("/v1/models/bc/score", json=body, headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
        # probes stay open for orchestrators and scrapers
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 200
        r = c.post("/v1/models/bc/reload", headers={"X-API-Key": KEY})
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
        assert c.post("/v1/models/bc/reload").status_code == 401
        r = c.post("/v1/models/bc/reload", headers={"X-API-Key": ADMIN})
        assert r.status_code == 200 and r.json()["previous_version"] == "1"
    assert "open to anyone" not in guarded.logs()


def test_open_service_says_so(svc_registry, service_factory):
    svc = service_factory(["models:/bc@champion"], svc_registry.uri)
    with svc.client() as c:
        assert c.get("/v1/models").status_code == 200
    assert "no API keys configured" in svc.logs()
    svc.stop()


def test_limits(guarded, records):
    h = {"X-API-Key": KEY}
    with guarded.client(headers=h) as c:
        r = c.post("/v1/models/bc/score", json={"records": records * 2})
        assert r.status_code == 413 and "5 records" in r.json()["error"]["message"]
        big = {"records": records[:1], "pad": "x" * 10_000}
        r = c.post("/v1/models/bc/score", json=big)
        assert r.status_code == 413 and "8192 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit must hold on the stream too
            yield b'{"records": ['
            for _ in range(40):
                yield b'{"mean_radius": 1.0, "padding": "' + b"y" * 500 + b'"},'
            yield b"{}]}"

        r = c.post("/v1/models/bc/score", content=chunks(),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text


def test_file_errors_name_the_record_across_chunks(guarded, svc_registry):
    df = pd.read_csv(svc_registry.data)
    df["worst_area"] = df["worst_area"].astype(object)
    df.loc[250, "worst_area"] = "lots"
    with guarded.client(headers={"X-API-Key": KEY}) as c:
        r = c.post("/v1/models/bc/score-file",
                   files={"file": ("t.csv", df.to_csv(index=False).encode(), "text/csv")})
        assert r.status_code == 422, r.text
        assert (r.json()["error"]["record"], r.json()["error"]["column"]) == (250, "worst_area")
        good = pd.read_csv(svc_registry.data).to_csv(index=False).encode()
        r = c.post("/v1/models/bc/score-file", params={"summary": "true"},
                   files={"file": ("t.csv", good, "text/csv")})
        assert r.status_code == 200 and r.json()["n_records"] == len(df)


def test_registry_down_at_start_serves_the_cache(guarded, svc_registry, service_factory,
                                                 records):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    svc = service_factory(["models:/bc@champion", "models:/never-cached@champion"], dead,
                          cache_dir=guarded.shared_cache)
    with svc.client() as c:
        # bc is served from the cache at once; the registry check behind it fails.
        deadline = time.monotonic() + 30
        while True:
            r = c.get("/readyz")
            status = {m["name"]: m for m in r.json()["models"]}
            if "confirms" not in (status["bc"]["note"] or "") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 503  # one model could not be loaded at all
        assert status["bc"]["loaded"] and status["bc"]["origin"] == "cache"
        assert "registry unreachable" in status["bc"]["note"] and r.json()["degraded"]
        assert not status["never-cached"]["loaded"]
        assert "no cached copy" in status["never-cached"]["last_error"]

        r = c.post("/v1/models/bc/score", json={"records": records})
        assert r.status_code == 200 and r.json()["model"]["version"] == "1"
        r = c.post("/v1/models/never-cached/score", json={"records": records})
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_ready"

        r = c.post("/v1/models/bc/reload")  # still down: keeps serving, reports the error
        assert r.status_code == 503 and r.json()["error"]["type"] == "registry_unavailable"
        assert "still serving version 1" in r.json()["error"]["message"]
        assert c.post("/v1/models/bc/score", json={"records": records}).status_code == 200
        status = {m["name"]: m for m in c.get("/readyz").json()["models"]}
        assert "reload failed" in status["bc"]["last_error"]
    assert "Traceback" not in svc.logs().split("Application startup complete")[-1]
    svc.stop()
