"""Image preprocessing: decoding with Pillow and the fitted image format.

Every image becomes a float32 array of shape (channels, height, width) with values in [0, 1].
A model reads one channel count and one size, fixed when it is fitted:

- channels: 1 (grayscale; an RGB file whose three channels are equal counts as grayscale) or
  3 (colour, RGB; an alpha channel is dropped). A file with the other count is an error naming it.
- size: every image is resized with Pillow (bilinear, antialiased) to (height, width).

Integer pixels are scaled by their type's maximum (255 for 8 bits); float pixels must already
be in [0, 1] or be 0-255 values.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.errors import DataError, TooLargeError

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


MAX_DEFAULT_SIDE = 64


MAX_PIXELS = 64_000_000  # larger files are refused rather than decompressed


# One image as a caller hands it over: a path, raw bytes, or an array already decoded.
ImageInput = str | Path | bytes | np.ndarray


@dataclass
class ImageSet:
    """Decoded images with what is known about them.

    Attributes:
        images: (n, C, H, W) float32 in [0, 1].
        names: (n,) file paths (or ``<source>[i]`` for arrays), for messages and outputs.
        labels: (n,) ints, 1 = anomaly, or None when unknown.
        classes: (n,) the finer label (digit, defect type) for pictures, or None.
    """

    images: np.ndarray
    names: list[str]
    labels: np.ndarray | None = None
    classes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> ImageSet:
        """The images at ``index`` (an integer or boolean array), in that order."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return ImageSet(
            images=self.images[index],
            names=[self.names[i] for i in index],
            labels=None if self.labels is None else self.labels[index],
            classes=None if self.classes is None else self.classes[index],
        )


# -- decoding -------------------------------------------------------------------------------
def _header(data: str | Path | bytes, name: str) -> Image.Image:
    """Pillow's lazy image: format, mode and size read from the header, no pixel decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        return Image.open(src)


def _unreadable(name: str, e: BaseException) -> DataError:
    if isinstance(e, FileNotFoundError):
        return DataError(f"{name}: file not found")
    if isinstance(e, IsADirectoryError):
        return DataError(f"{name}: is a directory, expected an image file")
    if isinstance(e, UnidentifiedImageError):
        detail = "not an image format Pillow knows"
    else:  # Pillow's messages can quote the stream object: no heap address in an answer
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the file", text)
    return DataError(f"{name}: not a readable image ({detail}); use PNG or JPEG")


_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)


def image_size(data: str | Path | bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header alone (nothing decoded): what decoding it
    would cost is known before paying it."""
    try:
        img = _header(data, name)
        return img.width, img.height
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLargeError(f"{name}: its header gives more than {Image.MAX_IMAGE_PIXELS} "
                            "pixels; too large to decode") from None
    except _DECODE_ERRORS as e:
        raise _unreadable(name, e) from None


def open_image(data: str | Path | bytes, name: str) -> Image.Image:
    """Open a file or bytes with Pillow; anything undecodable is a :class:`DataError`, and so
    is an image of more than :data:`MAX_PIXELS`, found from the header before any pixel is
    decoded."""
    try:
        img = _header(data, name)
        if img.width * img.height > MAX_PIXELS:
            raise DataError(f"{name}: {img.width}x{img.height} pixels is too large; at most "
                            f"{MAX_PIXELS} pixels per image")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except DataError:
        raise
    except _DECODE_ERRORS as e:
        raise _unreadable(name, e) from None
    return img


def pixels_of(img: Image.Image, name: str = "image") -> np.ndarray:
    """(H, W, c) float32 in [0, 1], c = 1 for grayscale content, 3 for colour."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        return np.clip(arr, 0.0, 1.0)[..., None]
    if img.mode == "F":
        return _unit_range(np.asarray(img, dtype=np.float32), name)[..., None]
    if img.mode in GRAY_MODES:
        return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[..., None]
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., :1]
    return rgb


def _unit_range(arr: np.ndarray, source: str) -> np.ndarray:
    """Scale pixel values to [0, 1]: integers by their type's maximum, floats as given or /255."""
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        top = 255.0 if arr.dtype.itemsize == 1 else float(np.iinfo(arr.dtype).max)
        if arr.dtype.itemsize > 1 and arr.size and arr.max() <= 255:
            top = 255.0  # 8-bit values stored in a wider integer type
        return arr.astype(np.float32) / top
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{source}: non-finite pixel values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise DataError(f"{source}: pixel values from {lo:g} to {hi:g}; expected [0, 1] or 0-255")
    return arr / 255.0 if hi > 1.0 else arr


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, c) float pixels -> (c, height, width), each channel resized by Pillow."""
    h, w, c = pixels.shape
    if (h, w) == (height, width):
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    out = np.empty((c, height, width), dtype=np.float32)
    for k in range(c):
        ch = Image.fromarray(np.ascontiguousarray(pixels[..., k], dtype=np.float32), mode="F")
        out[k] = np.asarray(ch.resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0)


def _channel_error(name: str, found: int, wanted: int) -> DataError:
    what = {1: "grayscale (1 channel)", 3: "colour (3 channels, RGB)"}
    return DataError(f"{name}: a {what[found]} image; this model reads {what[wanted]} images")


def decode_base64(text: str, name: str) -> bytes:
    """Bytes of a base64 string (an optional ``data:...;base64,`` prefix is dropped)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{name}: not valid base64") from None


