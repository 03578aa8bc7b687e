"""MLflow's scoring protocol and the Open Inference Protocol on the app, in process: the same
numbers as /v1, the same named 4xx, each protocol's error shape (real clients against a real
process: tests/e2e/test_service_protocols.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.docs import input_example, with_examples
from service.scoring import mlflow_protocol, v2_protocol
from service.settings import load_settings
from training.errors import DataError, ModelNotReadyError, UnknownModelError


class StubStore:
    """The parts of ModelStore the routes use, over already loaded models."""

    def __init__(self, *models):
        self.models = {m.name: m for m in models}
        self.slots = dict.fromkeys(self.models)

    def get(self, name):
        if name not in self.models:
            raise UnknownModelError(f"no model named {name!r}")
        if self.models[name] is None:
            raise ModelNotReadyError(f"model {name!r} is not loaded")
        return self.models[name]

    def loaded(self):
        return [m for m in self.models.values() if m is not None]

    def status(self):
        return [{"name": n, "loaded": m is not None} for n, m in self.models.items()]


@pytest.fixture()
def api(served):
    app = create_app(load_settings(max_records=100), StubStore(served))
    with TestClient(app) as client:
        yield client


def _v1(api, served, records) -> list[dict]:
    r = api.post(f"/v1/models/{served.name}/score", json={"records": records})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _flat(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {"score": r["score"], "p_value": r["p_value"], "is_anomaly": r["is_anomaly"]}
        for k in r["scores"]:
            row[f"score_{k}"] = r["scores"][k]
            row[f"p_value_{k}"] = r["p_values"][k]
        row["unknown_categories"] = r["unknown_categories"]
        rows.append(row)
    return pd.DataFrame(rows)


def test_invocations_formats_give_the_v1_numbers(api, served, records, table):
    expected = _flat(_v1(api, served, records))
    assert list(expected.columns) == list(served.detector.score(table.head(1)).columns)
    cols = list(records[0])
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": cols, "index": list(range(6)),
                                                "data": [[r[c] for c in cols] for r in records]}},
        "dataframe_records": {"dataframe_records": records, "params": {}},
        "instances": {"instances": records},
        "inputs (columns)": {"inputs": {c: [r[c] for r in records] for c in cols}},
        "inputs (rows)": {"inputs": [[r[c] for c in cols] for r in records]},
    }
    for what, body in bodies.items():
        for path in ("/invocations", f"/v1/models/{served.name}/invocations"):
            r = api.post(path, json=body)
            assert r.status_code == 200, (what, r.text)
            got = pd.DataFrame(r.json()["predictions"])
            pd.testing.assert_frame_equal(got, expected, check_exact=True, obj=what)
    csv = pd.DataFrame(records).to_csv(index=False)
    r = api.post("/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    pd.testing.assert_frame_equal(pd.DataFrame(r.json()["predictions"]), expected,
                                  check_exact=True)


def test_nan_is_missing_in_mlflow_payloads(api, served, records):
    with_null = [dict(r, a=None) for r in records]
    expected = _flat(_v1(api, served, with_null))
    cols = list(records[0])
    body = json.dumps({"dataframe_split": {"columns": cols, "data": [
        [float("nan") if c == "a" else r[c] for c in cols] for r in records]}})
    r = api.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    pd.testing.assert_frame_equal(pd.DataFrame(r.json()["predictions"]), expected,
                                  check_exact=True)


@pytest.mark.parametrize("body, record, column", [
    ({"dataframe_records": [{"a": 1.0}]}, 0, "b"),
    ({"dataframe_split": {"columns": ["a", "b", "c", "color", "flag", "const"],
                          "data": [[1.0, 2.0, 3.0, "red", True, 7.0],
                                   [1.0, "x", 3.0, "red", True, 7.0]]}}, 1, "b"),
    ({"dataframe_split": {"columns": ["a", "b"], "data": [[1.0]]}}, 0, None),
    ({"instances": [{"a": 1.0, "b": 2.0, "c": 3.0, "color": 5, "flag": True,
                     "const": 7.0}]}, 0, "color"),
])
def test_invocations_bad_values_are_named(api, body, record, column):
    r = api.post("/invocations", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error_code"] == "INVALID_PARAMETER_VALUE" and err["message"]
    assert err["error"]["record"] == record and err["error"].get("column") == column


def test_invocations_rejects_what_mlflow_rejects(api, records):
    for body in ({}, {"records": records}, {"dataframe_records": records,
                                            "instances": records}, [1, 2]):
        r = api.post("/invocations", json=body)
        assert r.status_code == 422, body
        assert "dataframe_split" in r.json()["message"]
    r = api.post("/invocations", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["message"]
    r = api.post("/invocations", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error_code"] == "BAD_REQUEST"
    r = api.post("/invocations", json={"dataframe_records": records * 20})
    assert r.status_code == 413
    # pandas would read the copy as 'a.1' and score the first 'a' alone
    csv = pd.DataFrame(records).to_csv(index=False).replace(",b,", ",a,", 1).encode()
    r = api.post("/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 422, r.text
    assert "column 'a': appears more than once in the header" in r.json()["message"]
    # a date is no category, an unknown one or otherwise; nor a number of nanoseconds
    for column in ("color", "a"):
        frame = pd.DataFrame(records).assign(**{column: pd.Timestamp("2026-01-01")})
        r = api.post("/invocations", content=frame.to_parquet(),
                     headers={"Content-Type": "application/vnd.apache.parquet"})
        assert r.status_code == 422, r.text
        assert f"column '{column}': holds dates/times" in r.json()["message"]


def test_mlflow_probes(api):
    assert api.get("/ping").status_code == 200 and api.get("/health").status_code == 200
    import mlflow

    assert api.get("/version").text == mlflow.__version__


def test_invocations_alone_needs_a_single_model(served, records):
    app = create_app(load_settings(), StubStore(served, _renamed(served, "other")))
    with TestClient(app) as client:
        r = client.post("/invocations", json={"dataframe_records": records})
        assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_chosen"
        assert "/v1/models/NAME/invocations" in r.json()["message"]
        r = client.post("/v1/models/other/invocations", json={"dataframe_records": records})
        assert r.status_code == 200


def _renamed(served, name):
    from dataclasses import replace

    return replace(served, source=replace(served.source, name=name))


def test_v2_tensors_give_the_v1_numbers(api, served, records):
    expected = _flat(_v1(api, served, records))
    meta = api.get(f"/v2/models/{served.name}").json()
    assert [i["name"] for i in meta["inputs"]] == served.inputs.columns
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["flag"] == "BOOL"
    assert [o["name"] for o in meta["outputs"]] == list(expected.columns)
    inputs = [{"name": i["name"], "datatype": i["datatype"], "shape": [len(records), 1],
               "data": [r[i["name"]] for r in records]} for i in meta["inputs"]]
    r = api.post(f"/v2/models/{served.name}/infer", json={"id": "7", "inputs": inputs})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "7" and answer["model_version"] == "3"
    got = pd.DataFrame({o["name"]: o["data"] for o in answer["outputs"]})
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert {o["name"]: o["datatype"] for o in answer["outputs"]}["is_anomaly"] == "BOOL"
    r = api.post(f"/v2/models/{served.name}/versions/3/infer",
                 json={"inputs": inputs, "outputs": [{"name": "p_value"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["p_value"]
    assert r.json()["outputs"][0]["data"] == expected["p_value"].tolist()


def test_v2_binary_tensors(api, served, records):
    expected = _flat(_v1(api, served, records))
    meta = api.get(f"/v2/models/{served.name}").json()
    inputs, blobs = [], []
    for i in meta["inputs"]:
        values = [r[i["name"]] for r in records]
        if i["datatype"] == "BYTES":
            raw = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)
        elif i["datatype"] == "BOOL":
            raw = np.asarray(values, dtype=bool).tobytes()
        else:
            raw = np.asarray([np.nan if v is None else v for v in values], "<f8").tobytes()
        inputs.append({"name": i["name"], "datatype": i["datatype"], "shape": [len(values)],
                       "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    r = api.post(f"/v2/models/{served.name}/infer", content=head + b"".join(blobs),
                 headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    answer, rest = json.loads(r.content[:n]), r.content[n:]
    got, at = {}, 0
    for o in answer["outputs"]:
        size = o["parameters"]["binary_data_size"]
        dtype = {"FP64": "<f8", "BOOL": "?", "INT64": "<i8"}[o["datatype"]]
        got[o["name"]] = np.frombuffer(rest[at:at + size], dtype=dtype)
        at += size
    pd.testing.assert_frame_equal(pd.DataFrame(got), expected, check_exact=True)


def test_v2_errors_have_the_protocol_shape(api, served, records):
    name = served.name
    r = api.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
    assert r.status_code == 422 and r.json() == {"error": r.json()["error"]}
    assert "column 'b'" in r.json()["error"] and "missing column" in r.json()["error"]
    r = api.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "a", "shape": [3], "datatype": "FP64", "data": [1.0]}]})
    assert r.status_code == 422 and "holds 3 values" in r.json()["error"]
    r = api.post(f"/v2/models/{name}/infer", json={"inputs": [
        {"name": "m", "shape": [1, 6], "datatype": "FP64", "data": [1.0] * 6}]})
    assert r.status_code == 422 and "categorical" in r.json()["error"]
    r = api.post(f"/v2/models/{name}/infer", json={"inputs": []})
    assert r.status_code == 422 and isinstance(r.json()["error"], str)
    r = api.post("/v2/models/nope/infer", json={"inputs": []})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert api.get(f"/v2/models/{name}/versions/9").status_code == 404
    r = api.post(f"/v2/models/{name}/infer", content=b"{" * 10)
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
    for data, datatype in (([1000], "INT8"), ([1.5], "INT64"), ([True], "INT32")):
        r = api.post(f"/v2/models/{name}/infer", json={"inputs": [
            {"name": "a", "shape": [1], "datatype": datatype, "data": data}]})
        assert r.status_code == 422, r.text
        assert f"record 0, column 'a': {data[0]} is not a {datatype} value" in r.json()["error"]
    r = api.post(f"/v2/models/{name}/infer", json={"inputs": [  # ragged rows, 4 values
        {"name": "m", "shape": [2, 2], "datatype": "FP64", "data": [[1.0], [2.0, 3.0, 4.0]]}]})
    assert r.status_code == 422 and "does not have the tensor's shape" in r.json()["error"]
    for length in (b"\xb2", b"9" * 5000):  # a Unicode digit; more digits than int() reads
        r = api.post(f"/v2/models/{name}/infer", content=b"{}",
                     headers={"Inference-Header-Content-Length": length})
        assert r.status_code == 422, r.text
        assert "Inference-Header-Content-Length" in r.json()["error"]



def test_v2_json_data_is_read_as_its_datatype(api, served, records):
    """JSON data is typed by its tensor's datatype as binary data is by its bytes: a value its
    type cannot hold is refused, and an FP32 tensor scores as FP32 whichever way it comes."""
    name = served.name
    meta = api.get(f"/v2/models/{name}").json()
    base = [{"name": i["name"], "datatype": i["datatype"], "shape": [1],
             "data": [records[0][i["name"]]]} for i in meta["inputs"]]

    def post(column, datatype, data, parameters=None):
        inputs = [dict(i, datatype=datatype, data=data) if i["name"] == column else i
                  for i in base]
        return api.post(f"/v2/models/{name}/infer",
                        json={"inputs": inputs, **({"parameters": parameters}
                                                   if parameters else {})})

    for data, datatype in (([70000.0], "FP16"), (["red"], "FP64"), ([True], "FP32"),
                           ([1], "BOOL"), ([10**309], "FP64")):  # past float64: no value
        column = "flag" if datatype == "BOOL" else "a"
        r = post(column, datatype, data)
        assert r.status_code == 422, r.text
        assert f"record 0, column '{column}'" in r.json()["error"]
        assert f"is not a {datatype} value" in r.json()["error"]
    as_json = post("a", "FP32", [0.1])
    raw = np.asarray([0.1], "<f4").tobytes()
    inputs = [dict(i, datatype="FP32", parameters={"binary_data_size": len(raw)})
              if i["name"] == "a" else i for i in base]
    for i in inputs:
        if i["name"] == "a":
            del i["data"]
    head = json.dumps({"inputs": inputs}).encode()
    as_bytes = api.post(f"/v2/models/{name}/infer", content=head + raw,
                        headers={"Inference-Header-Content-Length": str(len(head))})
    assert as_json.status_code == as_bytes.status_code == 200, (as_json.text, as_bytes.text)
    assert as_json.json()["outputs"] == as_bytes.json()["outputs"]
    r = post("a", "FP64", [0.1], {"binary_data_output": "no"})
    assert r.status_code == 422 and "binary_data_output" in r.json()["error"]


def test_v2_bytes_elements_cut_short_are_refused(api, served, records):
    meta = api.get(f"/v2/models/{served.name}").json()
    inputs, blobs = [], []
    for i in meta["inputs"]:
        value = records[0][i["name"]]
        if i["name"] == "color":  # declares 1000 bytes, carries 3
            raw = (1000).to_bytes(4, "little") + b"red"
            inputs.append({"name": "color", "datatype": "BYTES", "shape": [1],
                           "parameters": {"binary_data_size": len(raw)}})
            blobs.append(raw)
        else:
            inputs.append({"name": i["name"], "datatype": i["datatype"], "shape": [1],
                           "data": [value]})
    head = json.dumps({"inputs": inputs}).encode()
    r = api.post(f"/v2/models/{served.name}/infer", content=head + b"".join(blobs),
                 headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 422, r.text
    assert "record 0, column 'color'" in r.json()["error"] and "cut short" in r.json()["error"]
    head = json.dumps({"inputs": [dict(inputs[0], parameters={"binary_data_size": 8.0})]})
    r = api.post(f"/v2/models/{served.name}/infer", content=head.encode(),
                 headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 422 and "whole number of bytes" in r.json()["error"], r.text

def test_an_encoded_body_is_a_415_in_each_protocols_shape(api, served, records):
    import gzip

    name = served.name
    body = gzip.compress(json.dumps({"records": records[:2]}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    for path, key in ((f"/v1/models/{name}/score", "error"),
                      (f"/v1/models/{name}/invocations", "message"),
                      (f"/v2/models/{name}/infer", "error")):
        r = api.post(path, content=body, headers=headers)
        assert r.status_code == 415, (path, r.text)
        text = r.json()[key] if key == "message" else str(r.json()[key])
        assert "Content-Encoding gzip" in text, (path, r.text)
    plain = api.post(f"/v1/models/{name}/score", json={"records": records[:2]},
                     headers={"Content-Encoding": "identity"})
    assert plain.status_code == 200, plain.text


def test_v2_health_and_server_metadata(api, served):
    assert api.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert api.get("/v2/health/live").json() == {"live": True}
    assert api.get("/v2/health/ready").json() == {"ready": True}
    assert api.get(f"/v2/models/{served.name}/ready").json() == {"name": served.name,
                                                                 "ready": True}
    assert api.get("/v2/models/nope/ready").status_code == 404


def test_v2_matrix_input_in_schema_order(served, tmp_path):
    from service.model import ServedModel
    from training.detector import Detector

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(120, 3)), columns=["x", "y", "z"])
    det = Detector(kind="ae", max_epochs=2).fit(df.iloc[:90]).calibrate(df.iloc[90:])
    model = ServedModel.load(_renamed(served, "numeric").source,
                             det.save(tmp_path / "det"), max_records=50)
    rows = df.head(4).to_numpy()
    req = v2_protocol.parse(model, json.dumps({"inputs": [
        {"name": "input", "shape": [4, 3], "datatype": "FP64",
         "data": rows.tolist()}]}).encode(), None)
    answer = json.loads(v2_protocol.infer(model, req).body)
    scores = {o["name"]: o["data"] for o in answer["outputs"]}["score"]
    assert scores == det.score(df.head(4))["score"].tolist()


def test_mlflow_parse_is_pure(served, records):
    parsed = mlflow_protocol.parse(served, json.dumps({"dataframe_records": records}).encode(),
                                   "application/json; charset=utf-8")
    assert parsed.n == 6
    with pytest.raises(DataError, match="strict"):
        mlflow_protocol.parse(served, pd.DataFrame(records).assign(extra=1).to_csv(
            index=False).encode(), "text/csv", strict=True)


def test_docs_examples_score(api, served):
    doc = api.get("/openapi.json").json()
    own = doc["paths"][f"/v1/models/{served.name}/score"]["post"]
    example = own["requestBody"]["content"]["application/json"]["example"]
    assert example == {"records": input_example(served)}
    assert set(example["records"][0]) == set(served.inputs.columns)
    assert api.post(f"/v1/models/{served.name}/score", json=example).status_code == 200
    for path in ("/v1/models/{name}/invocations", "/v2/models/{name}/infer"):
        op = doc["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["example"]
        r = api.post(path.replace("{name}", served.name), json=body)
        assert r.status_code == 200, (path, r.text)
    assert with_examples({"paths": {}}, []) == {"paths": {}}


def test_docs_pages_use_local_assets(api):
    for page in ("/docs", "/redoc"):
        r = api.get(page)
        html = r.text
        assert "cdn." not in html and "fonts.googleapis" not in html
        assert "default-src 'self'" in r.headers["content-security-policy"]
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css") if page == "/docs" else (
                "redoc.standalone.js",):
            assert f"/docs-assets/{asset}" in html
            assert api.get(f"/docs-assets/{asset}").status_code == 200
