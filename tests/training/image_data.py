"""Tiny synthetic image sets written as real PNG files, shared by the image tests.

A normal image is a dark 16x16 square with a bright blob near its centre (position and size
jitter); a defect is a bright 4x4 patch painted into a normal image away from the blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 16
DEFECT = 4


def normal_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, SIZE, SIZE) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        cy, cx = SIZE / 2 + rng.normal(0, 0.7, size=2)
        r = rng.uniform(2.5, 3.5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        out[i] = np.clip(0.9 * blob + rng.normal(0, 0.02, size=(SIZE, SIZE)), 0, 1)
    return out


def paint_defect(image: np.ndarray, corner: tuple[int, int] = (1, 1)) -> np.ndarray:
    """A copy of ``image`` with a bright DEFECT x DEFECT patch at ``corner`` (row, col)."""
    out = image.copy()
    y, x = corner
    out[..., y : y + DEFECT, x : x + DEFECT] = 1.0
    return out


def write_png(path: Path, image: np.ndarray, mode: str = "L") -> Path:
    """Save an (H, W) float image as an 8-bit PNG (mode L, or RGB with equal channels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    (img.convert(mode) if mode != "L" else img).save(path)
    return path


def write_mvtec(root: Path, n_train: int = 60, n_test_good: int = 8, n_defect: int = 8) -> Path:
    """``root/train/good``, ``root/test/good`` and ``root/test/patch`` PNG folders."""
    imgs = normal_images(n_train + n_test_good + n_defect, seed=1)
    for i in range(n_train):
        write_png(root / "train" / "good" / f"{i:03d}.png", imgs[i])
    for i in range(n_test_good):
        write_png(root / "test" / "good" / f"{i:03d}.png", imgs[n_train + i])
    for i in range(n_defect):
        corner = (1 + i % 3, 11 - i % 3)
        write_png(root / "test" / "patch" / f"{i:03d}.png",
                  paint_defect(imgs[n_train + n_test_good + i], corner))
    (root / "ground_truth").mkdir()  # masks are ignored
    return root
