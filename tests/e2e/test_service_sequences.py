"""Sequence scoring over HTTP: a real ``anomaly serve`` process serving a seq_ae from SQLite,
``/score`` with a window of records and the stateful ``/stream``; the same scores as the
pyfunc and the detector's one pass."""

from __future__ import annotations

import io
import time

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.train.config import TrainConfig
from pipelines.train.run import run_training
from tests.training.sequence_data import rotating

IDLE_S = 3.0


def _series(n: int, seed: int, t0: int = 0) -> pd.DataFrame:
    return pd.concat([rotating(n, seed=seed, t0=t0)[0].assign(unit="p1"),
                      rotating(n, seed=seed + 1, t0=t0)[0].assign(unit="p2")]).sort_values(
        ["t", "unit"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, service_factory):
    folder = tmp_path_factory.mktemp("seq-svc")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    data = folder / "units.csv"
    _series(700, seed=0).to_csv(data, index=False)
    cfg = TrainConfig(data=str(data), name="pumps", kind="seq_ae", alias="champion",
                      experiment="sequence-service",
                      model={"time_column": "t", "series_column": "unit", "window": 12,
                             "max_epochs": 15})
    run_training(cfg, tracking_uri=uri)
    service = service_factory(["models:/pumps@champion"], uri,
                              env={"ANOMALY_STREAM_MAX_KEYS": "3",
                                   "ANOMALY_STREAM_IDLE_S": str(IDLE_S),
                                   "ANOMALY_FILE_CHUNK_ROWS": "25"})
    return service, uri


def _records(frame: pd.DataFrame) -> dict:
    return {"records": frame.to_dict(orient="records")}


def test_score_a_window_matches_the_pyfunc(svc):
    service, uri = svc
    new = _series(60, seed=5, t0=5000)
    with service.client() as c:
        r = c.post("/v1/models/pumps/score", json=_records(new), params={"explain": "true"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(new)
    warm = [x["warm_up"] for x in results]
    assert sum(warm) == 2 * 11  # window 12, two series
    served = np.array([np.nan if x["score"] is None else x["score"] for x in results])
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    expected = mlflow.pyfunc.load_model("models:/pumps@champion").predict(new)
    np.testing.assert_allclose(served, expected["score"].to_numpy(), rtol=1e-6)
    scored = next(x for x in results if not x["warm_up"])
    assert {e["column"] for e in scored["explanation"]} <= {"a", "b", "c"}


def test_stream_in_pieces_scores_as_one_request(svc):
    service, _ = svc
    new = _series(40, seed=7, t0=9000)
    with service.client() as c:
        whole = c.post("/v1/models/pumps/score", json=_records(new)).json()["results"]
        pieces = []
        for i in range(0, len(new), 7):
            r = c.post("/v1/models/pumps/stream", json=_records(new.iloc[i : i + 7]))
            assert r.status_code == 200, r.text
            pieces += r.json()["results"]
    assert [x["warm_up"] for x in pieces] == [x["warm_up"] for x in whole]
    got = np.array([x["score"] or 0.0 for x in pieces])
    np.testing.assert_allclose(got, [x["score"] or 0.0 for x in whole], rtol=1e-5,
                               atol=1e-6)


def test_score_file_in_chunks_scores_as_one_request(svc):
    service, _ = svc
    new = _series(60, seed=6, t0=7000)
    with service.client() as c:
        whole = c.post("/v1/models/pumps/score", json=_records(new)).json()["results"]
        r = c.post("/v1/models/pumps/score-file",
                   files={"file": ("units.csv", new.to_csv(index=False), "text/csv")})
    assert r.status_code == 200, r.text
    got = pd.read_csv(io.StringIO(r.text))  # 120 rows read 25 at a time
    assert got["warm_up"].tolist() == [x["warm_up"] for x in whole]
    np.testing.assert_allclose(got["score"].fillna(0).to_numpy(),
                               [x["score"] or 0.0 for x in whole], rtol=1e-5,
                               atol=1e-6)


def test_stream_state_is_bounded_expires_and_a_reload_resets_it(svc):
    service, _ = svc
    point = _series(1, seed=9, t0=20000).iloc[:1]
    with service.client() as c:
        for k in range(6):  # six series, three kept
            r = c.post("/v1/models/pumps/stream", json=_records(point.assign(unit=f"k{k}")))
            assert r.status_code == 200, r.text
        assert r.json()["n_series"] == 3
        time.sleep(IDLE_S + 0.5)  # every series idle past the limit
        r = c.post("/v1/models/pumps/stream",
                   json=_records(point.assign(unit="k9", t=20001)))
        assert r.json()["n_series"] == 1
        # fill a series' window, then reload: its state starts afresh
        run = _series(15, seed=10, t0=30000)
        r = c.post("/v1/models/pumps/stream", json=_records(run[run.unit == "p1"]))
        assert not r.json()["results"][-1]["warm_up"]
        assert c.post("/v1/models/pumps/reload").status_code == 200
        nxt = _series(1, seed=11, t0=30015)
        r = c.post("/v1/models/pumps/stream", json=_records(nxt[nxt.unit == "p1"]))
        assert r.json()["results"][0]["warm_up"] and r.json()["n_series"] == 1


@pytest.mark.parametrize("route", ["score", "stream"])
def test_time_going_back_is_a_422_naming_the_record(svc, route):
    service, _ = svc
    new = _series(20, seed=12, t0=40000)
    new.loc[6, "t"] = 39000  # series p1's fourth point goes back in time
    with service.client() as c:
        r = c.post(f"/v1/models/pumps/{route}", json=_records(new))
    assert r.status_code == 422, r.text
    assert "record 6" in r.text and "'t'" in r.text


def _v2_body(frame: pd.DataFrame) -> dict:
    return {"inputs": [{"name": c, "shape": [len(frame)],
                        "datatype": "BYTES" if c == "unit" else "FP64",
                        "data": [None if pd.isna(v) else v for v in frame[c].tolist()]}
                       for c in frame.columns]}


def test_a_record_without_its_series_key_is_a_422_on_every_route(svc):
    """A null series key names its record and column (it once read as the last series)."""
    service, _ = svc
    new = _series(6, seed=13, t0=50000).astype({"unit": object})
    new.loc[3, "unit"] = None
    split = {"dataframe_split": {"columns": list(new.columns),
                                 "data": new.astype(object).where(new.notna(), None)
                                 .values.tolist()}}
    with service.client() as c:
        answers = {"score": c.post("/v1/models/pumps/score", json=_records(new)),
                   "stream": c.post("/v1/models/pumps/stream", json=_records(new)),
                   "invocations": c.post("/invocations", json=split),
                   "v2": c.post("/v2/models/pumps/infer", json=_v2_body(new)),
                   "file": c.post("/v1/models/pumps/score-file", files={
                       "file": ("u.csv", new.to_csv(index=False), "text/csv")})}
    for route, r in answers.items():
        assert r.status_code in (400, 422), (route, r.text)
        assert "record 3" in r.text and "'unit'" in r.text, (route, r.text)
        assert "missing series key" in r.text, (route, r.text)


def test_values_that_overflow_are_refused_on_every_route(svc):
    """A value so far out that the scores overflow is a 422, never a null score that reads
    as normal (streams and files once answered 200)."""
    service, _ = svc
    new = _series(20, seed=14, t0=60000)
    new.loc[30, "a"] = 1e308  # p1's 16th point: the first window holding it ends there
    with service.client() as c:
        answers = {"score": c.post("/v1/models/pumps/score", json=_records(new)),
                   "stream": c.post("/v1/models/pumps/stream", json=_records(new)),
                   "file": c.post("/v1/models/pumps/score-file", files={
                       "file": ("u.csv", new.to_csv(index=False), "text/csv")})}
    for route, r in answers.items():
        assert r.status_code == 422, (route, r.text)
        assert "too far outside the training data" in r.text, (route, r.text)
        assert "record 30" in r.text and "'a'" in r.text, (route, r.text)


def test_reconstruct_and_v2_outputs_of_a_sequence_model(svc):
    service, _ = svc
    new = _series(20, seed=15, t0=70000)
    with service.client() as c:
        rec = c.post("/v1/models/pumps/reconstruct", json=_records(new))
        codes = c.post("/v1/models/pumps/encode", json=_records(new))
        meta = c.get("/v2/models/pumps").json()
        ok = c.post("/v2/models/pumps/infer", json=_v2_body(new))
        unknown = c.post("/v2/models/pumps/infer", json={
            **_v2_body(new), "outputs": [{"name": "unknown_categories"}]})
    assert rec.status_code == 422 and "score?explain=true" in rec.text, rec.text
    assert codes.status_code == 422 and "codes windows" in codes.text, codes.text
    outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
    assert outputs["warm_up"] == "BOOL" and "unknown_categories" not in outputs
    assert ok.status_code == 200, ok.text
    got = {o["name"]: o for o in ok.json()["outputs"]}
    assert set(got) == set(outputs)
    assert got["warm_up"]["datatype"] == "BOOL" and sum(got["warm_up"]["data"]) == 22
    assert unknown.status_code in (400, 422) and "unknown_categories" in unknown.text
