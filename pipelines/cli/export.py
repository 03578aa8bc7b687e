"""``anomaly export``: a registered model as an ONNX graph with a JSON sidecar."""

from __future__ import annotations

import tempfile

import click

from pipelines.cli.options import Command, Globals

FORMATS = ("onnx",)


@click.command(cls=Command)
@click.argument("model", metavar="MODEL_URI")
@click.option("--format", "format_", type=click.Choice(FORMATS), default="onnx",
              help="Export format.")
@click.option("--output", required=True, metavar="FILE",
              help="The graph file to write (model.onnx); the sidecar goes beside it "
              "(model.onnx.json).")
@click.option("--cache-dir", metavar="DIR", show_default="the model cache the service uses",
              help="Where registered models are downloaded.")
@click.pass_obj
def export(state: Globals, model: str, format_: str, output: str, cache_dir: str | None) -> int:
    """Export MODEL_URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a model
    folder) as a graph from the preprocessed input matrix to every score kind.

    The graph takes x, float32 (n, n_features), and returns one float64 output per score
    kind (a VAE's Monte-Carlo draws baked in). The JSON sidecar holds the preprocessing, the
    thresholds and the calibration scores (for p-values), and names any score kind a graph
    cannot compute.
    """
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise click.ClickException("ONNX export needs onnx and onnxscript (dependencies "
                                   "of this package): pip install onnx onnxscript") from None
    from pipelines.export.onnx import export_onnx, sidecar_path
    from pipelines.registry.download import load_model
    from pipelines.registry.tracking import use_tracking_uri

    uri = use_tracking_uri(state.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="anomaly-export-") as tmp:
        loaded = load_model(model, tracking_uri=uri, cache_dir=cache_dir, workdir=tmp)
        s = loaded.source
        sidecar = export_onnx(loaded.detector, output,
                              source={"uri": s.uri, "name": s.name, "version": s.version,
                                      "run_id": s.run_id})
    version = f" version {s.version}" if s.version else ""
    click.echo(f"{s.name}{version} -> {output} (outputs {', '.join(sidecar['outputs'])}; "
               f"input x: float32 (n, {sidecar['input']['shape'][1]}))")
    click.echo(f"sidecar: {sidecar_path(output)} (preprocessing, thresholds, calibration "
               "scores)")
    for kind, why in sidecar["not_exported"].items():
        click.echo(f"not exported: {kind}: {why}")
    return 0
