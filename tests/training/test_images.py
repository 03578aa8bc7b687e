"""Image data: decoding real PNG files, the folder / MVTec / .npz / IDX layouts, bad files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.training.image_data import normal_images, write_mvtec, write_png
from training.data.images import load_images, read_idx
from training.errors import DataError, TooLargeError
from training.preprocessing.images import (
    ImagePreprocessor,
    decode_base64,
    image_size,
    images_from_frame,
    to_png,
)


def test_folder_of_pngs_keeps_small_size_and_reads_rgb_gray_as_one_channel(tmp_path):
    imgs = normal_images(4)
    for i, im in enumerate(imgs):
        write_png(tmp_path / "sub" / f"{i}.png", im, mode="RGB" if i % 2 else "L")
    (tmp_path / "notes.txt").write_text("not an image")
    data, evaluation = load_images(tmp_path)
    assert evaluation is None and data.labels is None
    assert data.images.shape == (4, 1, 16, 16) and data.images.dtype == np.float32
    assert np.allclose(data.images[:, 0], imgs, atol=1 / 255)
    assert data.names[0].endswith("0.png")


def test_resize_and_colour_detection(tmp_path):
    rgb = np.zeros((40, 30, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red: a colour image
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.jpg")
    data, _ = load_images(tmp_path, ImagePreprocessor(image_size=(8, 6)))
    assert data.images.shape == (2, 3, 8, 6)
    assert data.images[:, 0].mean() > 0.7 and data.images[:, 1].max() < 0.1
    big = np.zeros((128, 96), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "c.png")
    pre = ImagePreprocessor().fit([tmp_path / "c.png"])
    assert pre.shape == (1, 64, 48)  # the longer side scaled to 64, aspect kept


def test_mvtec_layout(tmp_path):
    root = write_mvtec(tmp_path / "bottle", n_train=12, n_test_good=3, n_defect=4)
    train, evaluation = load_images(root)
    assert len(train) == 12 and train.labels is None
    assert evaluation.labels.tolist() == [0] * 3 + [1] * 4
    assert set(evaluation.classes) == {"good", "patch"}
    assert evaluation.images.shape[1:] == train.images.shape[1:] == (1, 16, 16)
    labelled, none = load_images(root / "test")  # a labelled folder on its own
    assert none is None and labelled.labels.sum() == 4


def test_npz_with_classes_and_binary_labels(tmp_path):
    imgs = (normal_images(10) * 255).astype(np.uint8)
    np.savez(tmp_path / "c.npz", images=imgs, labels=np.arange(10) % 3)
    data, _ = load_images(tmp_path / "c.npz", normal_class=1)
    assert data.labels.tolist() == [1, 0, 1] * 3 + [1]
    with pytest.raises(DataError, match="normal_class"):
        load_images(tmp_path / "c.npz")
    np.savez(tmp_path / "b.npz", X=imgs[..., None], y=np.r_[np.zeros(8), np.ones(2)])
    data, _ = load_images(tmp_path / "b.npz")  # (n, H, W, 1) and 0/1 labels
    assert data.images.shape == (10, 1, 16, 16) and data.labels.sum() == 2
    np.savez(tmp_path / "bad.npz", pixels=imgs)
    with pytest.raises(DataError, match="bad.npz.*'images'"):
        load_images(tmp_path / "bad.npz")


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_files_with_labels_beside_them(tmp_path):
    imgs = (normal_images(6) * 255).astype(np.uint8)
    _write_idx(tmp_path / "t-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t-labels-idx1-ubyte.gz", np.array([0, 1, 2, 0, 1, 2]))
    assert read_idx(tmp_path / "t-images-idx3-ubyte.gz").shape == (6, 16, 16)
    data, _ = load_images(tmp_path / "t-images-idx3-ubyte.gz")
    assert data.labels is None and data.classes.tolist() == [0, 1, 2, 0, 1, 2]
    data, _ = load_images(tmp_path / "t-images-idx3-ubyte.gz", normal_class=2)
    assert data.labels.tolist() == [1, 1, 0, 1, 1, 0]


def test_bad_files_are_rejected_by_name(tmp_path):
    good = write_png(tmp_path / "good.png", normal_images(1)[0])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    gray = ImagePreprocessor().fit([good])
    with pytest.raises(DataError, match="broken.png.*not a readable image"):
        gray.batch([good, tmp_path / "broken.png"])
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 2] = 255
    Image.fromarray(colour).save(tmp_path / "blue.png")
    with pytest.raises(DataError, match="blue.png: a colour .* reads grayscale"):
        gray.batch([tmp_path / "blue.png"])
    rgb = ImagePreprocessor(channels=3).fit([tmp_path / "blue.png"])
    grey = rgb.batch([good])  # a grey image is colour with equal channels
    assert grey.shape == (1, 3, 16, 16)
    assert np.array_equal(grey[0, 0], grey[0, 1]) and np.array_equal(grey[0, 0], grey[0, 2])
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(tmp_path / "grey-rgb.png")
    assert np.allclose(rgb.batch([tmp_path / "grey-rgb.png"]), 128 / 255)
    with pytest.raises(DataError, match="missing.png: file not found"):
        gray.batch([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="upload: not valid base64"):
        decode_base64("***", "upload")
    nan = np.full((16, 16), np.nan, dtype=np.float32)
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tiff")
    with pytest.raises(DataError, match="nan.tiff: .*non-finite"):  # the file named
        gray.batch([tmp_path / "nan.tiff"])


def test_a_header_past_pillows_bomb_limit_is_too_large_naming_the_file(tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (12_000, 12_000)).save(big)  # 1 bit a pixel: a small file
    with pytest.raises(TooLargeError, match="big.png: its header gives more than"):
        image_size(big.read_bytes(), "big.png")


def test_frame_inputs_and_png_round_trip(tmp_path):
    import base64

    import pandas as pd

    im = normal_images(1)[0]
    png = to_png(im)
    pre = ImagePreprocessor().fit([png])
    frame = pd.DataFrame({"image": [base64.b64encode(png).decode(), png]})
    items = images_from_frame(frame)
    assert [name for name, _ in items] == ["input row 0", "input row 1"]
    batch = pre.batch([content for _, content in items])
    assert np.allclose(batch[0, 0], im, atol=1 / 255) and np.array_equal(batch[0], batch[1])
    with pytest.raises(DataError, match="'image'.*'path'"):
        images_from_frame(pd.DataFrame({"x": [1]}))


def test_a_frame_of_images_holds_them_one_way():
    both = pd.DataFrame({"image": ["aGk="], "path": ["a.png"]})
    with pytest.raises(DataError, match="'image' and 'path' both hold images"):
        images_from_frame(both)
    assert images_from_frame(pd.DataFrame({"image": [None], "path": ["a.png"]})) == [
        ("a.png", "a.png")]
    with pytest.raises(DataError, match="got none of them"):
        images_from_frame(pd.DataFrame(index=[0]))
