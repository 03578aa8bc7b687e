"""Cross-fitted calibration: an ensemble's members are fold models, and the thresholds rest on
every record given to ``fit``, each scored by networks that never trained on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from training import ConfigError, Detector
from training.detector.base import CROSS_FIT_COVERAGE, _folds, _Member
from training.detector.scores import robust_location_scale
from training.params import DetectorParams


def _normals(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    X = np.c_[z, z @ [[1.0, -0.5], [0.3, 2.0]] + 0.2 * rng.normal(size=(n, 2)),
              0.5 * rng.normal(size=(n, 2))]
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])


def test_cross_fitting_is_the_ensemble_default_and_needs_an_ensemble():
    assert DetectorParams(kind="vae").cross_fit is True  # three members
    assert DetectorParams(kind="ae").cross_fit is False  # one network
    assert DetectorParams(kind="ae", n_models=2).cross_fit is True
    assert DetectorParams(kind="vae", cross_fit=False).cross_fit is False
    with pytest.raises(ConfigError, match="cross_fit: needs an ensemble"):
        DetectorParams(kind="ae", cross_fit=True)
    with pytest.raises(ConfigError, match="cross_fit: expected true or false"):
        DetectorParams(kind="vae", cross_fit="yes")


@pytest.fixture(scope="module")
def crossfitted():
    det = Detector(kind="vae", neighbours=5, max_epochs=40, seed=1)
    return det.fit(_normals(1500, 0))


def test_fit_calibrates_every_score_kind_on_every_record(crossfitted):
    det = crossfitted
    assert det.calibrated_by_fit
    assert set(det.calibrations_) == set(det.score_kinds)
    n_val = int(round(0.15 * 1500))
    n_folds = int(round(CROSS_FIT_COVERAGE * (1500 - n_val)))
    for cal in det.calibrations_.values():
        assert cal.scores.size == n_val + n_folds  # the validation rows and every fold
        assert cal.method == "conformal" and cal.achievable_fpr <= 0.01
    assert not hasattr(det, "_reference_rows")  # fit's bookkeeping is not kept


def test_knn_calibrates_leaving_each_record_out_and_combined_standardises_on_it(crossfitted):
    det = crossfitted
    X, _ = det.preprocessor_.transform(_normals(1500, 0))
    X = X.astype(np.float64)
    order = np.random.default_rng(1).permutation(1500)
    X_val, X_train = X[order[:225]], X[order[225:]]
    np.testing.assert_array_equal(det.reference_.numpy(), X_train)  # under 10,000: every row

    def mean_5_nearest(a, b, leave_out):
        d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
        if leave_out:
            np.fill_diagonal(d, np.inf)  # a training record is not its own neighbour
        return np.sort(d, axis=1)[:, :5].mean(1)

    folds = _folds(len(X_train), 3, 1)
    want = np.r_[mean_5_nearest(X_val, X_train, False),
                 mean_5_nearest(X_train, X_train, True)[folds >= 0]]
    np.testing.assert_allclose(det.calibrations_["knn"].scores, np.sort(want), rtol=1e-6)
    assert det.primary_score == "combined"
    for kind in ("elbo", "knn"):  # standardised on the scores the thresholds rest on
        assert det.combination_[kind] == list(
            robust_location_scale(det.calibrations_[kind].scores))


def test_thresholds_keep_their_rate_and_p_values_stay_valid_on_fresh_normals(crossfitted):
    out = crossfitted.score(_normals(20_000, 7))
    # 1,500 calibration scores: the threshold's rate is Beta(15, 1486), mean 1.0%, sd 0.26%.
    assert 0.004 <= out["is_anomaly"].mean() <= 0.016
    for a in (0.05, 0.1, 0.2):
        assert (out["p_value"] <= a).mean() <= a + 0.012
        assert (out["p_value_knn"] <= a).mean() <= a + 0.012


def test_a_member_never_trains_on_its_own_fold():
    """On few records and many epochs each member memorises what it trains on: its errors on
    its own fold (which it never saw) are the larger ones."""
    data = _normals(90, 3)
    det = Detector(kind="ae", n_models=3, hidden_sizes=[64, 64], latent_dim=6, max_epochs=400,
                   patience=400, validation_fraction=0.1, seed=0).fit(data)
    X, _ = det._matrix(data, "data")
    n_val = max(2, int(round(0.1 * len(X))))
    order = np.random.default_rng(0).permutation(len(X))
    X_train = X[order[n_val:]]
    folds = _folds(len(X_train), 3, 0)
    with torch.no_grad():
        for m in range(3):
            err = (_Member(det.network_, m)(torch.from_numpy(X_train)) - torch.from_numpy(
                X_train)).pow(2).mean(dim=(0, 2)).numpy()
            assert err[folds == m].mean() > 3 * err[(folds != m)].mean()


def test_a_member_view_gives_that_members_scores():
    data = _normals(300, 4)
    det = Detector(kind="vae", max_epochs=5, seed=0).fit(data)
    X, _ = det._matrix(data, "data")
    x = torch.from_numpy(X[:20])
    with torch.no_grad():
        mu, logvar = det.network_.encode(x)
        one_mu, one_logvar = _Member(det.network_, 2).encode(x)
        torch.testing.assert_close(one_mu[0], mu[2])
        torch.testing.assert_close(_Member(det.network_, 2).decode(one_mu)[0],
                                   det.network_.decode(mu)[2])
    assert det.prior_["mu"].shape[0] == 3  # one prior per member, from its own training rows


def test_explicit_calibration_replaces_the_cross_fitted_thresholds():
    det = Detector(kind="vae", max_epochs=5).fit(_normals(300, 5))
    det.calibrate(_normals(100, 6))
    assert det.calibrations_["elbo"].scores.size == 100


def test_each_member_trains_on_batches_of_its_own_rows():
    det = Detector(kind="vae", n_models=3, seed=0)
    det.resolved_ = {"batch_size": 16}
    folds = _folds(100, 3, 0)
    batches = list(det._batches(100, folds, torch.Generator().manual_seed(0)))
    pools = [np.flatnonzero(folds != m) for m in range(3)]
    assert len(batches) == -(-max(len(p) for p in pools) // 16)
    assert all(w is None and tuple(rows.shape) == (3, 16) for rows, w in batches)
    rows = torch.cat([r for r, _ in batches], dim=1).numpy()
    for m in range(3):  # every row it trains on, none of its own fold
        assert set(rows[m].tolist()) == set(pools[m].tolist())


def test_a_member_with_fewer_rows_than_a_batch_sees_each_row_once_per_batch():
    det = Detector(kind="vae", n_models=3, seed=0)
    det.resolved_ = {"batch_size": 16}
    folds = _folds(10, 3, 0)
    (rows, _), = list(det._batches(10, folds, torch.Generator().manual_seed(0)))
    assert rows.shape[1] == max(int((folds != m).sum()) for m in range(3))
    for m in range(3):
        assert set(rows[m].tolist()) == set(np.flatnonzero(folds != m).tolist())
