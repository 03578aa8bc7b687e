"""Model versions in the registry: register (all or nothing), promote an alias, list.
"""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from training.errors import AnomalyError


class RegistryError(AnomalyError):
    """A registry lookup the caller got wrong (unknown model, version or alias)."""


def register(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Create a model version, tag it and set the alias; all or nothing.

    Returns:
        the new version number, as a string.
    """
    client = MlflowClient()
    mv = mlflow.register_model(model_uri, name, tags=tags)
    try:
        client.set_registered_model_alias(name, alias, mv.version)
    except BaseException:
        # A version without its alias is a half-registered model: take it back.
        client.delete_model_version(name, mv.version)
        raise
    return str(mv.version)


def promote(name: str, version: str, alias: str) -> None:
    """Point ``alias`` at ``version`` of ``name``."""
    client = MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"model '{name}' has no version {version}") from None
        raise
    client.set_registered_model_alias(name, alias, str(version))


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
                    auroc = client.get_run(mv.run_id).data.metrics.get("auroc")
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

