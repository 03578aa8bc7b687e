"""The ImageDetector on a tiny PNG folder: scores, maps, latent tools, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.training.image_data import DEFECT, normal_images, paint_defect, write_mvtec, write_png
from training.data.images import load_images
from training.detector.image import ImageDetector, gaussian_blur
from training.detector.image_files import score_image_files
from training.detector.image_params import ImageDetectorParams, resolve_image
from training.detector.persistence import load_detector
from training.errors import ConfigError, DataError, NotFittedError
from training.nn.conv import ConvAE, ConvEnsemble, ConvVAE

FAST = {"max_epochs": 40, "patience": 40, "seed": 0}


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("img") / "blob")


@pytest.fixture(scope="module")
def fitted(mvtec):
    """conv_ae and conv_vae fitted on the PNG files of train/good, calibrated on test/good."""
    train, evaluation = load_images(mvtec)
    files = [str(p) for p in sorted((mvtec / "train" / "good").glob("*.png"))]
    out = {}
    for kind in ("conv_ae", "conv_vae"):
        det = ImageDetector(kind=kind, **FAST).fit(files[:48], source="train/good")
        out[kind] = det.calibrate(files[48:], source="calibration")
    return out, evaluation


def test_networks_keep_shape_with_padding():
    x = np.random.default_rng(0).random((3, 1 * 10 * 14)).astype(np.float32)
    import torch

    ae = ConvAE((1, 10, 14), [8, 16], 4)
    assert ae(torch.from_numpy(x)).shape == (3, 140)
    vae = ConvEnsemble([ConvVAE((1, 10, 14), [8], 3) for _ in range(2)])
    x_hat, mu, logvar = vae(torch.from_numpy(x))
    assert x_hat.shape == (2, 3, 140) and mu.shape == logvar.shape == (2, 3, 3)
    assert vae.decoder_logvar.shape == (2, 140)


def test_params_validate_and_resolve_from_shape():
    with pytest.raises(ConfigError, match="kind"):
        ImageDetectorParams(kind="vae")
    with pytest.raises(ConfigError, match="image_size"):
        ImageDetectorParams(kind="conv_ae", image_size=[2, 2])
    with pytest.raises(ConfigError, match="channels"):
        ImageDetectorParams(kind="conv_ae", channels=2)
    with pytest.raises(ConfigError, match="unknown"):
        ImageDetectorParams.from_dict({"kind": "conv_ae", "image_sise": 3})
    p = ImageDetectorParams(kind="conv_vae", image_size=28)
    assert p.image_size == [28, 28] and "elbo" in p.score_kinds
    assert p.primary_score == "elbo_vs_local"
    r = resolve_image(p, 600, (1, 28, 28))
    assert r["hidden_sizes"] == [32, 64] and r["latent_dim"] == 32
    assert resolve_image(p, 100, (3, 64, 64))["hidden_sizes"] == [32, 64, 128, 128]


def test_scores_separate_defects_and_are_deterministic(fitted):
    dets, evaluation = fitted
    for kind, det in dets.items():
        frame = det.score(evaluation)
        expected = {"score", "p_value", "is_anomaly"} | {
            f"{p}_{k}" for k in det.params.score_kinds for p in ("score", "p_value")}
        assert set(frame.columns) == expected, kind
        assert len(frame) == len(evaluation)
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(evaluation.labels, frame["score_recon"]) > 0.9, kind
        assert frame.equals(det.score(evaluation)), kind
        assert ((frame.p_value > 0) & (frame.p_value <= 1)).all()


def test_maps_have_the_image_shape_and_peak_at_the_defect(fitted):
    dets, _ = fitted
    base = normal_images(6, seed=7)
    corners = [(1, 1), (1, 11), (11, 1), (11, 11), (2, 10), (10, 2)]
    broken = np.stack([paint_defect(im, c) for im, c in zip(base, corners)])
    for kind, det in dets.items():
        maps = det.anomaly_maps(broken)
        assert maps.shape == (6, 16, 16), kind
        for m, (y, x) in zip(maps, corners):
            py, px = np.unravel_index(np.argmax(m), m.shape)
            assert y - 1 <= py <= y + DEFECT and x - 1 <= px <= x + DEFECT, (kind, (py, px), (y, x))
        raw = det.explain(broken)
        assert np.allclose(raw.mean(axis=(1, 2)), det.raw_scores(broken)["recon"], rtol=1e-4)
        assert det.anomaly_maps(base).max() < maps.max()


def test_latent_tools(fitted):
    dets, evaluation = fitted
    vae = dets["conv_vae"]
    assert vae.encode(evaluation).shape == (len(evaluation), vae.resolved_["latent_dim"])
    assert vae.reconstruct(evaluation.images[:3]).shape == (3, 1, 16, 16)
    samples = vae.sample(5, seed=1)
    assert samples.shape == (5, 1, 16, 16) and np.array_equal(samples, vae.sample(5, seed=1))
    strip = vae.interpolate(evaluation.images[:1], evaluation.images[1:2], steps=4)
    assert strip.shape == (4, 1, 16, 16)
    with pytest.raises(NotFittedError, match="needs a VAE"):
        dets["conv_ae"].sample(2)


def test_save_load_round_trip_is_identical(fitted, tmp_path):
    dets, evaluation = fitted
    for kind, det in dets.items():
        path = det.save(tmp_path / kind)
        back = load_detector(path)
        assert isinstance(back, ImageDetector) and back.params.kind == kind
        pd.testing.assert_frame_equal(back.score(evaluation), det.score(evaluation))
        assert np.array_equal(back.anomaly_maps(evaluation), det.anomaly_maps(evaluation))
        assert back.preprocessor_.shape == det.preprocessor_.shape


def test_load_detector_opens_tables_too(tmp_path):
    from training.detector import Detector

    X = np.random.default_rng(0).normal(size=(60, 3))
    det = Detector(kind="ae", max_epochs=2).fit(X[:40]).calibrate(X[40:])
    assert type(load_detector(det.save(tmp_path / "t"))) is Detector


def test_score_image_files_names_rows_and_rejects_bad_files(fitted, tmp_path):
    det = fitted[0]["conv_ae"]
    ok = write_png(tmp_path / "ok.png", normal_images(1)[0])
    frame, maps = score_image_files(det, [("ok.png", ok.read_bytes()), ("p", str(ok))], maps=True)
    assert frame["name"].tolist() == ["ok.png", "p"] and maps.shape == (2, 16, 16)
    assert frame.score.iloc[0] == frame.score.iloc[1]
    with pytest.raises(DataError, match="junk.bin: not a readable image"):
        score_image_files(det, [("ok.png", ok.read_bytes()), ("junk.bin", b"12345")])
    with pytest.raises(DataError, match="channels"):
        det.score(np.zeros((2, 3, 16, 16), dtype=np.float32))


def test_unfitted_and_too_few_images():
    with pytest.raises(NotFittedError, match="fit"):
        ImageDetector(kind="conv_ae").score(np.zeros((1, 16, 16)))
    with pytest.raises(DataError, match="at least"):
        ImageDetector(kind="conv_ae").fit(np.zeros((3, 16, 16)))


def test_blur_keeps_mass_and_shape():
    m = np.zeros((1, 9, 9))
    m[0, 4, 4] = 1.0
    b = gaussian_blur(m, 1.0)
    assert b.shape == m.shape and abs(b.sum() - 1.0) < 1e-9 and b[0, 4, 4] == b.max() < 1