# -- the fitted image format --------------------------------------------------------------
class ImagePreprocessor:
    """Turns images into the flat float32 rows the networks read, and back.

    The networks see an image as one row of ``C * H * W`` values (channel-major), so scoring
    code is shared with tables; :meth:`inverse_transform` restores the (n, C, H, W) shape.

    Args:
        image_size: (height, width) to resize to; None = from the training images (their own
            size if it is at most 64 pixels a side, else scaled so the longer side is 64).
        channels: 1 or 3; None = 1 if every training image is grayscale, else 3.
    """

    def __init__(self, image_size: tuple[int, int] | None = None, channels: int | None = None):
        self.image_size = image_size
        self.channels = channels

    def fit(self, data: ImageInput | Sequence[ImageInput] | ImageSet, source: str = "data"
            ) -> ImagePreprocessor:
        """Fix the channel count and size from the training images (where not given)."""
        if isinstance(data, ImageSet):
            data = data.images
        if isinstance(data, np.ndarray):
            arr = as_image_array(data, source)
            found_channels, sizes = arr.shape[1], [arr.shape[2:]]
        else:
            found_channels, sizes = _survey(list(data))
        self.channels_ = int(self.channels or found_channels)
        self.height_, self.width_ = self.image_size or default_size(sizes)
        self.n_features_ = self.channels_ * self.height_ * self.width_
        self.input_columns_ = ["image"]
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model reads."""
        return self.channels_, self.height_, self.width_

    @property
    def feature_names_(self) -> list[str]:
        """One name per network input: ``c<channel>_y<row>_x<column>``."""
        c, h, w = self.shape
        return [f"c{k}_y{y}_x{x}" for k in range(c) for y in range(h) for x in range(w)]

    def image(self, item: ImageInput, name: str) -> np.ndarray:
        """One image (path, bytes or (H, W[, C]) array) as (C, H, W) float32."""
        if isinstance(item, np.ndarray):
            arr = _unit_range(item, name)
            pixels = arr[..., None] if arr.ndim == 2 else arr
            if pixels.ndim != 3:
                raise DataError(f"{name}: expected an (H, W) or (H, W, C) image array, got "
                                f"shape {item.shape}")
        else:
            pixels = pixels_of(open_image(item, name), name)
        found = pixels.shape[2]
        if found == 4:  # RGBA array: drop alpha
            pixels, found = pixels[..., :3], 3
        if found == 1 and self.channels_ == 3:  # grey is colour with equal channels (a blank
            pixels, found = np.repeat(pixels, 3, axis=2), 3  # frame, a grey RGB file)
        if found != self.channels_:
            if found not in (1, 3):
                raise DataError(f"{name}: {found} channels; this model reads {self.channels_}")
            raise _channel_error(name, found, self.channels_)
        return resize(pixels, self.height_, self.width_)

    def batch(self, data: ImageInput | Sequence[ImageInput] | ImageSet, source: str = "data"
              ) -> np.ndarray:
        """Images as (n, C, H, W) float32: an ImageSet, an array batch, or paths/bytes."""
        if isinstance(data, ImageSet):
            data = data.images
        if isinstance(data, np.ndarray) and data.ndim in (3, 4):
            arr = as_image_array(data, source, self.channels_)
            if arr.shape[1] != self.channels_:
                raise DataError(f"{source}: images with {arr.shape[1]} channels; this model "
                                f"reads {self.channels_}")
            if arr.shape[2:] == (self.height_, self.width_):
                return arr
            return np.stack([resize(a.transpose(1, 2, 0), self.height_, self.width_)
                             for a in arr]) if len(arr) else arr[:, :, :self.height_, :self.width_]
        if isinstance(data, (str, Path, bytes)):
            data = [data]
        items = list(data)
        out = np.empty((len(items), *self.shape), dtype=np.float32)
        for i, item in enumerate(items):
            out[i] = self.image(item, _name_of(item, source, i))
        return out

    def transform(self, data: Any, source: str = "data") -> tuple[np.ndarray, dict]:
        """(n, C*H*W) float32 rows, and no extras (a table's unknown categories have no image
        counterpart)."""
        arr = self.batch(data, source)
        return arr.reshape(len(arr), -1), {}

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Flat rows (n, C*H*W) back to images (n, C, H, W), clipped to [0, 1]."""
        return np.clip(np.asarray(X, dtype=np.float32).reshape(-1, *self.shape), 0.0, 1.0)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"type": "image", "channels": self.channels_, "height": self.height_,
                "width": self.width_}

    @classmethod
    def from_dict(cls, data: dict) -> ImagePreprocessor:
        """Inverse of :meth:`to_dict`."""
        pre = cls(image_size=(int(data["height"]), int(data["width"])),
                  channels=int(data["channels"]))
        pre.channels_, pre.height_, pre.width_ = pre.channels, *pre.image_size
        pre.n_features_ = pre.channels_ * pre.height_ * pre.width_
        pre.input_columns_ = ["image"]
        return pre


