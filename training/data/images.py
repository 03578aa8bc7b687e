"""Reading image data sets in the layouts a training job accepts.

- a folder of PNG/JPEG files (searched recursively): all normal;
- a labelled folder, holding ``good/`` (normal) and one folder per defect type (anomalous);
- the MVTec layout: ``train/good/`` for training, ``test/good/`` and ``test/<defect>/`` for
  evaluation (``ground_truth/`` masks are ignored);
- a NumPy ``.npz``: images under ``images``, ``X`` or ``x`` as (n, H, W), (n, H, W, C) or
  (n, C, H, W); optional labels under ``y`` or ``labels``;
- MNIST-style IDX files (``*-idx3-ubyte``, optionally gzipped), with the ``*-idx1-ubyte`` labels
  beside them when present.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import DataError
from training.preprocessing.images import (
    IMAGE_SUFFIXES,
    ImagePreprocessor,
    ImageSet,
    as_image_array,
)


# -- layouts --------------------------------------------------------------------------------
def image_files(folder: Path) -> list[Path]:
    """Image files below ``folder``, recursively, sorted; hidden files are skipped."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in
                  IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(
                      folder).parts))


def load_images(path: str | Path, preprocessor: ImagePreprocessor | None = None,
                normal_class: Any = None) -> tuple[ImageSet, ImageSet | None]:
    """Read image data in any supported layout.

    Args:
        path: a folder, an ``.npz`` file or an IDX images file.
        preprocessor: fixes size and channels; one not fitted yet (or None for the defaults)
            is fitted on the training images. Every image is returned at its size.
        normal_class: for data labelled by class (IDX, ``.npz`` with class labels): the class
            that is normal; every other class is anomalous. Without it, IDX images are all
            normal (their classes only colour pictures), and ``.npz`` labels must be 0/1.

    Returns:
        ``(data, evaluation)``: the training data (normal images, and labelled anomalies when
        the layout has them), and a separate labelled evaluation set (MVTec ``test/``) or None.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: not found")
    if p.is_dir():
        if normal_class is not None:
            raise DataError(f"{path}: normal_class applies to .npz and IDX data; a folder is "
                            "labelled by its good/ and defect sub-folders")
        return _load_folder(p, preprocessor)
    if p.suffix.lower() == ".npz":
        images, labels = _read_npz(p)
    elif "idx" in p.name.lower():
        images, labels = read_idx_images(p)
    else:
        raise DataError(f"{path}: not image data; give a folder of images, an .npz or IDX file")
    if labels is not None and normal_class is None and p.suffix.lower() != ".npz":
        labels, classes = None, labels  # IDX labels are classes: all normal, classes for plots
    else:
        labels, classes = _labels(labels, normal_class, str(p))
    arr = as_image_array(images, str(p))
    pre = _fitted(preprocessor, arr, str(p))
    names = [f"{p.name}[{i}]" for i in range(len(arr))]
    return ImageSet(pre.batch(arr, str(p)), names, labels, classes), None


def _fitted(pre: ImagePreprocessor | None, data: Any, source: str) -> ImagePreprocessor:
    """``pre`` if fitted, else ``pre`` (or a default one) fitted on ``data``."""
    if pre is not None and hasattr(pre, "channels_"):
        return pre
    return (pre or ImagePreprocessor()).fit(data, source)


def _labels(raw: np.ndarray | None, normal_class: Any, source: str
            ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(anomaly labels, classes) from raw labels and the normal class."""
    if raw is None:
        if normal_class is not None:
            raise DataError(f"{source}: normal_class is set but the data has no labels")
        return None, None
    raw = np.asarray(raw).ravel()
    if normal_class is not None:
        cls = type(raw[0].item())(normal_class) if raw.size else normal_class
        if not np.any(raw == cls):
            raise DataError(f"{source}: no image has class {normal_class!r}; classes are "
                            f"{sorted(np.unique(raw).tolist())}")
        return (raw != cls).astype(np.int64), raw
    values = set(np.unique(raw).tolist())
    if not values <= {0, 1}:
        raise DataError(f"{source}: labels {sorted(values)[:10]} are classes, not 0/1 anomaly "
                        "labels; set normal_class to the class that is normal")
    return raw.astype(np.int64), raw


def _load_folder(folder: Path, pre: ImagePreprocessor | None
                 ) -> tuple[ImageSet, ImageSet | None]:
    if (folder / "train").is_dir():  # MVTec: train/good for fitting, test/* for evaluation
        train_dir = folder / "train" / "good"
        train_dir = train_dir if train_dir.is_dir() else folder / "train"
        files = image_files(train_dir)
        if not files:
            raise DataError(f"{train_dir}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        pre = _fitted(pre, files, str(folder))
        train = _decode_files(files, pre, labels=None, classes=None)
        test_dir = folder / "test"
        evaluation = _load_labelled(test_dir, pre) if test_dir.is_dir() else None
        return train, evaluation
    if (folder / "good").is_dir():
        return _load_labelled(folder, pre), None
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    pre = _fitted(pre, files, str(folder))
    return _decode_files(files, pre, labels=None, classes=None), None


def _load_labelled(folder: Path, pre: ImagePreprocessor | None) -> ImageSet:
    """``good/`` = normal (0), every other subfolder = an anomaly type (1)."""
    groups = {d.name: image_files(d) for d in sorted(folder.iterdir())
              if d.is_dir() and not d.name.startswith(".")}
    if not groups.get("good"):
        raise DataError(f"{folder}: a labelled folder needs normal images in {folder / 'good'}")
    files, classes = [], []
    for name, fs in groups.items():
        files += fs
        classes += [name] * len(fs)
    classes_arr = np.asarray(classes)
    pre = _fitted(pre, groups["good"], str(folder))
    labels = (classes_arr != "good").astype(np.int64)
    return _decode_files(files, pre, labels, classes_arr)


def _decode_files(files: list[Path], pre: ImagePreprocessor, labels: np.ndarray | None,
                  classes: np.ndarray | None) -> ImageSet:
    images = np.empty((len(files), *pre.shape), dtype=np.float32)
    for i, f in enumerate(files):
        images[i] = pre.image(f, str(f))
    return ImageSet(images, [str(f) for f in files], labels, classes)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as d:
            keys = list(d.keys())
            key = next((k for k in ("images", "X", "x") if k in d), None)
            if key is None:
                raise DataError(f"{path}: no images array; expected a key 'images', 'X' or 'x', "
                                f"found {keys}")
            lab = next((k for k in ("y", "labels") if k in d), None)
            return np.asarray(d[key]), (np.asarray(d[lab]) if lab else None)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz ({str(e).splitlines()[0]})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (MNIST's format), gzipped or not."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise DataError(f"{path}: IDX header says {dims}, but the file holds {len(body)} values")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def read_idx_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """IDX images (n, H, W) and, when found beside them, their labels (n,)."""
    images = read_idx(path)
    if images.ndim != 3:
        raise DataError(f"{path}: expected (n, H, W) images, got an IDX array of shape "
                        f"{images.shape}")
    label_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    labels = None
    if label_path != path and label_path.is_file():
        labels = read_idx(label_path)
        if labels.shape != (len(images),):
            raise DataError(f"{label_path}: {labels.shape[0]} labels for {len(images)} images")
    return images, labels

