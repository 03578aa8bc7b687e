"""The model store: the served versions by name, loaded at start and swapped on reload.

A slot holds one immutable :class:`~service.model.ServedModel`. A reload builds the new version
completely, then replaces the slot's reference in one assignment: requests already holding the
old version finish on it, later ones get the new one, none sees a half-loaded model. A reload
that fails leaves the slot as it was and records the error.

Models are resolved and downloaded by :mod:`pipelines.registry.download`, so a failure is
the same error class as in batch scoring: a reload whose alias was deleted answers
:class:`~training.errors.ModelNotFoundError` (404), a registry that cannot be reached
:class:`~training.errors.RegistryUnavailable` (503), a version without a detector
:class:`~training.errors.ModelFormatError` (422), each saying the current version keeps
serving. Only a failure outside the registry (the cache's disk, a detector that does not
load) is a :class:`~training.errors.ReloadError` (502).

Start from the cache (``start_from_cache``, on by default): a URI whose version is cached
(the version its alias pointed at when last resolved) is served from the cache at once, and a
background thread then asks the registry: the same version, and the slot's origin becomes
``registry``; another version (the alias moved while the service was down), and it is loaded
and swapped in as a reload would; the registry unreachable, and the cached version keeps
serving with a note, as at any start without the registry; the alias gone, and the cached
version keeps serving with the error recorded (``GET /v1/models`` shows both). A start with
nothing cached resolves the URI before serving, as with ``start_from_cache`` off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pipelines.registry.download import FetchedModel, ModelCache
from pipelines.registry.uri import parse_model_uri
from service.model import ServedModel
from service.settings import Settings
from training.detector.graph_files import GRAPH_DIR
from training.errors import (
    ConfigError,
    ModelFormatError,
    ModelNotFoundError,
    ModelNotReadyError,
    RegistryUnavailable,
    ReloadError,
    UnknownModelError,
)

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One configured model URI and what is served for it."""

    uri: str
    name: str
    current: ServedModel | None = None
    note: str | None = None  # why the slot is degraded (served from cache)
    last_error: str | None = None  # last failed load or reload
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class ModelStore:
    """Loads the configured models and hands them to requests.

    Args:
        settings: the service settings (models, cache folder, registry URI, limits).
        tracking_uri: the resolved MLflow URI.
    """

    def __init__(self, settings: Settings, tracking_uri: str):
        self.settings = settings
        self.tracking_uri = tracking_uri
        self.cache = ModelCache(settings.cache_dir, tracking_uri)
        self.slots: dict[str, Slot] = {}
        for uri in settings.models:
            name = parse_model_uri(uri, registered_only=True).name
            if name in self.slots:
                raise ConfigError(f"model '{name}' is listed twice ({self.slots[name].uri} and "
                                  f"{uri}); serve one version per name")
            self.slots[name] = Slot(uri=uri, name=name)

    def start(self) -> None:
        """Load every model: from the registry, or from the cache when it is unreachable.

        Raises:
            ModelNotFoundError: a URI that names no model, version or alias (fix the settings).
            ModelFormatError: a version that holds no detector.
        """
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT",
                              str(int(self.settings.registry_timeout_s)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                              str(self.settings.registry_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        for slot in self.slots.values():
            t0 = time.perf_counter()
            cached = self.cache.cached(slot.uri) if self.settings.start_from_cache else None
            if cached is not None:
                slot.current = self._load(cached)
                slot.note = (f"serving cached version {cached.source.version} while the "
                             "registry confirms it")
                threading.Thread(target=self._confirm, args=(slot,), daemon=True,
                                 name=f"confirm-{slot.name}").start()
            else:
                try:
                    slot.current = self._load(self.cache.fetch(slot.uri))
                except RegistryUnavailable as e:
                    self._load_cached(slot, str(e))
            if slot.current is not None:
                log.info("serving %s version %s (%s, %s) from %s, loaded in %.2fs", slot.name,
                         slot.current.source.version, slot.current.kind,
                         slot.current.runtime, slot.current.source.origin,
                         time.perf_counter() - t0)

    def _confirm(self, slot: Slot) -> None:
        """Ask the registry what the slot's URI names now; swap in another version if it
        names one (see the module docstring)."""
        with slot.lock:
            current = slot.current
            try:
                fetched = self.cache.fetch(slot.uri)
                if (fetched.source.version, fetched.source.run_id) == \
                        (current.source.version, current.source.run_id):
                    slot.current = replace(current, source=fetched.source)
                else:
                    slot.current = self._load(fetched)
                    log.info("%s: the registry names version %s (cached: %s); swapped in",
                             slot.name, fetched.source.version, current.source.version)
                slot.note = None
            except RegistryUnavailable as e:
                slot.note = f"at start: {e}; serving cached version {current.source.version}"
                log.warning("%s: %s", slot.name, slot.note)
            except Exception as e:  # noqa: BLE001 - a background thread: record, keep serving
                slot.last_error = f"at start: {e}"
                slot.note = f"serving cached version {current.source.version}"
                log.error("%s: %s; %s", slot.name, slot.last_error, slot.note)

    def _load(self, fetched: FetchedModel) -> ServedModel:
        graph_dir = fetched.path / GRAPH_DIR if self.settings.graph_runtime else None
        return ServedModel.load(fetched.source, fetched.detector_dir, self.settings.max_records,
                                threads=self.settings.torch_threads, graph_dir=graph_dir)

    def _load_cached(self, slot: Slot, reason: str) -> None:
        cached = self.cache.cached(slot.uri)
        if cached is None:
            slot.last_error = (f"{reason}; and no cached copy of {slot.uri} in "
                               f"{self.settings.cache_dir}")
            log.error("%s: not loaded: %s", slot.name, slot.last_error)
            return
        slot.current = self._load(cached)
        slot.note = (f"at start: {reason}; serving cached version "
                     f"{slot.current.source.version}")
        log.warning("%s: %s", slot.name, slot.note)

    def get(self, name: str) -> ServedModel:
        """The version served for ``name`` now.

        Raises:
            UnknownModelError: no model of that name is configured.
            ModelNotReadyError: configured but not loaded.
        """
        slot = self.slots.get(name)
        if slot is None:
            raise UnknownModelError(f"no model named {name!r}; this service serves "
                                    f"{sorted(self.slots) or 'no models'} (GET /v1/models)")
        model = slot.current
        if model is None:
            raise ModelNotReadyError(f"model {name!r} is not loaded: {slot.last_error}; "
                                     f"POST /v1/models/{name}/reload once the registry is back")
        return model

    def loaded(self) -> list[ServedModel]:
        """Every version served now."""
        return [s.current for s in self.slots.values() if s.current is not None]

    def reload(self, name: str) -> tuple[ServedModel | None, ServedModel]:
        """Re-resolve ``name``'s URI in the registry and swap in what it points at.

        Returns:
            ``(previous, current)`` versions.

        Raises:
            UnknownModelError: no model of that name is configured.
            ModelNotFoundError: the alias or version is gone from the registry.
            RegistryUnavailable: the registry could not be reached.
            ModelFormatError: the new version holds no detector, or one of unknown format.
            ReloadError: any other failure (the cache's disk...).

            In every case the current version keeps serving, and the message says so.
        """
        if name not in self.slots:
            self.get(name)
        slot = self.slots[name]
        with slot.lock:
            previous = slot.current
            try:
                new = self._load(self.cache.fetch(slot.uri))
            except (ModelNotFoundError, RegistryUnavailable, ModelFormatError, ConfigError,
                    OSError) as e:
                slot.last_error = f"reload failed: {e}"
                keeps = (f"still serving version {previous.source.version}" if previous
                         else "nothing is served")
                log.error("%s: %s; %s", name, slot.last_error, keeps)
                # The registry's own failures keep their class (and so their status); the
                # rest is the reload's.
                cls = type(e) if isinstance(e, (ModelNotFoundError, RegistryUnavailable,
                                                 ModelFormatError)) else ReloadError
                raise cls(f"{slot.last_error}; {keeps}") from None
            slot.current, slot.note, slot.last_error = new, None, None
        log.info("%s: reloaded, version %s -> %s", name,
                 previous.source.version if previous else None, new.source.version)
        return previous, new

    def status(self) -> list[dict[str, Any]]:
        """Per configured model: loaded or not, which version, from where, and any problem."""
        out = []
        for slot in self.slots.values():
            cur = slot.current
            out.append({"name": slot.name, "uri": slot.uri, "loaded": cur is not None,
                        "version": cur.source.version if cur else None,
                        "origin": cur.source.origin if cur else None,
                        "loaded_at": cur.loaded_at.isoformat() if cur else None,
                        "note": slot.note, "last_error": slot.last_error})
        return out
