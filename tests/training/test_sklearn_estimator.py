"""SklearnDetector: scikit-learn's own estimator checks, its sign conventions against the
Detector's, and use inside a Pipeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from training.detector.sklearn_estimator import PARAMS, SklearnDetector
from training.params import DetectorParams

# A tiny budget: two epochs of one small autoencoder, so the whole suite of checks stays fast;
# a 10% false-positive target, so that the checks' few hundred records have outliers to find.
TINY = {"kind": "ae", "max_epochs": 2, "n_models": 1, "hidden_sizes": [8], "latent_dim": 2,
        "target_fpr": 0.1}

# Every check scikit-learn runs that this estimator does not pass, and why. The checks that
# are listed here are run and expected to fail (xfail), not skipped silently.
EXPECTED_FAILURES = {
    "check_fit2d_1feature": "fits on 10 records; fitting needs at least 12 (10 to train, "
                            "2 held out to calibrate the thresholds)",
    # float32 matrix products: on some CPUs the math library picks a kernel by the number of
    # rows in the pass, so the last bits of a score (about 1e-6 relative) depend on which
    # records are scored together; the check allows 1e-7.
    "check_methods_subset_invariance": "float32 scores agree to about 1e-6 relative across "
                                       "batch sizes, not the 1e-7 the check asks",
}


def _expected_failures(estimator):
    return EXPECTED_FAILURES


@parametrize_with_checks([SklearnDetector(**TINY)], expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_parameters_are_every_detector_parameter():
    fields = {f.name for f in dataclasses.fields(DetectorParams) if f.name != "extra"}
    assert set(PARAMS) == fields | {"calibration_fraction"}
    est = SklearnDetector(latent_dim=3)
    assert est.get_params()["latent_dim"] == 3 and est.get_params()["kind"] == "vae"
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(TypeError, match="latentdim"):
        SklearnDetector(latentdim=3)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    normal = pd.DataFrame({"a": rng.normal(size=300), "color": rng.choice(["r", "g"], 300)})
    normal["b"] = 2 * normal["a"] + rng.normal(scale=0.1, size=300)
    return SklearnDetector(**{**TINY, "max_epochs": 30, "target_fpr": 0.01}).fit(normal), normal


def test_signs_follow_sklearn_and_match_the_detector(fitted):
    est, normal = fitted
    odd = pd.DataFrame({"a": [0.0, 3.0], "color": ["r", "g"], "b": [0.0, -6.0]})
    ours = est.detector_.score(odd)
    assert np.array_equal(est.score_samples(odd), -ours["score"].to_numpy())
    threshold = est.detector_.thresholds_[est.detector_.primary_score]
    assert est.offset_ == -threshold
    assert np.array_equal(est.decision_function(odd), threshold - ours["score"].to_numpy())
    assert np.array_equal(est.predict(odd), np.where(ours["is_anomaly"], -1, 1))
    assert est.predict(odd).tolist() == [1, -1]
    assert est.score_samples(odd)[1] < est.score_samples(odd)[0]
    assert est.feature_names_in_.tolist() == ["a", "color", "b"] and est.n_features_in_ == 3


def test_pipeline_with_mixed_columns(fitted):
    _, normal = fitted
    with_id = normal.assign(id=np.arange(len(normal)))
    pipe = make_pipeline(FunctionTransformer(lambda df: df.drop(columns="id")),
                         SklearnDetector(**TINY))
    pipe.set_params(sklearndetector__latent_dim=1, sklearndetector__seed=3)
    labels = pipe.fit(with_id).predict(with_id)
    assert set(np.unique(labels)) <= {-1, 1} and (labels == 1).mean() > 0.8
    assert pipe[-1].detector_.resolved_["latent_dim"] == 1
    refit = clone(pipe).fit(with_id)
    assert np.array_equal(refit.decision_function(with_id), pipe.decision_function(with_id))
