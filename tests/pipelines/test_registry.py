"""The registry module against real SQLite MLflow stores: URIs, resolution, cache, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.batch.options import ScoreOptions
from pipelines.registry.download import (
    DETECTOR_DIR,
    ModelCache,
    default_cache_dir,
    load_model,
)
from pipelines.registry.tracking import use_tracking_uri
from pipelines.registry.uri import PATH, REGISTERED, RUN, parse_model_uri
from pipelines.registry.versions import promote
from tests.batch_support import trained_store
from tests.registry_support import register_folder, register_without_detector
from tests.servers import free_port
from training.errors import (
    ConfigError,
    ModelFormatError,
    ModelNotFoundError,
    RegistryUnavailable,
)


# -- URIs ---------------------------------------------------------------------------------------
def test_registered_uris():
    u = parse_model_uri(" models:/bc@champion ")
    assert (u.kind, u.name, u.alias, u.version, u.uri) == (REGISTERED, "bc", "champion", None,
                                                           "models:/bc@champion")
    assert u.registered
    u = parse_model_uri("models:/bc/12", registered_only=True)
    assert (u.name, u.alias, u.version) == ("bc", None, "12")


def test_run_uris_and_folders(tmp_path):
    u = parse_model_uri("runs:/0123abcd/model")
    assert (u.kind, u.run_id, u.name, u.registered) == (RUN, "0123abcd", "runs:/0123abcd/model",
                                                        False)
    u = parse_model_uri(str(tmp_path))
    assert (u.kind, u.name, u.version) == (PATH, str(tmp_path), None)
    assert parse_model_uri("s3://bucket/models/m").kind == PATH


@pytest.mark.parametrize("bad", ["bc@champion", "models:/bc", "models:/a/b/c", "models:/bc/0",
                                 "models:/bc@", "models:/@x", "runs:/abc", "runs:/", "",
                                 "no/such/folder"])
def test_malformed_uris_name_the_accepted_forms(bad):
    with pytest.raises(ConfigError, match="models:/NAME@ALIAS") as info:
        parse_model_uri(bad)
    assert "runs:/RUN_ID/PATH" in str(info.value) and "model folder" in str(info.value)
    assert info.value.exit_code == 2 and info.value.status == 422


@pytest.mark.parametrize("bad", ["runs:/abc/model", "/tmp", "bc"])
def test_service_accepts_registered_uris_only(bad):
    with pytest.raises(ConfigError, match="models:/NAME@ALIAS") as info:
        parse_model_uri(bad, registered_only=True)
    assert "RUN_ID" not in str(info.value)


def test_score_options_check_the_uri_form():
    with pytest.raises(ConfigError, match="models:/NAME/VERSION"):
        ScoreOptions(model="models:/x", input="a.csv", output="b.csv").check()
    ScoreOptions(model="models:/x@champion", input="a.csv", output="b.csv").check()
    ScoreOptions(model="later/model-folder", input="a.csv", output="b.csv").check()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("ANOMALY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ae-anomaly" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "ae-anomaly" / "models"
    monkeypatch.setenv("ANOMALY_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    from service.settings import load_settings

    assert load_settings().cache_dir == tmp_path / "c"


# -- a real store ------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def fast_failures(monkeypatch):
    """An unreachable registry fails at once instead of after MLflow's retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The session's trained model, downloaded once: a model folder to register elsewhere."""
    store = trained_store(tmp_path_factory)
    cache = ModelCache(tmp_path_factory.mktemp("source-cache"), store.uri)
    return store, cache.fetch(store.model_uri).path


@pytest.fixture()
def registry(tmp_path, source):
    """A fresh SQLite store: ``m`` v1 and v2 (same model, two runs) with @champion on v1, and
    ``nodet`` v1 (@champion) without ``artifacts/detector``."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    folder = source[1]
    register_folder(uri, folder, "m", alias="champion")
    register_folder(uri, folder, "m")
    register_without_detector(uri, folder, "nodet", alias="champion")
    return uri


