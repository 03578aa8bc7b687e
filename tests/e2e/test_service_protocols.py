"""MLflow's scoring protocol and the Open Inference Protocol against a real ``anomaly serve``,
spoken by the protocols' own client libraries (MLflow's scoring-server client, tritonclient):
the same numbers as /v1, named 4xx, API keys and metrics."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "bc-vae"
KEYS = {"ANOMALY_API_KEYS": "k1", "ANOMALY_ADMIN_API_KEYS": "root"}


@pytest.fixture(scope="module")
def single(svc_registry, service_factory):
    """One model, no keys: what a client of ``mlflow models serve`` talks to."""
    return service_factory([f"models:/{MODEL}@champion"], svc_registry.uri)


@pytest.fixture(scope="module")
def several(svc_registry, service_factory):
    """Two models behind API keys."""
    return service_factory(["models:/bc@champion", f"models:/{MODEL}@champion"],
                           svc_registry.uri, env=KEYS)


@pytest.fixture(scope="module")
def features(svc_registry) -> pd.DataFrame:
    return pd.read_csv(svc_registry.data).drop(columns=["id", "malignant"])


def _v1(url: str, name: str, df: pd.DataFrame, key: str | None = None) -> pd.DataFrame:
    """The /v1 answer as the pyfunc's columns."""
    headers = {"X-API-Key": key} if key else {}
    r = httpx.post(f"{url}/v1/models/{name}/score", headers=headers, timeout=60,
                   json={"records": df.to_dict(orient="records")})
    assert r.status_code == 200, r.text
    rows = []
    for res in r.json()["results"]:
        row = {"score": res["score"], "p_value": res["p_value"], "is_anomaly": res["is_anomaly"]}
        for k in res["scores"]:
            row[f"score_{k}"] = res["scores"][k]
            row[f"p_value_{k}"] = res["p_values"][k]
        row["unknown_categories"] = res["unknown_categories"]
        rows.append(row)
    return pd.DataFrame(rows)


# -- MLflow's scoring protocol ----------------------------------------------------------------
def test_mlflow_scoring_client_gets_the_v1_numbers(single, features):
    import mlflow
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    client = ScoringServerClient("127.0.0.1", single.port)
    client.wait_server_ready(timeout=30)
    assert client.get_version() == mlflow.__version__
    batch = features.iloc[100:160].reset_index(drop=True)
    expected = _v1(single.url, MODEL, batch)
    got = client.invoke(batch).get_predictions()  # dataframe_split, as MLflow writes it
    pd.testing.assert_frame_equal(got, expected, check_exact=True, check_dtype=False)
    as_array = client.invoke(batch.to_numpy()).get_predictions()  # {"inputs": [[...]]}
    pd.testing.assert_frame_equal(as_array, expected, check_exact=True, check_dtype=False)


