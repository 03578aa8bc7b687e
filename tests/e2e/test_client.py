"""The Python client against a real ``anomaly serve``: scores, files, models, reloads, and the
service's errors as the project's error classes."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pandas as pd
import pytest

from service.client import AnomalyClient
from tests.servers import free_port
from training.errors import (
    AuthError,
    DataError,
    ForbiddenError,
    ModelNotChosenError,
    ModelNotReadyError,
    ServiceUnreachable,
    UnknownModelError,
)

KEYS = {"ANOMALY_API_KEYS": "k1", "ANOMALY_ADMIN_API_KEYS": "root"}


@pytest.fixture(scope="module")
def svc(svc_registry, service_factory):
    return service_factory(["models:/bc@champion", "models:/bc-vae@champion"],
                           svc_registry.uri, env=KEYS)


@pytest.fixture(scope="module")
def client(svc):
    with AnomalyClient(svc.url, api_key="k1") as c:
        yield c


@pytest.fixture(scope="module")
def features(svc_registry) -> pd.DataFrame:
    return pd.read_csv(svc_registry.data).drop(columns=["id", "malignant"])


def test_score_a_frame_records_or_columns(client, svc, features):
    batch = features.iloc[50:90]
    scored = client.score(batch, model="bc-vae")
    assert list(scored.index) == list(batch.index)
    assert scored.attrs["model"]["name"] == "bc-vae" and scored.attrs["model"]["version"] == "1"
    with svc.client(headers={"X-API-Key": "k1"}) as raw:
        v1 = raw.post("/v1/models/bc-vae/score",
                      json={"records": batch.to_dict(orient="records")}).json()["results"]
    assert scored["score"].tolist() == [r["score"] for r in v1]
    assert scored["score_elbo"].tolist() == [r["scores"]["elbo"] for r in v1]
    assert scored["is_anomaly"].tolist() == [r["is_anomaly"] for r in v1]
    as_records = client.score(batch.to_dict(orient="records"), model="bc-vae")
    as_columns = client.score(batch.to_dict(orient="list"), model="bc-vae")
    for other in (as_records, as_columns):
        assert other["score"].tolist() == scored["score"].tolist()
    batched = AnomalyClient(svc.url, api_key="k1", batch_size=15).score(batch, model="bc-vae")
    assert np.allclose(batched["score"], scored["score"], rtol=1e-5)  # float32, other batches
    explained = client.score(batch.head(2), model="bc", explain=True)
    assert len(explained["explanation"].iloc[0]) == 5


def test_models_and_reload(client, svc):
    assert [m["name"] for m in client.models()] == ["bc", "bc-vae"]
    assert client.model("bc")["kind"] == "ae" and client.ready()
    with pytest.raises(ForbiddenError) as e:
        client.reload("bc")
    assert e.value.status == 403
    with AnomalyClient(svc.url, api_key="root") as admin:
        reloaded = admin.reload("bc")
    assert reloaded["previous_version"] == "1" and reloaded["model"]["version"] == "1"


def test_score_file(client, svc_registry, tmp_path, features):
    path = tmp_path / "new.csv"
    features.head(30).to_csv(path, index=False)
    scored = client.score_file(path, model="bc")
    assert len(scored) == 30 and list(scored.columns[:30]) == list(features.columns)
    assert scored["score"].tolist() == client.score(features.head(30), model="bc")[
        "score"].tolist()
    summary = client.score_file(path, model="bc", summary=True)
    assert summary["n_records"] == 30 and summary["filename"] == "new.csv"
    pq = tmp_path / "new.parquet"
    features.head(30).to_parquet(pq)
    assert client.score_file(pq, model="bc")["score"].tolist() == scored["score"].tolist()


def test_errors_carry_the_service_fields(client, svc, features):
    bad = features.head(3).astype(object)
    bad.iloc[1, 4] = "oops"
    with pytest.raises(DataError) as e:
        client.score(bad, model="bc")
    assert (e.value.record, e.value.column, e.value.status) == (1, features.columns[4], 422)
    assert e.value.type == "invalid_input" and "record 1" in str(e.value)
    with pytest.raises(UnknownModelError) as e:
        client.score(features.head(1), model="nope")
    assert e.value.status == 404 and "nope" in str(e.value)
    with pytest.raises(ModelNotChosenError):
        client.score(features.head(1))
    with pytest.raises(AuthError) as e:
        AnomalyClient(svc.url, api_key="wrong").models()
    assert e.value.status == 401


def test_unreachable_and_unloaded_services_are_retried(service_factory, tmp_path, features):
    t0 = time.monotonic()
    with pytest.raises(ServiceUnreachable, match="after 3 tries"):
        AnomalyClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.05).models()
    assert time.monotonic() - t0 >= 0.15  # 0.05 + 0.1 of backoff
    down = service_factory(["models:/bc@champion"], f"http://127.0.0.1:{free_port()}",
                           cache_dir=tmp_path / "empty-cache")
    client = AnomalyClient(down.url, retries=2, backoff=0.05)
    assert not client.ready()
    with pytest.raises(ModelNotReadyError) as e:
        client.score(features.head(1), model="bc")
    assert e.value.status == 503
    metrics = httpx.get(f"{down.url}/metrics").text
    assert 'route="/v1/models/{name}/score",status="503"} 3.0' in metrics  # 1 + 2 retries
