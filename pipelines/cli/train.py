"""``anomaly train``: train, calibrate, evaluate, log and register one detector."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from pipelines.cli.options import Command, Globals, IntList
from pipelines.cli.text import format_training
from pipelines.train.config import TrainConfig
from training.detector.image_params import DENSE_TWIN, IMAGE_KINDS, ImageDetectorParams
from training.detector.sequence_params import SEQUENCE_KINDS
from training.nn.names import ACTIVATION_NAMES, ARCHITECTURES
from training.params import (
    CHANNEL_NORMS,
    GEOMETRIES,
    KINDS,
    MAX_EPOCHS,
    NEIGHBOUR_SCORES,
    SCORE_KINDS,
    SLOW_RULES,
    DetectorParams,
)

# The flags, by the config keys they override (MODEL_FLAGS: keys under ``model:``).
TOP_FLAGS = ("data", "kind", "name", "label_column", "id_column", "eval_data", "target_fpr",
             "alias", "experiment", "seed", "register", "normal_class")
MODEL_FLAGS = ("hidden_sizes", "latent_dim", "activation", "dropout", "batch_size",
               "learning_rate", "max_epochs", "patience", "noise_std", "beta", "primary_score",
               "image_size", "channels", "time_column", "series_column", "window",
               "architecture", "slow_channels", "channel_norm", "geometry")

_FIELDS = TrainConfig.__dataclass_fields__
_PRIMARY_DEFAULTS = ", ".join(
    [f"{kind}: {DetectorParams(kind=kind).primary_score}" for kind in KINDS]
    + [f"{kind}: {ImageDetectorParams.default_primary[twin]}" for kind, twin in DENSE_TWIN.items()])


_PRIMARY_CHOICES = list(dict.fromkeys(
    [*SCORE_KINDS["vae"], *NEIGHBOUR_SCORES, *ImageDetectorParams(kind="conv_vae").score_kinds]))


def _default(name: str) -> Any:
    return _FIELDS[name].default


@click.command(cls=Command, epilog="A flag given overrides the same key of the --config file; "
               "keys in neither take the defaults shown.")
@click.option("--config", metavar="FILE",
              help="YAML file with the same keys as the flags (flags win).")
@click.option("--data", metavar="PATH",
              help="CSV or Parquet file of normal records; for conv_ae/conv_vae a folder of "
              "images (MVTec layout too), an .npz or an IDX file.")
@click.option("--kind", type=click.Choice([*KINDS, *IMAGE_KINDS, *SEQUENCE_KINDS]),
              default=_default("kind"),
              help="Model kind: ae, vae for tables; conv_ae, conv_vae for images; seq_ae, "
              "seq_vae for multivariate time series.")
@click.option("--name", help="Registered model name (not empty, no '/' or ':').")
@click.option("--label-column", metavar="COLUMN",
              help="Column of labels (1 = anomaly): anomalies are held out for evaluation, "
              "never trained on.")
@click.option("--id-column", metavar="COLUMN", help="Column identifying records (not a feature).")
@click.option("--eval-data", metavar="PATH",
              help="Separate labelled CSV/Parquet file for evaluation (images: a folder with "
              "good/ and one folder per defect, or .npz/IDX).")
@click.option("--normal-class", metavar="CLASS",
              help="Images labelled by class (IDX, .npz): the class that is normal; the others "
              "are anomalies kept for evaluation.")
@click.option("--target-fpr", type=float, default=_default("target_fpr"),
              help="False-positive rate the thresholds aim at on held-out normal records.")
@click.option("--alias", default=_default("alias"),
              help="Registry alias set on the new version.")
@click.option("--experiment", default=_default("experiment"), help="MLflow experiment.")
@click.option("--seed", type=int, default=_default("seed"),
              help="Random seed for splits and training.")
@click.option("--no-register", is_flag=True,
              help="Log the run but do not register a model version.")
@click.option("--hidden-sizes", type=IntList(), show_default="from the data's width",
              help="Comma-separated encoder widths, e.g. 64,32.")
@click.option("--latent-dim", type=int, show_default="from the data's width",
              help="Size of the latent code.")
@click.option("--activation", type=click.Choice(ACTIVATION_NAMES),
              default=DetectorParams.activation, help="Activation of the hidden layers.")
@click.option("--dropout", type=float, default=DetectorParams.dropout,
              help="Dropout rate after each hidden layer.")
@click.option("--batch-size", type=int, show_default="from the number of rows",
              help="Records per gradient step.")
@click.option("--learning-rate", type=float, default=DetectorParams.learning_rate,
              help="Adam learning rate.")
@click.option("--epochs", "max_epochs", type=int,
              show_default=f"from the data's size, at most {MAX_EPOCHS}",
              help="Maximum epochs (early stopping may end sooner).")
@click.option("--patience", type=int, show_default=f"{DetectorParams.patience}; images "
              f"{ImageDetectorParams.patience}", help="Early-stopping patience in epochs.")
@click.option("--noise-std", type=float, default=DetectorParams.noise_std,
              help="Denoising: std of the noise added to inputs while training (0 = off).")
@click.option("--beta", type=float, default=DetectorParams.beta,
              help="VAE: weight of the KL term.")
@click.option("--primary-score", type=click.Choice(_PRIMARY_CHOICES),
              show_default=_PRIMARY_DEFAULTS,
              help="Score that decides is_anomaly (an ae has recon, and knn and combined "
              "with neighbours; the *_vs_png and *_vs_local scores are the image kinds').")
@click.option("--image-size", type=IntList(), metavar="H,W",
              show_default="the images' own size, at most 64 a side",
              help="Images: HEIGHT,WIDTH (or one number) to resize to.")
@click.option("--channels", type=click.Choice(["1", "3"]), show_default="from the images",
              help="Images: 1 grayscale or 3 RGB.")
@click.option("--time-column", metavar="COLUMN",
              help="Sequences: column of timestamps (numbers or dates), strictly increasing "
              "per series; without it the rows are in time order.")
@click.option("--series-column", metavar="COLUMN",
              help="Sequences: column naming the series (one model for many series); a "
              "--data folder makes each file a series.")
@click.option("--window", type=int, show_default="from the series' autocorrelation",
              help="Sequences: steps per window.")
@click.option("--architecture", type=click.Choice(ARCHITECTURES), show_default="conv",
              help="Sequences: 1-D convolutions or a GRU.")
@click.option("--slow-channels", type=click.Choice(SLOW_RULES), show_default="centre",
              help="Sequences: centre, in every window, each channel that does not "
              "decorrelate within a window (its level is not scored), or keep every level.")
@click.option("--channel-norm", type=click.Choice(CHANNEL_NORMS), show_default="std",
              help="Sequences: a window's score counts each channel's error above its normal "
              "level in units of its normal spread (std), or the mean of the errors (mean).")
@click.option("--geometry", type=click.Choice(GEOMETRIES), show_default="auto",
              help="Tables: compare rows column by column, each standardised (columns), or as "
              "vectors by their direction (direction: embeddings, pixels; a few columns, at most "
              "5%, in a much larger unit are set apart, standardised on their own); auto: "
              "direction for 256 or more numeric columns and no categorical one.")
@click.pass_context
def train(ctx: click.Context, config: str | None, no_register: bool, channels: str | None,
          **flags: Any) -> int:
    """Train, calibrate, evaluate, log and register a detector.

    Trains an AE or VAE on normal records (CSV or Parquet; images for conv_ae/conv_vae),
    calibrates thresholds on held-out normals, evaluates on labelled data if given, logs the
    run to MLflow and registers the model with an alias. Bad input or configuration fails
    before any MLflow run.
    """
    from pipelines.train.run import run_training

    # Only the flags given override the config file; the defaults shown are the config's own.
    given = {k: v for k, v in flags.items()
             if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    given["register"] = False if no_register else None
    given["channels"] = None if channels is None else int(channels)
    overrides: dict[str, Any] = {k: given.get(k) for k in TOP_FLAGS}
    overrides["model"] = {k: given.get(k) for k in MODEL_FLAGS}
    cfg = TrainConfig.from_sources(config, overrides)
    state = ctx.find_object(Globals)
    click.echo(format_training(run_training(cfg, state.tracking_uri)))
    return 0
