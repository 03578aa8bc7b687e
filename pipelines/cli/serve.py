"""``anomaly serve``: the HTTP scoring service for registered models."""

from __future__ import annotations

import click

from pipelines.cli.options import Command, Globals


@click.command(cls=Command)
@click.option("--model", "models", multiple=True, metavar="URI",
              help="models:/NAME@ALIAS or models:/NAME/VERSION; repeat for several.")
@click.option("--host", show_default="127.0.0.1", help="Address to listen on.")
@click.option("--port", type=int, show_default="8000", help="Port to listen on.")
@click.option("--config", metavar="FILE",
              help="YAML settings file (keys as in ANOMALY_*, lower case).")
@click.option("--cache-dir", metavar="DIR", help="Where downloaded models are kept.")
@click.option("--strict", is_flag=True,
              help="Reject records carrying columns the model does not read.")
@click.pass_obj
def serve(state: Globals, models: tuple[str, ...], host: str | None, port: int | None,
          config: str | None, cache_dir: str | None, strict: bool) -> int:
    """Run the scoring service (HTTP) for registered models.

    Serves POST /v1/models/NAME/score, docs at /docs. Every flag can also come from the
    environment (ANOMALY_MODELS, ANOMALY_PORT, ANOMALY_API_KEYS, ...) or a YAML settings
    file; flags win.
    """
    if config is not None:
        from pipelines.train.config import load_yaml

        load_yaml(config)  # a missing or malformed file: ConfigError naming it and the line
    from service.app import serve as run_service
    from service.settings import load_settings

    run_service(load_settings(config, models=list(models) or None, host=host, port=port,
                              tracking_uri=state.tracking_uri, cache_dir=cache_dir,
                              strict=strict or None))
    return 0
