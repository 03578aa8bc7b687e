"""Images in the training pipeline: ``conv_ae`` and ``conv_vae``.

Reading and splitting images, their pictures (reconstructions and maps, VAE samples and
interpolation, the latent space) and their pyfunc, which reads a column ``image`` (base64
PNG/JPEG) or ``path``. The run itself (metrics, thresholds, registry) is the pipeline's.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema

from pipelines.registry.pyfunc import log_pyfunc
from pipelines.train import image_plots
from pipelines.train.config import TrainConfig
from pipelines.train.kinds import DataKind, Prepared
from pipelines.train.plots import close
from pipelines.train.splits import Splits, cut, fingerprint
from training.data.images import load_images
from training.detector.image import ImageDetector
from training.detector.image_params import IMAGE_KINDS, ImageDetectorParams
from training.errors import DataError
from training.preprocessing.images import ImagePreprocessor, to_png

log = logging.getLogger(__name__)

GRID_COLUMNS = 6  # normal and anomalous examples each in the reconstruction grid


class Images(DataKind):
    """Convolutional AE / VAE on a folder (MVTec layout too), an .npz or an IDX file."""

    model_kinds = IMAGE_KINDS

    def prepare(self, cfg: TrainConfig, params: ImageDetectorParams) -> Prepared:
        size = tuple(params.image_size) if params.image_size else None
        data, given_eval = load_images(cfg.data, ImagePreprocessor(size, params.channels),
                                       cfg.normal_class)
        pre = ImagePreprocessor(size, params.channels).fit(data.images, cfg.data)
        if cfg.eval_data:
            first, test = load_images(cfg.eval_data, pre, cfg.normal_class)
            given_eval = test if test is not None else first  # an MVTec root: its test/ images
            if given_eval.labels is None:
                raise DataError("evaluation images need labels: a folder with good/ and one "
                                "folder per defect, or an .npz/IDX with labels",
                                source=cfg.eval_data)
        parts = cut(data.labels, len(data), cfg, cfg.data, "images",
                    separate_eval=given_eval is not None, hold_out=not params.cross_fit)
        evaluation = given_eval if given_eval is not None else (
            None if parts.evaluation is None else data.subset(parts.evaluation))
        splits = Splits(fit=data.images[parts.fit], calibration=data.images[parts.calibration])
        if evaluation is not None:
            splits.eval_X, splits.eval_y = evaluation.images, evaluation.labels
            splits.extras = {"classes": evaluation.classes, "names": evaluation.names}
        detector = ImageDetector(**{**params.to_dict(), "image_size": list(pre.shape[1:]),
                                    "channels": pre.shape[0]})
        return Prepared(splits, detector, {
            "normal_class": cfg.normal_class, "image_shape": "x".join(map(str, pre.shape)),
            "n_images": len(data), "data_sha256": fingerprint(cfg.data)})

    def dataset(self, prepared: Prepared, cfg: TrainConfig):
        """The training images as an MLflow dataset input."""
        return mlflow.data.from_numpy(prepared.splits.fit, source=str(Path(cfg.data).resolve()),
                                      name=Path(cfg.data).name)

    def log_pictures(self, detector: ImageDetector, splits: Splits, cfg: TrainConfig) -> None:
        log_pictures(detector, splits, cfg)

    def log_model(self, detector: ImageDetector, splits: Splits):
        return log_model(detector, splits.fit)


def log_pictures(detector: ImageDetector, splits: Splits, cfg: TrainConfig) -> None:
    """Reconstructions and maps, VAE samples and interpolation, the latent space."""
    rng = np.random.default_rng(cfg.seed)
    # Normal images the detector never trained on; a cross-fitting ensemble holds none out.
    normal = splits.calibration if len(splits.calibration) >= 2 else splits.fit
    groups = [("normal", normal)]
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
        a, b = normal[:1], normal[1:2]
        fig = image_plots.image_strip(detector.interpolate(a, b, steps=10),
                                      "interpolation between two normal images")
        _log(fig, "images/interpolation.png")
    if splits.eval_X is not None:
        classes = (splits.extras or {}).get("classes")
        colour = classes if classes is not None else splits.eval_y
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
    return log_pyfunc(detector, example, signature)


KIND = Images()
