"""Model URIs resolved through the MLflow registry, downloaded once into a local cache.

Cache layout (``cache_dir``)::

    <name>/v<version>/              the registered model's files (MLmodel, artifacts/detector/...)
    <name>/v<version>/source.json   written last: the download is complete
    <name>/alias-<alias>.json       the version the alias pointed at when last resolved

When the registry cannot be reached, :meth:`ModelCache.cached` gives the version last resolved,
so a restart during a registry outage serves what it served before.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from service.model import ModelSource
from training.errors import ConfigError

log = logging.getLogger(__name__)

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
_MISSING = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
DETECTOR_DIR = Path("artifacts") / "detector"


class RegistryUnavailable(Exception):
    """The registry (or its artifact store) could not be reached: the environment's fault."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    m = _URI.match(uri.strip())
    if not m:
        raise ConfigError(f"model URI {uri!r}: expected models:/NAME@ALIAS (e.g. "
                          "models:/my-model@champion) or models:/NAME/VERSION")
    return m["name"], m["alias"], m["version"]


class ModelCache:
    """Resolves model URIs in the registry and keeps the downloaded versions on disk.

    Args:
        cache_dir: folder for downloaded models.
        tracking_uri: MLflow tracking and registry URI.
    """

    def __init__(self, cache_dir: Path, tracking_uri: str):
        self.cache_dir = Path(cache_dir)
        self.tracking_uri = tracking_uri

    def _folder(self, name: str) -> Path:
        return self.cache_dir / quote(name, safe="")

    def fetch(self, uri: str) -> tuple[ModelSource, Path]:
        """Resolve ``uri`` now and download that version unless it is cached already.

        Returns:
            the source and the folder holding the saved detector.

        Raises:
            ConfigError: the registry has no such model, version or alias.
            RegistryUnavailable: the registry or artifact store could not be reached.
        """
        name, alias, version = parse_model_uri(uri)
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            mv = (client.get_model_version_by_alias(name, alias) if alias
                  else client.get_model_version(name, version))
        except MlflowException as e:
            if e.error_code in _MISSING:
                what = f"alias '{alias}'" if alias else f"version {version}"
                raise ConfigError(f"{uri}: model '{name}' has no {what} in the registry at "
                                  f"{self.tracking_uri}; see `anomaly models list`") from None
            raise RegistryUnavailable(_first_line(e)) from e
        except Exception as e:  # connection refused, timeouts, DNS...
            raise RegistryUnavailable(_first_line(e)) from e
        source = ModelSource(uri=uri, name=name, version=str(mv.version), alias=alias,
                             run_id=mv.run_id)
        target = self._folder(name) / f"v{mv.version}"
        if not (target / "source.json").is_file():
            self._download(source, target)
        if alias:
            self._write_json(self._folder(name) / f"alias-{quote(alias, safe='')}.json",
                             asdict(source))
        return source, target / DETECTOR_DIR

    def _download(self, source: ModelSource, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{source.name}/{source.version}", dst_path=str(tmp))
            if not (tmp / DETECTOR_DIR).is_dir():
                raise ConfigError(f"{source.uri}: version {source.version} holds no "
                                  f"{DETECTOR_DIR}; it was not logged by `anomaly train`")
            (tmp / "source.json").write_text(json.dumps(asdict(source)))
            try:
                tmp.rename(target)
            except OSError:  # another process finished the same download first
                if not (target / "source.json").is_file():
                    raise
        except (ConfigError, OSError):
            raise
        except Exception as e:
            raise RegistryUnavailable(f"download of {source.uri} v{source.version} failed: "
                                      f"{_first_line(e)}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s version %s to %s", source.name, source.version, target)

    def cached(self, uri: str) -> tuple[ModelSource, Path] | None:
        """The version of ``uri`` last downloaded, or None if nothing is cached."""
        name, alias, version = parse_model_uri(uri)
        folder = self._folder(name)
        if alias:
            ref = folder / f"alias-{quote(alias, safe='')}.json"
            if not ref.is_file():
                return None
            version = json.loads(ref.read_text())["version"]
        meta = folder / f"v{version}" / "source.json"
        if not meta.is_file():
            return None
        data = {**json.loads(meta.read_text()), "uri": uri, "alias": alias, "origin": "cache"}
        return ModelSource(**data), meta.parent / DETECTOR_DIR

    @staticmethod
    def _write_json(path: Path, data: dict) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
