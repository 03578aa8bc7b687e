"""The image side of the training pipeline: load and split images, log their pictures and model.

:func:`pipelines.train.run.run_training` calls these for ``conv_ae`` / ``conv_vae``; the run itself
(metrics, thresholds, registry) is the same as for tables.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

from pipelines.registry.pyfunc import log_pyfunc
from pipelines.train import image_plots
from pipelines.train.config import TrainConfig
from pipelines.train.plots import close
from pipelines.train.run import MIN_NORMAL_ROWS, Splits
from training.data.images import load_images
from training.detector.image import ImageDetector
from training.detector.image_params import ImageDetectorParams
from training.errors import DataError
from training.preprocessing.images import ImagePreprocessor, ImageSet, to_png

log = logging.getLogger(__name__)

GRID_COLUMNS = 6  # normal and anomalous examples each in the reconstruction grid


@dataclass
class ImageSplits(Splits):
    """:class:`Splits` of images: arrays (n, C, H, W), plus what the pictures need."""

    eval_classes: np.ndarray | None = None
    eval_names: list[str] | None = None


def prepare(cfg: TrainConfig, params: ImageDetectorParams
            ) -> tuple[ImageSplits, ImageDetector, dict]:
    """Read and split the images, and build the detector; every input check happens here.

    Returns:
        ``(splits, detector, data_params)``: data_params are extra run parameters.
    """
    size = tuple(params.image_size) if params.image_size else None
    data, given_eval = load_images(cfg.data, ImagePreprocessor(size, params.channels),
                                   cfg.normal_class)
    pre = ImagePreprocessor(size, params.channels).fit(data.images, cfg.data)
    if cfg.eval_data:
        first, test = load_images(cfg.eval_data, pre, cfg.normal_class)
        given_eval = test if test is not None else first  # an MVTec root: its test/ images
        if given_eval.labels is None:
            raise DataError(f"{cfg.eval_data}: evaluation images need labels: a folder with "
                            "good/ and one folder per defect, or an .npz/IDX with labels")
    splits = split_images(cfg, data, given_eval)
    detector = ImageDetector(**{**params.to_dict(), "image_size": list(pre.shape[1:]),
                                "channels": pre.shape[0]})
    data_params = {"normal_class": cfg.normal_class, "image_shape": "x".join(map(str, pre.shape)),
                   "n_images": len(data)}
    return splits, detector, data_params


def split_images(cfg: TrainConfig, data: ImageSet, given_eval: ImageSet | None) -> ImageSplits:
    """Normal images cut into fit / calibration (and evaluation, with labelled anomalies)."""
    rng = np.random.default_rng(cfg.seed)
    normal = np.flatnonzero(data.labels == 0) if data.labels is not None else np.arange(len(data))
    normal = rng.permutation(normal)
    n = len(normal)
    if n < MIN_NORMAL_ROWS:
        raise DataError(f"{cfg.data}: {n} normal images; at least {MIN_NORMAL_ROWS} are needed "
                        "to split into training, validation and calibration sets")
    evaluation, n_eval = given_eval, 0
    anomalies = np.flatnonzero(data.labels == 1) if data.labels is not None else []
    if given_eval is None and len(anomalies):
        n_eval = int(round(cfg.eval_fraction * n))
        evaluation = data.subset(np.r_[normal[:n_eval], anomalies])
    n_cal = max(10, int(round(cfg.calibration_fraction * n)))
    calibration, fit = normal[n_eval : n_eval + n_cal], normal[n_eval + n_cal :]
    return ImageSplits(
        fit=data.images[fit], calibration=data.images[calibration],
        eval_X=None if evaluation is None else evaluation.images,
        eval_y=None if evaluation is None else evaluation.labels,
        eval_classes=None if evaluation is None else evaluation.classes,
        eval_names=None if evaluation is None else evaluation.names,
    )


def fingerprint(path: str) -> str:
    """sha256 over a folder's image files (relative names and bytes), or one file's bytes."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def dataset(splits: ImageSplits, cfg: TrainConfig):
    """The training images as an MLflow dataset input."""
    return mlflow.data.from_numpy(splits.fit, source=str(Path(cfg.data).resolve()),
                                  name=Path(cfg.data).name)


def log_pictures(detector: ImageDetector, splits: ImageSplits, cfg: TrainConfig) -> None:
    """Reconstructions and maps, VAE samples and interpolation, the latent space."""
    rng = np.random.default_rng(cfg.seed)
    groups = [("normal", splits.calibration)]
    if splits.eval_X is not None:
        groups = [("normal", splits.eval_X[splits.eval_y == 0]),
                  ("anomalous", splits.eval_X[splits.eval_y == 1])]
    picked, captions = [], []
    for name, images in groups:
        k = min(GRID_COLUMNS, len(images))
        chosen = images[np.sort(rng.choice(len(images), size=k, replace=False))] if k else images
        picked.append(chosen)
        scores = detector.raw_scores(chosen)[detector.primary_score] if k else []
        captions += [f"{name}\n{s:.3g}" for s in scores]
    inputs = np.concatenate(picked)
    fig = image_plots.reconstruction_grid(inputs, detector.reconstruct(inputs),
                                          detector.anomaly_maps(inputs), captions)
    _log(fig, "images/reconstructions.png")
    if detector._variational:
        fig = image_plots.image_strip(detector.sample(16, seed=cfg.seed),
                                      "samples from the prior N(0, I)", columns=8)
        _log(fig, "images/prior_samples.png")
        a, b = splits.calibration[:1], splits.calibration[1:2]
        fig = image_plots.image_strip(detector.interpolate(a, b, steps=10),
                                      "interpolation between two normal images")
        _log(fig, "images/interpolation.png")
    if splits.eval_X is not None:
        colour = splits.eval_classes if splits.eval_classes is not None else splits.eval_y
        fig = image_plots.latent_scatter(detector.encode(splits.eval_X), colour,
                                         "latent space of the evaluation images")
        _log(fig, "images/latent_space.png")


def _log(fig, path: str) -> None:
    mlflow.log_figure(fig, path)
    close(fig)


def log_model(detector: ImageDetector, fit_images: np.ndarray):
    """Log the detector as a pyfunc reading a column ``image`` (base64 PNG/JPEG) or ``path``."""
    example = pd.DataFrame({"image": [base64.b64encode(to_png(im)).decode("ascii")
                                      for im in fit_images[:2]]})
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False),
                       ColSpec("string", "path", required=False)]),
        outputs=infer_signature(example, detector.score(fit_images[:2])).outputs)
    return log_pyfunc(detector, example, signature, ("pillow",))
