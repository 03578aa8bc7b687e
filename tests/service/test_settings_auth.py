"""Settings sources, API keys and the error body (model URIs: tests/pipelines/test_registry.py)."""

from __future__ import annotations

import pytest

from service.auth import check_key
from service.errors import describe_loc, validation_body
from service.settings import load_settings
from training.errors import AuthError, ConfigError, ForbiddenError


def test_sources_file_then_environment_then_flags(tmp_path, monkeypatch):
    f = tmp_path / "serve.yaml"
    f.write_text("models: [models:/a@champion]\nport: 9000\nmax_records: 10\n")
    monkeypatch.setenv("ANOMALY_PORT", "9100")
    monkeypatch.setenv("ANOMALY_API_KEYS", "k1, k2")
    s = load_settings(f, max_records=20, host=None)
    assert s.models == ["models:/a@champion"] and s.port == 9100 and s.max_records == 20
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"] and s.auth_enabled
    assert s.host == "127.0.0.1" and s.cors_origins == []
    monkeypatch.setenv("ANOMALY_MODELS", "models:/x@c,models:/y/2")
    assert load_settings().models == ["models:/x@c", "models:/y/2"]


def test_unknown_or_invalid_settings_are_named(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text("modles: [x]\n")
    with pytest.raises(ConfigError, match="modles"):
        load_settings(f)
    with pytest.raises(ConfigError, match="max_records"):
        load_settings(max_records=0)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_keys():
    open_ = load_settings()
    check_key(open_, None)
    check_key(open_, None, admin=True)
    s = load_settings(api_keys=["k1"], admin_api_keys=["root"])
    check_key(s, "k1")
    check_key(s, "root")
    check_key(s, "root", admin=True)
    for bad in (None, "", "k2", "k1 "):
        with pytest.raises(AuthError):
            check_key(s, bad)
    with pytest.raises(ForbiddenError):
        check_key(s, "k1", admin=True)
    scoring_only = load_settings(api_keys=["k1"])
    with pytest.raises(ForbiddenError, match="ANOMALY_ADMIN_API_KEYS"):
        check_key(scoring_only, "k1", admin=True)


def test_error_locations():
    assert describe_loc(("body", "records", 3, "x")) == (3, "x", "record 3, column 'x'")
    assert describe_loc(("columns", "x", 7)) == (7, "x", "record 7, column 'x'")
    assert describe_loc(("query", "explain"))[2] == "query.explain"
    body = validation_body([{"loc": ("records", 0, "a"), "type": "missing", "msg": "Field"},
                            {"loc": ("records", 1, "b"), "type": "float_type", "msg": "bad",
                             "input": "x"}])["error"]
    assert body["message"] == "record 0, column 'a': missing column (and 1 more)"
    assert (body["record"], body["column"]) == (0, "a") and body["details"][1]["value"] == "'x'"


def test_readyz_tells_reasons_only_to_callers_with_a_key(tmp_path):
    """A load balancer sees whether models are loaded; registry URLs and cache folders in
    the reasons are for callers with a key (everyone, on an open service)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.store import ModelStore

    reason = ("registry http://10.0.0.7:5000 unreachable; and no cached copy of "
              f"models:/m@champion in {tmp_path}/cache")
    for keys, key, shown in (("k1", None, False), ("k1", "wrong", False), ("k1", "k1", True),
                             ("", None, True)):
        settings = load_settings(models=["models:/m@champion"], api_keys=keys or None,
                                 cache_dir=tmp_path / "cache")
        store = ModelStore(settings, f"sqlite:///{tmp_path}/unused.db")
        store.slots["m"].last_error = reason
        with TestClient(create_app(settings, store)) as client:
            r = client.get("/readyz", headers={"X-API-Key": key} if key else {})
        assert r.status_code == 503
        model = r.json()["models"][0]
        assert (model["name"], model["loaded"]) == ("m", False)
        assert model["last_error"] == (reason if shown else None), (keys, key)
        assert (str(tmp_path) in r.text) == shown
