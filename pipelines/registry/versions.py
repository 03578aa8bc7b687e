"""Model versions in the registry: register (all or nothing), promote an alias, list.
"""

from __future__ import annotations

import logging

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.registry.download import get_version, registry_error
from pipelines.registry.uri import REGISTERED, ModelURI

log = logging.getLogger(__name__)

# The primary score's AUROC as a training run logs it; the unprefixed name of older runs after it.
AUROC_METRICS = ("eval/auroc", "auroc")


def register(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Create a model version, tag it and set the alias; all or nothing, even when interrupted
    (Ctrl-C, or SIGTERM, which the CLI turns into an interruption) while MLflow registers it.

    ``tags`` must hold the training run's ``run_id``: what a failed registration leaves is
    found by it (a version whose number never reached this process), and taken back.

    Returns:
        the new version number, as a string.
    """
    client = MlflowClient()
    existed = _exists(client, name)
    try:
        mv = mlflow.register_model(model_uri, name, tags=tags)
        client.set_registered_model_alias(name, alias, mv.version)
    except BaseException:
        _take_back(client, name, tags["run_id"], existed)
        raise
    return str(mv.version)


def _exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def _take_back(client: MlflowClient, name: str, run_id: str, existed: bool) -> None:
    """Delete the versions of ``name`` that run ``run_id`` registered, and ``name`` itself
    when this registration created it; best effort (the registry may be what failed)."""
    try:
        for mv in client.search_model_versions(f"name = '{name}'"):
            if mv.run_id == run_id or (mv.tags or {}).get("run_id") == run_id:
                client.delete_model_version(name, mv.version)
        if not existed and not client.search_model_versions(f"name = '{name}'"):
            client.delete_registered_model(name)
    except Exception as e:  # the original error is the one to report
        log.warning("%s: could not take back a failed registration: %s", name, e)


def promote(name: str, version: str, alias: str) -> None:
    """Point ``alias`` at ``version`` of ``name``, in the registry this process uses.

    Args:
        name: registered model name.
        version: the version to promote.
        alias: the alias to set (``champion``).

    Raises:
        ModelNotFoundError: no such model or version.
        RegistryUnavailable: the registry could not be reached.
    """
    tracking_uri = mlflow.get_registry_uri()
    uri = f"models:/{name}/{version}"
    get_version(ModelURI(uri, REGISTERED, name, version=str(version)), tracking_uri)
    try:
        MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri
                     ).set_registered_model_alias(name, alias, str(version))
    except Exception as e:  # MLflow's errors, connection refused, timeouts...
        raise registry_error(e, f"{uri}: cannot set alias '{alias}'", tracking_uri) from None


def list_models() -> list[dict]:
    """One row per model version: name, version, aliases, kind, primary score, threshold, AUROC."""
    client = MlflowClient()
    rows = []
    for rm in client.search_registered_models():
        aliases_by_version: dict[str, list[str]] = {}
        for alias, v in (rm.aliases or {}).items():
            aliases_by_version.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            auroc = None
            if mv.run_id:
                try:
                    metrics = client.get_run(mv.run_id).data.metrics
                    auroc = next((metrics[k] for k in AUROC_METRICS if k in metrics), None)
                except MlflowException:
                    auroc = None
            rows.append({
                "name": rm.name,
                "version": str(mv.version),
                "aliases": ",".join(sorted(aliases_by_version.get(str(mv.version), []))),
                "kind": mv.tags.get("kind", ""),
                "primary_score": mv.tags.get("primary_score", ""),
                "threshold": mv.tags.get("threshold", ""),
                "auroc": "" if auroc is None else f"{auroc:.4f}",
                "run_id": mv.run_id or "",
            })
    rows.sort(key=lambda r: (r["name"], int(r["version"])))
    return rows

