"""``anomaly ui``: the MLflow UI on the same store, as this very process."""

from __future__ import annotations

import logging
import os
import sys

import click

from pipelines.cli.options import Command, Globals

log = logging.getLogger(__name__)

# MLflow 3.17's UI keeps one GenAI / model-training switch for every experiment (GenAI unless
# the user flips it); this URL parameter opens a page in the model-training view.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
MAX_LINKS = 5


def runs_links(tracking_uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment name, URL of its runs table in the model-training view) for the training
    experiments of the store, most recently updated first; empty if the store cannot be read."""
    from mlflow.tracking import MlflowClient

    from pipelines.registry.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING

    try:
        experiments = MlflowClient(tracking_uri=tracking_uri).search_experiments(
            filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{MODEL_TRAINING}'",
            max_results=MAX_LINKS, order_by=["last_update_time DESC"])
    except Exception as e:  # a new or unreachable store: the UI itself will say more
        log.debug("cannot list the experiments of %s: %s", tracking_uri, e)
        return []
    return [(e.name, f"{base}/#/experiments/{e.experiment_id}/runs?{MODEL_TRAINING_VIEW}")
            for e in experiments]


def _echo_links(tracking_uri: str, base: str) -> None:
    links = runs_links(tracking_uri, base)
    click.echo(f"experiments: {base}/#/experiments?{MODEL_TRAINING_VIEW}")
    width = max((len(name) for name, _ in links), default=0)
    for name, url in links:
        click.echo(f"  {name.ljust(width)}  {url}")


@click.command(cls=Command)
@click.option("--host", default="127.0.0.1", help="Address the UI listens on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, help="Port the UI listens on.")
@click.pass_obj
def ui(state: Globals, host: str, port: int) -> int:
    """Open the MLflow UI on the store the other commands use.

    Prints a link to the runs table of each training experiment, in MLflow's model-training
    view. This process then becomes mlflow ui (exec): signals such as SIGTERM or Ctrl-C reach
    MLflow itself, which stops its server workers, so nothing is left holding the port.
    """
    from pipelines.registry.tracking import default_tracking_uri

    uri = state.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        click.echo(f"the store is an MLflow server already: open {uri}")
        _echo_links(uri, uri.rstrip("/"))
        return 0
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port)]
    click.echo(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    _echo_links(uri, f"http://{host}:{port}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # does not return