def test_alias_resolved_once_to_a_version_and_cached(registry, tmp_path):
    cache = ModelCache(tmp_path / "cache", registry)
    got = cache.fetch("models:/m@champion")
    assert (got.source.name, got.source.version, got.source.alias) == ("m", "1", "champion")
    assert got.source.origin == "registry" and got.source.run_id
    assert got.path == tmp_path / "cache" / "m" / "v1"
    assert got.detector_dir.is_dir()
    inode = os.stat(got.path).st_ino

    again = cache.fetch("models:/m@champion")  # cached: not downloaded again
    assert again.path == got.path and os.stat(again.path).st_ino == inode

    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    client.set_registered_model_alias("m", "champion", "2")
    moved = cache.fetch("models:/m@champion")
    assert moved.source.version == "2" and moved.path.name == "v2"
    assert moved.source.run_id != got.source.run_id
    pinned = cache.fetch("models:/m/1")
    assert pinned.source.version == "1" and pinned.source.alias is None
    assert not [p for p in (tmp_path / "cache" / "m").iterdir() if p.name.startswith(".")]


def test_cached_copy_when_the_registry_is_unreachable(registry, tmp_path):
    cache = ModelCache(tmp_path / "cache", registry)
    fetched = cache.fetch("models:/m@champion")
    dead = ModelCache(tmp_path / "cache", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryUnavailable, match="registry unreachable at http://127.0.0.1"):
        dead.fetch("models:/m@champion")
    cached = dead.cached("models:/m@champion")
    assert cached.source.origin == "cache" and cached.source.version == "1"
    assert cached.path == fetched.path
    assert dead.cached("models:/m/1").source.version == "1"
    assert dead.cached("models:/m/2") is None and dead.cached("models:/other@champion") is None


def test_a_cache_shared_by_two_registries_never_mixes_their_versions(registry, source,
                                                                    tmp_path):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    register_folder(other, source[1], "m", alias="champion",
                    artifacts=tmp_path / "other-artifacts")
    shared = tmp_path / "cache"
    a = ModelCache(shared, registry).fetch("models:/m@champion")
    b = ModelCache(shared, other).fetch("models:/m@champion")
    assert a.source.version == b.source.version == "1"
    assert a.source.run_id != b.source.run_id  # version 1 of another store: downloaded again
    assert ModelCache(shared, registry).fetch("models:/m/1").source.run_id == a.source.run_id


def test_loaded_model(registry, tmp_path):
    loaded = load_model("models:/m/2", tracking_uri=registry, cache_dir=tmp_path / "cache")
    assert loaded.source.version == "2" and loaded.detector.thresholds_
    assert loaded.path == tmp_path / "cache" / "m" / "v2"
    folder = load_model(str(loaded.path), tracking_uri=registry, cache_dir=tmp_path / "x")
    assert folder.path == loaded.path and folder.source.origin == "path"
    assert folder.source.version == "" and not (tmp_path / "x").exists()
    run_id = loaded.source.run_id
    run = load_model(f"runs:/{run_id}/model", tracking_uri=registry, workdir=tmp_path / "w",
                     cache_dir=tmp_path / "x")
    assert run.source.run_id == run_id and run.path.is_relative_to(tmp_path / "w")
    assert (run.path / DETECTOR_DIR).is_dir()


@pytest.mark.parametrize("uri,cls,words", [
    ("models:/m@nope", ModelNotFoundError, "has no alias 'nope'"),
    ("models:/m/9", ModelNotFoundError, "has no version 9"),
    ("models:/absent@champion", ModelNotFoundError, "absent"),
    ("models:/nodet@champion", ModelFormatError, "no artifacts/detector"),
    ("runs:/0123456789abcdef0123456789abcdef/model", ModelNotFoundError, "0123456789abcdef"),
])
def test_each_failure_has_one_class(registry, tmp_path, uri, cls, words):
    with pytest.raises(cls, match=words):
        load_model(uri, tracking_uri=registry, cache_dir=tmp_path / "cache",
                   workdir=tmp_path / "w")
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.name == "source.json"]


def test_error_classes_carry_exit_code_and_status():
    assert (ModelNotFoundError.exit_code, ModelNotFoundError.status) == (2, 404)
    assert (ModelFormatError.exit_code, ModelFormatError.status) == (2, 422)
    assert (RegistryUnavailable.exit_code, RegistryUnavailable.status) == (1, 503)


def test_unreachable_registry(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    for uri in ("models:/m@champion", "models:/m/1"):
        with pytest.raises(RegistryUnavailable) as info:
            load_model(uri, tracking_uri=dead, cache_dir=tmp_path / "cache")
        assert dead in str(info.value)


def test_promote(registry):
    use_tracking_uri(registry)
    promote("m", "2", "champion")
    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    with pytest.raises(ModelNotFoundError, match="has no version 7"):
        promote("m", "7", "champion")
    with pytest.raises(ModelNotFoundError):
        promote("absent", "1", "champion")

