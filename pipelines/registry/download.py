"""Resolve a model URI in the registry once, download it into the on-disk cache, load it.

Every entry point (the service, ``anomaly score``, Spark, scheduled jobs) goes through here, so
the same failure is the same error class everywhere:

- no such model, version or alias: :class:`~training.errors.ModelNotFoundError`;
- a version without ``artifacts/detector`` (not logged by ``anomaly train``):
  :class:`~training.errors.ModelFormatError`;
- the registry or its artifact store cannot be reached (connection refused, timeouts, 5xx):
  :class:`~training.errors.RegistryUnavailable`.

Cache layout (``cache_dir``)::

    <name>/v<version>/              the registered model's files (MLmodel, artifacts/detector/...)
    <name>/v<version>/source.json   written last: the download is complete
    <name>/alias-<alias>.json       the version the alias pointed at when last resolved

A version is downloaded into a temporary folder beside its place and renamed into it, so a
reader never sees half a model. ``source.json`` records the run and artifact location of the
version, so a cache shared by two registries never serves one's version 1 for the other's.
When the registry cannot be reached, :meth:`ModelCache.cached` gives the version last resolved.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipelines.registry.tracking import default_tracking_uri
from pipelines.registry.uri import PATH, REGISTERED, ModelURI, parse_model_uri
from training.errors import (
    AnomalyError,
    ModelFormatError,
    ModelNotFoundError,
    RegistryUnavailable,
    first_line,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from training.detector.base import BaseDetector

log = logging.getLogger(__name__)

DETECTOR_DIR = Path("artifacts") / "detector"
CACHE_ENV = "ANOMALY_CACHE_DIR"
# MLflow error codes that mean "no such model, version, alias or artifact".
NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
_META = "source.json"


def default_cache_dir() -> Path:
    """Where downloaded models are kept unless told otherwise.

    Returns:
        ``$ANOMALY_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ae-anomaly/models`` (``~/.cache``
        when ``XDG_CACHE_HOME`` is unset).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ae-anomaly" / "models"


@dataclass(frozen=True)
class ModelSource:
    """Where a model version came from.

    Attributes:
        uri: the URI asked for (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ...).
        name: registered model name (the URI itself for unregistered models).
        version: the version resolved (pinned); empty for unregistered models.
        alias: alias in the URI, if any.
        run_id: MLflow run that produced it.
        origin: "registry" (resolved now), "cache" (registry unreachable, last resolved
            version) or "path" (not registered: a run's artifacts or a folder).
    """

    uri: str
    name: str
    version: str
    alias: str | None
    run_id: str | None
    origin: str = "registry"


@dataclass(frozen=True)
class FetchedModel:
    """A model version on local disk.

    Attributes:
        source: where it came from.
        path: the model folder (``MLmodel``, ``artifacts/detector``...).
    """

    source: ModelSource
    path: Path

    @property
    def detector_dir(self) -> Path:
        """The saved detector inside the model folder."""
        return self.path / DETECTOR_DIR


@dataclass(frozen=True)
class LoadedModel(FetchedModel):
    """A model version on local disk with its detector loaded.

    Attributes:
        detector: the detector saved in ``path / artifacts/detector``.
    """

    detector: BaseDetector


def registry_error(e: BaseException, what: str, tracking_uri: str,
                   hint: str = "see `anomaly models list`") -> AnomalyError:
    """The project's error for a failed registry call.

    Args:
        e: what the MLflow client raised.
        what: what was looked up, for the message ("models:/m@champion: model 'm' has no
            alias 'champion'").
        tracking_uri: the registry asked.
        hint: how to find what exists, appended to a not-found message.

    Returns:
        :class:`ModelNotFoundError` when the registry answered that it has no such thing,
        :class:`RegistryUnavailable` for anything else (refused, timed out, 5xx...).
    """
    if isinstance(e, AnomalyError):
        return e
    if _not_found(e):
        return ModelNotFoundError(f"{what} in the registry at {tracking_uri} "
                                  f"({first_line(e)})" + (f"; {hint}" if hint else ""))
    return RegistryUnavailable(f"registry unreachable at {tracking_uri}: {first_line(e)}")


