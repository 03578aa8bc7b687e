"""Input complexity: the local predictor (hand-computed cases), the slope rule, and the image
scores corrected by it on images that are simpler than the normal ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tests.training.image_data import normal_images
from training.detector.complexity import OFFSETS, ComplexityCorrection, LocalPredictor
from training.detector.image import ImageDetector, gaussian_blur
from training.detector.image_params import ImageDetectorParams
from training.detector.persistence import load_detector
from training.errors import ModelFormatError

FAST = {"max_epochs": 40, "patience": 40, "seed": 0}


def _weights(**named: float) -> list[float]:
    """Neighbour weights by offset name (left, left2, up_left, up, up_right, up2) + intercept."""
    names = ("left", "left2", "up_left", "up", "up_right", "up2")
    assert len(names) == len(OFFSETS)
    return [named.get(n, 0.0) for n in names] + [named.get("intercept", 0.0)]


def test_complexity_by_hand():
    # A 3 x 5 image: only the pixels whose six causal neighbours lie inside it count, here
    # (2, 2) = 4 and (2, 3) = 8 of the last row [1, 2, 4, 8, 0].
    x = torch.tensor([[0.0] * 10 + [1.0, 2.0, 4.0, 8.0, 0.0]])
    # Predicted by the left neighbour: residuals 4 - 2 and 8 - 4.
    pred = LocalPredictor((1, 3, 5), _weights(left=1.0))
    assert pred.complexity(x).item() == pytest.approx((2**2 + 4**2) / 2)
    # By the pixel above (0) plus an intercept of 1: residuals 3 and 7.
    pred = LocalPredictor((1, 3, 5), _weights(up=1.0, intercept=1.0))
    assert pred.complexity(x).item() == pytest.approx((3**2 + 7**2) / 2)
    # Channels are predicted each from their own neighbours: one counted pixel each, 0 and 3.
    pred = LocalPredictor((2, 3, 4), _weights(left=1.0))
    two = torch.zeros(1, 2, 3, 4)
    two[0, 1, 2, 2] = 3.0
    assert pred.complexity(two.reshape(1, -1)).item() == pytest.approx(9 / 2)
    # A grey image is as simple as a black one: no border is invented around it.
    grey = LocalPredictor((1, 3, 5), _weights(left=1.0)).complexity(torch.full((1, 15), 0.7))
    assert grey.item() == pytest.approx(0.0, abs=1e-12)
    # In chunks, the same.
    many = torch.rand(7, 15)
    np.testing.assert_allclose(pred_chunks := LocalPredictor((1, 3, 5), _weights(up=0.5))
                               .complexity_of(many.numpy()),
                               LocalPredictor((1, 3, 5), _weights(up=0.5)).complexity(many))
    assert pred_chunks.shape == (7,)


def test_fit_recovers_the_rule_that_made_the_images():
    rng = np.random.default_rng(0)
    n, h, w = 40, 12, 12
    images = np.zeros((n, h, w))
    for i in range(h):
        for j in range(w):
            left = images[:, i, j - 1] if j else 0.0
            up = images[:, i - 1, j] if i else 0.0
            images[:, i, j] = 0.6 * left + 0.3 * up + 0.2 + rng.normal(0, 0.05, n)
    pred = LocalPredictor((1, h, w)).fit(images.reshape(n, -1).astype(np.float32))
    np.testing.assert_allclose(pred.weights, _weights(left=0.6, up=0.3, intercept=0.2),
                               atol=0.03)
    # What is left is the noise: its variance.
    c = pred.complexity(torch.from_numpy(images.reshape(n, -1).astype(np.float32)))
    assert c.mean().item() == pytest.approx(0.05**2, rel=0.15)
    # Constant images are predicted exactly (the ridge only keeps the system solvable).
    assert c.dtype == torch.float64
    flat = np.full((5, 16), 0.4, dtype=np.float32)
    assert LocalPredictor((1, 4, 4)).fit(flat).complexity(torch.from_numpy(flat)).max() < 1e-6


def test_correction_by_hand():
    # Validation normals: score = 2 c + 1 plus residuals 0, 1, -2, 1, 0 (uncorrelated with c).
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    resid = np.array([0.0, 1.0, -2.0, 1.0, 0.0])
    fix = ComplexityCorrection.fit(2 * c + 1 + resid, c)
    assert fix.slope == pytest.approx(2.0)
    # score - 2 c = 1, 2, -1, 2, 1: median 1, quartiles 1 and 2; c: median 3, quartiles 2, 4.
    assert fix.resid_loc == pytest.approx(1.0) and fix.resid_scale == pytest.approx(1 / 1.349)
    assert fix.loc == pytest.approx(3.0) and fix.scale == pytest.approx(2 / 1.349)
    # A new image of typical complexity, residual 2 scales above: sqrt(2^2 + 0^2).
    got = fix(torch.tensor([2 * 3.0 + 1 + 2 / 1.349]), torch.tensor([3.0]))
    assert got.item() == pytest.approx(2.0)
    # A residual below the normals' is no evidence; a complexity 3 scales off is, either way.
    got = fix(torch.tensor([2 * 3.0 + 1 - 5.0, 0.0]),
              torch.tensor([3.0, 3.0 - 3 * fix.scale]))
    assert got[0].item() == pytest.approx(0.0)
    assert got[1].item() >= 3.0
    # A score that falls with complexity is not corrected; constant complexity still divides.
    assert ComplexityCorrection.fit(-c, c).slope == 0.0
    flat = ComplexityCorrection.fit(c, np.ones(5))
    assert flat.slope == 0.0 and flat.scale > 0


@pytest.fixture(scope="module")
def simpler_task():
    """Blob images fit (80) and calibrate (20); held-out blobs against blurred held-out blobs
    (simpler images) test."""
    images = normal_images(140, seed=5)
    blurred = gaussian_blur(images[120:].astype(np.float64), 1.0).astype(np.float32)
    X = np.concatenate([images[100:120], blurred])
    return images[:100], X, np.r_[np.zeros(20), np.ones(20)]


def _fit(train: np.ndarray, **params) -> ImageDetector:
    return ImageDetector(**params, **FAST).fit(train[:80]).calibrate(train[80:])


@pytest.mark.parametrize("kind", ["conv_vae", "conv_ae"])
def test_simpler_images_are_anomalies_for_the_default_score(kind, simpler_task, tmp_path):
    train, X, y = simpler_task
    det = _fit(train, kind=kind)
    network_score = "elbo" if kind == "conv_vae" else "recon"
    assert det.params.primary_score == f"{network_score}_vs_local"
    raw = det.raw_scores(X)
    # The network alone calls the blurred blobs about as normal as the normals (measured:
    # 0.64 elbo, 0.78 recon); corrected for their complexity they stand out.
    assert roc_auc_score(y, raw[network_score]) < 0.85
    assert roc_auc_score(y, raw[f"{network_score}_vs_local"]) > 0.95
    # The background model and slopes travel with the weights.
    back = load_detector(det.save(tmp_path / kind))
    for k, v in det.raw_scores(X).items():
        np.testing.assert_array_equal(back.raw_scores(X)[k], v)


def test_models_saved_before_the_local_scores_load_as_they_were(simpler_task, tmp_path):
    train, X, _ = simpler_task
    det = _fit(train, kind="conv_vae", local_complexity=False)
    assert "elbo_vs_local" not in det.score_kinds and det.params.primary_score == "elbo"
    path = det.save(tmp_path / "old")
    meta = json.loads((path / "detector.json").read_text())
    del meta["params"]["local_complexity"], meta["local_complexity"]  # as an older version wrote
    (path / "detector.json").write_text(json.dumps(meta))
    back = load_detector(path)
    assert back.params.local_complexity is False and back.params.primary_score == "elbo"
    np.testing.assert_array_equal(back.raw_scores(X)["elbo"], det.raw_scores(X)["elbo"])


def test_a_model_missing_its_background_is_refused(simpler_task, tmp_path):
    train, _, _ = simpler_task
    path = _fit(train, kind="conv_ae").save(tmp_path / "m")
    meta = json.loads((path / "detector.json").read_text())
    meta["local_complexity"] = None
    (path / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="local_complexity"):
        load_detector(path)


def test_the_option_is_validated():
    with pytest.raises(Exception, match="local_complexity"):
        ImageDetectorParams(kind="conv_ae", local_complexity="yes")
    assert ImageDetectorParams(kind="conv_ae", local_complexity=False).score_kinds == ("recon",)


def test_images_with_the_neighbour_score_fit_too(simpler_task):
    """``combined`` pairs the network's own score with ``knn``, not the corrected one."""
    train, X, _ = simpler_task
    det = _fit(train, kind="conv_ae", neighbours=3)
    assert set(det.combination_) == {"recon", "knn"}
    assert {"combined", "recon_vs_local"} <= set(det.raw_scores(X))


def test_images_too_small_to_predict_score_by_the_network_alone():
    """Under 3 x 4 pixels no pixel has its six neighbours: complexity 0 for every image, and
    the corrected score is the network's own, standardised (finite, calibrated)."""
    images = np.random.default_rng(0).random((60, 2, 3)).astype(np.float32)
    det = ImageDetector(kind="conv_ae", max_epochs=2).fit(images[:40]).calibrate(images[40:])
    assert det.local_.complexity_of(images.reshape(60, -1)).tolist() == [0.0] * 60
    scores = det.score(images[:5])
    assert np.isfinite(scores["score_recon_vs_local"]).all()