def test_mlflow_serving_input_example_and_csv(single, features):
    from mlflow.models import convert_input_example_to_serving_input

    logged = (single.cache_dir / MODEL / "v1" / "serving_input_example.json").read_text()
    r = httpx.post(f"{single.url}/invocations", content=logged,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == len(json.loads(logged)["dataframe_split"]["data"])
    batch = features.head(7)
    payload = convert_input_example_to_serving_input(batch)
    r = httpx.post(f"{single.url}/invocations", content=payload,
                   headers={"Content-Type": "application/json"})
    expected = _v1(single.url, MODEL, batch)
    pd.testing.assert_frame_equal(pd.DataFrame(r.json()["predictions"]), expected,
                                  check_exact=True)
    r = httpx.post(f"{single.url}/invocations", content=batch.to_csv(index=False),
                   headers={"Content-Type": "text/csv"})
    pd.testing.assert_frame_equal(pd.DataFrame(r.json()["predictions"]), expected,
                                  check_exact=True)
    for probe in ("/ping", "/health"):
        assert httpx.get(f"{single.url}{probe}").status_code == 200


def test_mlflow_bad_input_is_the_v1_4xx(single, features):
    records = features.head(3).to_dict(orient="records")
    records[2]["mean_texture"] = "high"
    body = {"dataframe_records": records}
    r = httpx.post(f"{single.url}/invocations", json=body)
    v1 = httpx.post(f"{single.url}/v1/models/{MODEL}/score", json={"records": records})
    assert r.status_code == v1.status_code == 422
    assert r.json()["error"] == v1.json()["error"]
    assert r.json()["error"]["record"] == 2 and r.json()["error"]["column"] == "mean_texture"
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"


# -- Open Inference Protocol ------------------------------------------------------------------
def _tensors(df: pd.DataFrame, binary: bool):
    import tritonclient.http as tc

    inputs = []
    for c in df.columns:
        t = tc.InferInput(c, [len(df)], "FP64")
        t.set_data_from_numpy(df[c].to_numpy(np.float64), binary_data=binary)
        inputs.append(t)
    return inputs


def test_tritonclient_gets_the_v1_numbers(single, features):
    import tritonclient.http as tc

    client = tc.InferenceServerClient(url=f"127.0.0.1:{single.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.get_server_metadata()["name"] == "ae-anomaly"
    meta = client.get_model_metadata(MODEL)
    assert [i["name"] for i in meta["inputs"]] == list(features.columns)
    assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    batch = features.iloc[300:340].reset_index(drop=True)
    expected = _v1(single.url, MODEL, batch)
    assert [o["name"] for o in meta["outputs"]] == list(expected.columns)
    for binary in (True, False):  # tritonclient's default is the binary tensor extension
        outputs = None if binary else [tc.InferRequestedOutput(c, binary_data=False)
                                       for c in expected.columns]
        result = client.infer(MODEL, _tensors(batch, binary), outputs=outputs,
                              request_id="r1")
        assert result.get_response()["id"] == "r1"
        got = pd.DataFrame({c: result.as_numpy(c) for c in expected.columns})
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_dtype=False)
    matrix = tc.InferInput("input", [len(batch), batch.shape[1]], "FP64")
    matrix.set_data_from_numpy(batch.to_numpy(np.float64))
    result = client.infer(MODEL, [matrix], model_version="1",
                          outputs=[tc.InferRequestedOutput("score")])
    assert np.array_equal(result.as_numpy("score"), expected["score"].to_numpy())
    assert result.as_numpy("p_value") is None


def test_tritonclient_errors_are_the_v1_4xx(single, features):
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url=f"127.0.0.1:{single.port}")
    batch = features.head(4).copy()
    batch.iloc[3, 5] = np.inf
    with pytest.raises(InferenceServerException) as bad:
        client.infer(MODEL, _tensors(batch, binary=True))
    assert bad.value.status() == "422"
    assert f"record 3, column '{batch.columns[5]}'" in bad.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.infer(MODEL, _tensors(batch.iloc[:3, :29], binary=False))
    assert missing.value.status() == "422" and "missing column" in missing.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", _tensors(batch.head(1), binary=False))
    assert unknown.value.status() == "404"
    assert not client.is_model_ready("nope")


# -- keys, several models, metrics --------------------------------------------------------------
def test_keys_and_per_model_routes(several, features):
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    batch = features.head(5)
    body = {"dataframe_split": json.loads(batch.to_json(orient="split", index=False))}
    url = several.url
    assert httpx.post(f"{url}/v1/models/bc/invocations", json=body).status_code == 401
    r = httpx.post(f"{url}/v1/models/bc/invocations", json=body, headers={"X-API-Key": "k1"})
    assert r.status_code == 200
    expected = _v1(url, "bc", batch, key="k1")
    pd.testing.assert_frame_equal(pd.DataFrame(r.json()["predictions"]), expected,
                                  check_exact=True)
    r = httpx.post(f"{url}/invocations", json=body, headers={"X-API-Key": "k1"})
    assert r.status_code == 404 and "/v1/models/NAME/invocations" in r.json()["message"]
    assert httpx.get(f"{url}/ping").status_code == 200  # probes need no key

    client = tc.InferenceServerClient(url=f"127.0.0.1:{several.port}")
    assert client.is_server_ready() and client.is_model_ready("bc")
    with pytest.raises(InferenceServerException) as no_key:
        client.infer("bc", _tensors(batch, binary=True))
    assert no_key.value.status() == "401"
    result = client.infer("bc", _tensors(batch, binary=True), headers={"X-API-Key": "k1"})
    assert np.array_equal(result.as_numpy("score"), expected["score"].to_numpy())


def _metric(url: str, name: str, **labels) -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_protocol_routes_are_counted_under_their_own_label(single, features):
    import tritonclient.http as tc

    routes = ["/invocations", "/v2/models/{name}/infer"]
    before = {r: _metric(single.url, "anomaly_http_requests_total", route=r, status="200")
              for r in routes}
    records_before = _metric(single.url, "anomaly_records_scored_total", model=MODEL)
    batch = features.head(4)
    httpx.post(f"{single.url}/invocations",
               json={"dataframe_records": batch.to_dict(orient="records")})
    tc.InferenceServerClient(url=f"127.0.0.1:{single.port}").infer(
        MODEL, _tensors(batch, binary=True))
    for r in routes:
        assert _metric(single.url, "anomaly_http_requests_total", route=r,
                       status="200") == before[r] + 1
    assert _metric(single.url, "anomaly_http_requests_total", route="/v2/models/{name}/infer",
                   model=MODEL, status="200") >= 1
    assert _metric(single.url, "anomaly_records_scored_total", model=MODEL) == \
        records_before + 8
