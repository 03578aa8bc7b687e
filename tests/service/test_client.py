"""The Python client's retries, backoff, timeouts and error classes, on a mock transport (against
a real service: tests/e2e/test_client.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from service import client as client_module
from service.client import AnomalyClient, error_from
from training.errors import (
    DataError,
    ModelNotReadyError,
    ServiceError,
    ServiceTimeout,
    ServiceUnreachable,
    UnknownModelError,
)

MODELS = {"models": [{"name": "m", "version": "2"}]}


@pytest.fixture()
def waits(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    return slept


def _client(handler, **kwargs) -> AnomalyClient:
    return AnomalyClient("http://svc", transport=httpx.MockTransport(handler), **kwargs)


def test_connection_errors_are_retried_with_exponential_backoff(waits):
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) <= 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=MODELS)

    assert _client(handler, backoff=0.5).models() == MODELS["models"]
    assert len(calls) == 3 and len(waits) == 2
    assert 0.5 <= waits[0] <= 0.55 and 1.0 <= waits[1] <= 1.1


def test_unreachable_after_the_retries(waits):
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(ServiceUnreachable, match="after 3 tries"):
        _client(handler, retries=2, backoff=1.0, max_backoff=1.5).models()
    assert len(waits) == 2 and waits[1] <= 1.5


def test_503_is_retried_honouring_retry_after_then_raised(waits):
    body = {"error": {"type": "model_not_ready", "message": "model 'm' is not loaded"}}
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(503, json=body, headers={"Retry-After": "2"})

    with pytest.raises(ModelNotReadyError, match="not loaded") as e:
        _client(handler, retries=3).model("m")
    assert len(calls) == 4 and waits == [2.0, 2.0, 2.0]
    assert e.value.status == 503 and e.value.type == "model_not_ready"


def test_timeouts_are_not_retried(waits):
    calls = []

    def handler(request):
        calls.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ServiceTimeout, match="no answer within 0.5s"):
        _client(handler, timeout=0.5).models()
    assert len(calls) == 1 and not waits


def test_error_answers_become_the_project_errors():
    request = httpx.Request("POST", "http://svc/v1/models/m/score")
    bad = httpx.Response(422, request=request, json={"error": {
        "type": "invalid_input", "message": "record 2, column 'x': Input should be a number",
        "record": 2, "column": "x", "details": [{"message": "..."}]}})
    e = error_from(bad)
    assert isinstance(e, DataError) and (e.record, e.column, e.status) == (2, "x", 422)
    assert str(e) == "record 2, column 'x': Input should be a number" and e.details
    e = error_from(httpx.Response(404, request=request, json={"error": {
        "type": "unknown_model", "message": "no model named 'q'"}}))
    assert isinstance(e, UnknownModelError) and e.status == 404
    e = error_from(httpx.Response(500, request=request, text="oops"))
    assert isinstance(e, ServiceError) and e.status == 500 and str(e) == "oops"


def test_score_sends_columns_in_batches_and_keeps_the_index():
    import numpy as np
    import pandas as pd

    sent = []

    def handler(request):
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        cols = json.loads(request.content)["columns"]
        sent.append(cols)
        n = len(cols["a"])
        result = {"score": 1.0, "p_value": 0.5, "is_anomaly": False,
                  "scores": {"recon": 1.0}, "p_values": {"recon": 0.5},
                  "unknown_categories": 0}
        return httpx.Response(200, json={"model": {"name": "m", "version": "2"},
                                         "ignored_columns": [], "n_records": n,
                                         "n_anomalies": 0, "results": [result] * n})

    df = pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": ["x", None, "y"]}, index=[7, 8, 9])
    out = _client(handler, batch_size=2).score(df)
    assert [c["a"] for c in sent] == [[1.0, None], [3.0]] and sent[0]["b"] == ["x", None]
    assert list(out.index) == [7, 8, 9] and out.attrs["model"]["version"] == "2"
    assert list(out.columns) == ["score", "p_value", "is_anomaly", "score_recon",
                                 "p_value_recon", "unknown_categories"]
