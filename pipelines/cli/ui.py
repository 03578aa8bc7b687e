"""``anomaly ui``: the MLflow UI on the same store, as this very process."""

from __future__ import annotations

import os
import sys

import click

from pipelines.cli.options import Command, Globals


@click.command(cls=Command)
@click.option("--host", default="127.0.0.1", help="Address the UI listens on.")
@click.option("--port", type=int, default=5000, help="Port the UI listens on.")
@click.pass_obj
def ui(state: Globals, host: str, port: int) -> int:
    """Open the MLflow UI on the store the other commands use.

    This process becomes mlflow ui (exec): signals such as SIGTERM or Ctrl-C reach MLflow
    itself, which stops its server workers, so nothing is left holding the port.
    """
    from pipelines.registry.tracking import default_tracking_uri

    uri = state.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        click.echo(f"the store is an MLflow server already: open {uri}")
        return 0
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port)]
    click.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # does not return
