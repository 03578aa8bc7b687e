"""``anomaly demo``: the whole product on a table that ships with scikit-learn."""

from __future__ import annotations

import click

from pipelines.cli.options import Command


@click.command(cls=Command, uses_store=False)
@click.option("--workdir", default="demo-run", help="Folder for the data and the MLflow store.")
@click.option("--epochs", type=click.IntRange(min=1), show_default="automatic",
              help="Cap on epochs.")
def demo(workdir: str, epochs: int | None) -> int:
    """Train, compare and register an AE and a VAE on sample data.

    Trains both kinds on the breast-cancer table that ships with scikit-learn, promotes the
    better one to champion, trains an image model too, and scores a few records through the
    HTTP service.
    Everything (data, MLflow store, model cache) goes into --workdir.
    """
    from pipelines.demo.run import run_demo

    return run_demo(workdir, epochs)