def get_version(parsed: ModelURI, tracking_uri: str) -> ModelVersion:
    """The registered version a ``models:/`` URI names now (an alias resolved once).

    Args:
        parsed: a registered model URI.
        tracking_uri: the registry.

    Returns:
        MLflow's model version.

    Raises:
        ModelNotFoundError: no such model, version or alias.
        RegistryUnavailable: the registry could not be reached.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias = parsed.name, parsed.alias
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, parsed.version)
    except Exception as e:  # MLflow's errors, connection refused, timeouts...
        if _not_found(e):
            raise no_such_version(parsed, tracking_uri, first_line(e)) from None
        raise registry_error(e, parsed.uri, tracking_uri) from None


def no_such_version(parsed: ModelURI, tracking_uri: str, detail: str) -> ModelNotFoundError:
    """The error for a registered URI whose model, version or alias the registry lacks."""
    what = f"alias '{parsed.alias}'" if parsed.alias else f"version {parsed.version}"
    return ModelNotFoundError(f"{parsed.uri}: model '{parsed.name}' has no {what} in the "
                              f"registry at {tracking_uri} ({detail}); see `anomaly models "
                              "list`")


class ModelCache:
    """Resolves model URIs in the registry and keeps the downloaded versions on disk.

    Args:
        cache_dir: folder for downloaded models (default: :func:`default_cache_dir`).
        tracking_uri: MLflow tracking and registry URI (default:
            :func:`~pipelines.registry.tracking.default_tracking_uri`).
    """

    def __init__(self, cache_dir: Path | str | None = None, tracking_uri: str | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.tracking_uri = tracking_uri or default_tracking_uri()

    def _folder(self, name: str) -> Path:
        return self.cache_dir / quote(name, safe="")

    def _alias_file(self, name: str, alias: str) -> Path:
        return self._folder(name) / f"alias-{quote(alias, safe='')}.json"

    def fetch(self, uri: str) -> FetchedModel:
        """Resolve a ``models:/`` URI now and download that version unless it is cached.

        Args:
            uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

        Returns:
            the source (version pinned) and the cached model folder.

        Raises:
            ConfigError: a malformed URI.
            ModelNotFoundError: the registry has no such model, version or alias.
            ModelFormatError: the version holds no ``artifacts/detector``.
            RegistryUnavailable: the registry or artifact store could not be reached.
        """
        parsed = parse_model_uri(uri, registered_only=True)
        mv = get_version(parsed, self.tracking_uri)
        source = ModelSource(uri=parsed.uri, name=parsed.name, version=str(mv.version),
                             alias=parsed.alias, run_id=mv.run_id)
        target = self._folder(parsed.name) / f"v{mv.version}"
        if not self._holds(target, source, mv.source):
            self._download(source, mv.source, target)
        if parsed.alias:
            _write_json(self._alias_file(parsed.name, parsed.alias), asdict(source))
        return FetchedModel(source, target)

    @staticmethod
    def _holds(target: Path, source: ModelSource, artifacts: str) -> bool:
        """Whether ``target`` is a complete download of this very version."""
        meta = _read_json(target / _META)
        return (meta is not None and meta.get("run_id") == source.run_id
                and meta.get("artifacts") == artifacts)

    def _download(self, source: ModelSource, artifacts: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        import mlflow
        from mlflow.tracking import MlflowClient

        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            try:
                # The version's own artifact location: a models:/ URI would be looked up in
                # the process-wide registry rather than in this one.
                client = MlflowClient(tracking_uri=self.tracking_uri,
                                      registry_uri=self.tracking_uri)
                location = client.get_model_version_download_uri(source.name, source.version)
                got = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=str(tmp), tracking_uri=self.tracking_uri,
                    registry_uri=self.tracking_uri))
            except OSError:  # the cache's own disk
                raise
            except Exception as e:
                if _not_found(e):  # the version exists, its files do not
                    raise ModelFormatError(f"{source.uri}: version {source.version} has no "
                                           f"artifacts ({first_line(e)})") from None
                raise RegistryUnavailable(f"registry unreachable at {self.tracking_uri}: "
                                          f"download of {source.uri} version "
                                          f"{source.version} failed: {first_line(e)}"
                                          ) from None
            check_model_folder(got, f"{source.uri} (version {source.version})")
            _write_json(got / _META, {**asdict(source), "artifacts": artifacts})
            replace_folder(got, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s version %s to %s", source.name, source.version, target)

    def cached(self, uri: str) -> FetchedModel | None:
        """The version of ``uri`` last downloaded, for when the registry is unreachable.

        Args:
            uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

        Returns:
            the cached version (``origin`` "cache"), or None if nothing is cached.
        """
        parsed = parse_model_uri(uri, registered_only=True)
        version = parsed.version
        if parsed.alias:
            ref = _read_json(self._alias_file(parsed.name, parsed.alias))
            if ref is None:
                return None
            version = ref["version"]
        target = self._folder(parsed.name) / f"v{version}"
        meta = _read_json(target / _META)
        if meta is None:
            return None
        known = {f.name for f in fields(ModelSource)}
        data = {k: v for k, v in meta.items() if k in known}
        data.update(uri=parsed.uri, alias=parsed.alias, origin="cache")
        return FetchedModel(ModelSource(**data), target)

    def load(self, uri: str, workdir: Path | str | None = None) -> LoadedModel:
        """Resolve, download (or reuse the cache) and load the detector of any model URI.

        Args:
            uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (through the cache),
                ``runs:/RUN_ID/PATH`` or an artifact URI (downloaded into ``workdir``), or a
                local model folder (read in place).
            workdir: a folder the caller owns and removes; needed for ``runs:/`` and artifact
                URIs only.

        Returns:
            the source, the model folder and its detector.

        Raises:
            ConfigError: a malformed URI.
            ModelNotFoundError: no such model, version, alias or run.
            ModelFormatError: the model holds no ``artifacts/detector``, or a detector of an
                unknown format.
            RegistryUnavailable: the registry or artifact store could not be reached.
        """
        parsed = parse_model_uri(uri)
        if parsed.kind == REGISTERED:
            fetched = self.fetch(parsed.uri)
        else:
            fetched = FetchedModel(ModelSource(uri=parsed.uri, name=parsed.name, version="",
                                               alias=None, run_id=parsed.run_id, origin="path"),
                                   self._local(parsed, workdir))
        from training.detector.persistence import load_detector

        return LoadedModel(fetched.source, fetched.path, load_detector(fetched.detector_dir))

    def _local(self, parsed: ModelURI, workdir: Path | str | None) -> Path:
        """The folder of an unregistered model: in place, or downloaded into ``workdir``."""
        if parsed.kind == PATH and Path(parsed.uri).is_dir():
            path = Path(parsed.uri)
        else:
            if workdir is None:
                raise ValueError(f"{parsed.uri}: a workdir is needed to download it")
            import mlflow

            try:
                path = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=parsed.uri, dst_path=str(Path(workdir) / "model"),
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri))
            except OSError:
                raise
            except Exception as e:
                raise registry_error(e, f"{parsed.uri}: no such run or artifact",
                                     self.tracking_uri, hint="") from None
        check_model_folder(path, parsed.uri)
        return path


def load_model(uri: str, *, tracking_uri: str | None = None,
               cache_dir: Path | str | None = None,
               workdir: Path | str | None = None) -> LoadedModel:
    """Resolve ``uri`` once, download it into the cache and load its detector.

    Args:
        uri: any form :func:`~pipelines.registry.uri.parse_model_uri` accepts.
        tracking_uri: the registry (default: the default tracking URI).
        cache_dir: the model cache (default: :func:`default_cache_dir`).
        workdir: where ``runs:/`` and artifact URIs are downloaded (the caller removes it).

    Returns:
        the source (version pinned), the model folder and its detector.
    """
    return ModelCache(cache_dir, tracking_uri).load(uri, workdir)


def check_model_folder(path: Path, what: str) -> None:
    """Raise :class:`ModelFormatError` unless ``path`` holds ``artifacts/detector``.

    Args:
        path: a downloaded model folder.
        what: the model, as the message names it.
    """
    if not (Path(path) / DETECTOR_DIR).is_dir():
        raise ModelFormatError(f"{what}: not an anomaly-detector model (no "
                               f"{DETECTOR_DIR.as_posix()} in it); register one with "
                               "`anomaly train`")


def _read_umask() -> int:
    """The process's umask, read once at import: reading it means setting it, which another
    thread creating a file in between would see."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_umask() -> int:
    """The process's umask (read at import): the permissions a new file or folder lacks."""
    return _UMASK


def replace_folder(tmp: Path, target: Path, marker: str = _META) -> None:
    """Rename the complete folder ``tmp`` to ``target``, replacing a stale copy (renamed aside
    first, so a reader never sees half of one); when another process renamed its own first,
    keep that one if it holds ``marker`` (written last: complete). ``tmp`` (a ``mkdtemp``
    folder, private to its owner) gets the permissions of a folder made under the umask."""
    tmp.chmod(0o777 & ~_UMASK)
    if target.exists():
        stale = target.with_name(f".stale-{target.name}-{os.getpid()}")
        try:
            target.rename(stale)
        except OSError:  # another process moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished the same folder first
        if not (target / marker).is_file():
            raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _not_found(e: BaseException) -> bool:
    """Whether MLflow answered that the thing asked for does not exist."""
    from mlflow.exceptions import MlflowException

    return isinstance(e, MlflowException) and e.error_code in NOT_FOUND_CODES
