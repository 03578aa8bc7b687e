"""``anomaly models``: list registered versions, point an alias at a version."""

from __future__ import annotations

import click

from pipelines.cli.options import Globals, Group
from pipelines.cli.text import format_models


@click.group(cls=Group)
def models() -> None:
    """List registered models, promote a version to an alias."""


@models.command("list")
@click.pass_obj
def list_(state: Globals) -> int:
    """Every registered version with its aliases, kind, threshold and AUROC."""
    from pipelines.registry.tracking import use_tracking_uri
    from pipelines.registry.versions import list_models

    use_tracking_uri(state.tracking_uri)
    click.echo(format_models(list_models()))
    return 0


@models.command()
@click.argument("name")
@click.option("--version", required=True, help="Model version the alias points at.")
@click.option("--alias", default="champion", help="Alias to set (moved if it exists).")
@click.pass_obj
def promote(state: Globals, name: str, version: str, alias: str) -> int:
    """Point an alias (e.g. champion) at a version of model NAME."""
    from pipelines.registry.tracking import use_tracking_uri
    from pipelines.registry.versions import promote as promote_version

    use_tracking_uri(state.tracking_uri)
    promote_version(name, version, alias)
    click.echo(f"models:/{name}@{alias} -> version {version}")
    return 0
