"""The image step of the demo: a convolutional VAE on scikit-learn's 8x8 digits.

The digit 0 is the normal class; every other digit is an anomaly, kept for evaluation only.
Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from pipelines.train.config import TrainConfig
from pipelines.train.run import TrainResult, run_training

NORMAL_DIGIT = 0


def write_digits(folder: Path) -> Path:
    """``digits.npz``: ``images`` (1797, 8, 8) uint8 and ``labels`` (the digit)."""
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # sklearn: 0..16
    path = folder / "digits.npz"
    np.savez_compressed(path, images=images, labels=digits.target.astype(np.int64))
    return path


def run_image_demo(folder: Path, uri: str, max_epochs: int | None = None) -> TrainResult:
    """Train, evaluate and register ``digits`` (conv_vae); print what it scored."""
    data = write_digits(folder)
    cfg = TrainConfig(data=str(data), name="digits", kind="conv_vae", normal_class=NORMAL_DIGIT,
                      experiment="demo-digits",
                      model={"max_epochs": max_epochs} if max_epochs else {})
    print(f"\ntraining conv_vae on {data.name} (digit {NORMAL_DIGIT} normal, others anomalous)"
          " ...", flush=True)
    result = run_training(cfg, tracking_uri=uri)
    m = result.metrics
    for kind in result.thresholds:
        star = " *" if kind == result.primary_score else ""
        print(f"  {kind + star:16s} AUROC {m[f'eval/auroc_{kind}']:.4f}  "
              f"AP {m[f'eval/ap_{kind}']:.4f}  recall {m[f'eval/recall_{kind}']:.3f} at FPR "
              f"{m[f'eval/fpr_{kind}']:.3f}")
    print(f"models:/digits@{result.alias} -> version {result.version}; pictures under the run's "
          "images/ artifacts (reconstructions and anomaly maps, prior samples, interpolation, "
          "latent space)")
    return result