def _name_of(item: Any, source: str, i: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"{source}[{i}]"


def _survey(items: list) -> tuple[int, list[tuple[int, int]]]:
    """Channel count (1 unless some image is colour) and sizes of images given as files/bytes."""
    if not items:
        raise DataError("no images to fit on")
    channels, sizes = 1, []
    for i, item in enumerate(items):
        name = _name_of(item, "data", i)
        if isinstance(item, np.ndarray):
            px = _unit_range(item, name)
            sizes.append(px.shape[:2])
            channels = max(channels, 3 if px.ndim == 3 and px.shape[2] >= 3 else 1)
            continue
        img = open_image(item, name)
        sizes.append((img.height, img.width))
        if channels == 1 and img.mode not in GRAY_MODES:
            channels = pixels_of(img, name).shape[2]
    return channels, sizes


def default_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The most common (height, width), scaled down so its longer side is at most 64."""
    h, w = Counter(tuple(int(v) for v in s) for s in sizes).most_common(1)[0][0]
    scale = min(1.0, MAX_DEFAULT_SIDE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def as_image_array(arr: np.ndarray, source: str, channels: int | None = None) -> np.ndarray:
    """An array batch as (n, C, H, W) float32 in [0, 1].

    Accepts (n, H, W) (grayscale), (n, C, H, W) with C in 1, 3, 4, or (n, H, W, C) with C in
    1, 3, 4 (alpha dropped). ``channels`` breaks the tie for shapes that read both ways.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim != 4:
        raise DataError(f"{source}: expected images as (n, H, W), (n, C, H, W) or (n, H, W, C), "
                        f"got shape {arr.shape}")
    first, last = arr.shape[1] in (1, 3, 4), arr.shape[3] in (1, 3, 4)
    if last and (not first or (channels is not None and arr.shape[3] == channels
                               and arr.shape[1] != channels)):
        arr = arr.transpose(0, 3, 1, 2)
    elif not first:
        raise DataError(f"{source}: cannot tell the channel axis of shape {arr.shape}; use "
                        "(n, H, W), (n, C, H, W) or (n, H, W, C) with C = 1 or 3")
    if arr.shape[1] == 4:
        arr = arr[:, :3]
    return np.ascontiguousarray(_unit_range(arr, source), dtype=np.float32)


def images_from_frame(df, source: str = "input") -> list[tuple[str, bytes | str]]:
    """``(name, content)`` per row of a DataFrame holding images.

    The frame has a column ``image`` (encoded bytes, or base64 strings of them) or a column
    ``path`` (image files). Names are the paths, or ``<source> row <i>``.
    """
    given = [c for c in ("image", "path") if c in df.columns and df[c].notna().any()]
    if len(given) == 2:
        raise DataError(f"{source}: columns 'image' and 'path' both hold images; send them one "
                        "way")
    if "image" in df.columns and given != ["path"]:
        out = []
        for i, v in enumerate(df["image"].tolist()):
            name = f"{source} row {i}"
            if isinstance(v, str):
                v = decode_base64(v, name)
            if not isinstance(v, (bytes, bytearray)):
                raise DataError(f"{name}: column 'image' holds {type(v).__name__}; expected "
                                "encoded image bytes or a base64 string")
            out.append((name, bytes(v)))
        return out
    if "path" in df.columns:
        return [(str(v), str(v)) for v in df["path"].tolist()]
    got = f"got columns {list(df.columns)}" if len(df.columns) else \
        "got none of them (a model's pyfunc passes on only the columns of its signature)"
    raise DataError(f"{source}: expected a column 'image' (base64 or bytes of PNG/JPEG files) or "
                    f"'path' (image files); {got}")


def to_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W) or (C, H, W) float image in [0, 1] (maps: 0 = black)."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    img = Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_bytes(X: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(n,) PNG-compressed size in bytes of each flat image row (8-bit pixels): a generic
    lossless compressor's code length, the background model of the ``elbo_vs_png`` score."""
    return np.array([len(to_png(row.reshape(shape))) for row in X], dtype=np.float64)
