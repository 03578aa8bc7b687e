import json
import re

import numpy as np
import pandas as pd
import pytest

from training import ConfigError, DataError, Detector, ModelFormatError, NotFittedError
from training.detector.base import MIN_FIT_ROWS
from training.preprocessing.tabular import TabularPreprocessor

FAST = {"max_epochs": 15}


@pytest.fixture(scope="module")
def splits(breast_cancer):
    df = breast_cancer
    normal = df[df.malignant == 0].sample(frac=1.0, random_state=0)
    return {"fit": normal.iloc[:220], "cal": normal.iloc[220:300],
            "test": pd.concat([normal.iloc[300:], df[df.malignant == 1].head(40)])}


@pytest.fixture(scope="module", params=["ae", "vae"])
def fitted(request, splits):
    det = Detector(kind=request.param, id_column="id", label_column="malignant", **FAST)
    return det.fit(splits["fit"]).calibrate(splits["cal"])


def test_score_columns_and_flags(fitted, splits):
    out = fitted.score(splits["test"])
    kinds = fitted.score_kinds
    expected = ["score", "p_value", "is_anomaly"]
    for k in kinds:
        expected += [f"score_{k}", f"p_value_{k}"]
    assert list(out.columns) == expected + ["unknown_categories"]
    assert len(out) == len(splits["test"])
    primary = fitted.primary_score
    assert primary == ("combined" if fitted.params.kind == "vae" else "recon")
    assert kinds == (("agg_elbo", "elbo", "recon", "knn", "combined")
                     if fitted.params.kind == "vae" else ("recon",))
    np.testing.assert_array_equal(out["score"], out[f"score_{primary}"])
    np.testing.assert_array_equal(out["is_anomaly"], out["score"] > fitted.thresholds_[primary])
    assert out["p_value"].between(0, 1).all()
    # on the records' own index (the test split's is shuffled), so the scores join back
    pd.testing.assert_index_equal(out.index, splits["test"].index)
    joined = splits["test"].join(out[["score"]])
    np.testing.assert_array_equal(joined["score"], out["score"])


def test_scores_are_deterministic_and_batch_independent(fitted, splits):
    a = fitted.score(splits["test"])
    b = fitted.score(splits["test"])
    pd.testing.assert_frame_equal(a, b)
    one = fitted.score(splits["test"].iloc[[5]])
    np.testing.assert_allclose(one["score"].iloc[0], a["score"].iloc[5], rtol=1e-5)


def test_vae_scores_match_their_definitions(splits):
    """The scoring pass decodes the posterior mean and the draws together; each score is still
    its formula: recon from the posterior mean's reconstruction alone (the same numbers),
    elbo and agg_elbo from the fixed draws."""
    import torch

    from training.nn.losses import gaussian_nll, kl_to_mixture_bound, kl_to_standard_normal

    det = Detector(kind="vae", id_column="id", label_column="malignant", **FAST)
    det.fit(splits["fit"])
    X, _ = det.preprocessor_.transform(splits["test"], "test")
    raw = det.raw_scores(splits["test"])
    net, x = det.network_, torch.from_numpy(X)
    with torch.inference_mode():
        mu, logvar = net.encode(x)
        err = (net.decode(mu) - x).pow(2).mean(dim=0)
        recon = (err / torch.from_numpy(det.feature_scale_.astype(np.float32))).mean(dim=1)
        nll = torch.stack([
            gaussian_nll(x, net.decode(mu + e * torch.exp(0.5 * logvar)),
                         net.decoder_logvar.unsqueeze(1)).sum(dim=-1)
            for e in det._eps(det.params.mc_samples)]).mean(dim=0)  # (M, n)
        elbo = (nll + kl_to_standard_normal(mu, logvar)).mean(dim=0)
        kl = kl_to_mixture_bound(mu, logvar, det.prior_["mu"], det.prior_["logvar"])
        agg = (nll.double() + kl).mean(dim=0)
    np.testing.assert_array_equal(raw["recon"], recon.double().numpy())
    np.testing.assert_allclose(raw["elbo"], elbo.double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(raw["agg_elbo"], agg.numpy(), rtol=1e-5)


def test_save_load_round_trip_gives_identical_scores(fitted, splits, tmp_path):
    fitted.save(tmp_path / "m")
    vae = ["aggregate_prior.pt"] if fitted.params.kind == "vae" else []
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        *vae[:1], "detector.json", "preprocessing.json", *(["reference.pt"] if vae else []),
        "weights.pt"]
    again = Detector.load(tmp_path / "m")
    pd.testing.assert_frame_equal(again.score(splits["test"]), fitted.score(splits["test"]))
    assert again.thresholds_ == fitted.thresholds_


def test_old_formats_and_missing_files_are_refused_with_the_reason(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    meta["format_version"] = 2
    (tmp_path / "m" / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="format 2"):
        Detector.load(tmp_path / "m")
    fitted.save(tmp_path / "n")
    missing = "aggregate_prior.pt" if fitted.params.kind == "vae" else "weights.pt"
    (tmp_path / "n" / missing).unlink()
    with pytest.raises(ModelFormatError, match=missing):
        Detector.load(tmp_path / "n")


def test_anomalies_score_higher_than_normals(fitted, splits):
    out = fitted.score(splits["test"])
    y = splits["test"]["malignant"].to_numpy()
    assert out["score"][y == 1].median() > out["score"][y == 0].median()


def test_explain_encode_reconstruct(fitted, splits):
    rows = splits["test"].head(4)
    ex = fitted.explain(rows)
    assert ex.shape == (4, 30) and (ex >= 0).all()
    frame = fitted.explain_frame(rows)
    assert list(frame.columns) == fitted.preprocessor_.input_columns_
    np.testing.assert_array_equal(frame.to_numpy(), ex)
    # the same numbers from the scoring pass, without encoding the records again
    np.testing.assert_array_equal(fitted.score_columns(rows, explain=True)["explanation"], ex)
    # the recon score is the mean of the per-feature terms (all features numeric here)
    np.testing.assert_allclose(ex.mean(axis=1), fitted.score(rows)["score_recon"], rtol=1e-4)
    z = fitted.encode(rows)
    assert z.shape == (4, fitted.resolved_["latent_dim"])
    rec = fitted.reconstruct(rows)
    assert list(rec.columns) == fitted.preprocessor_.input_columns_


def test_vae_generation_tools(splits):
    det = Detector(kind="vae", id_column="id", label_column="malignant", **FAST).fit(splits["fit"])
    samples = det.sample(5, seed=1)
    assert samples.shape == (5, 30) and np.isfinite(samples.to_numpy()).all()
    pd.testing.assert_frame_equal(samples, det.sample(5, seed=1))
    path = det.interpolate(splits["fit"].iloc[[0]], splits["fit"].iloc[[1]], steps=6)
    assert path.shape == (6, 30)


def test_training_is_reproducible(splits):
    kw = {"kind": "ae", "id_column": "id", "label_column": "malignant", **FAST}
    a = Detector(**kw).fit(splits["fit"]).raw_scores(splits["test"])
    b = Detector(**kw).fit(splits["fit"]).raw_scores(splits["test"])
    np.testing.assert_array_equal(a["recon"], b["recon"])


def test_denoising_and_beta_options_train(splits):
    det = Detector(kind="vae", noise_std=0.2, beta=0.5, id_column="id",
                   label_column="malignant", max_epochs=3).fit(splits["fit"])
    assert len(det.history_) == 3


def test_errors_name_the_fix(splits):
    det = Detector(kind="ae")
    with pytest.raises(NotFittedError, match="call fit"):
        det.score(splits["test"])
    det = Detector(kind="ae", id_column="id", label_column="malignant", max_epochs=2)
    det.fit(splits["fit"])
    with pytest.raises(NotFittedError, match="call calibrate"):
        det.score(splits["test"])
    with pytest.raises(NotFittedError, match="needs a VAE"):
        det.sample(3)
    with pytest.raises(DataError, match="at least"):
        Detector().fit(splits["fit"].head(MIN_FIT_ROWS - 1))
    with pytest.raises(ConfigError, match="unknown detector parameter"):
        Detector(hiden_sizes=[3])
    with pytest.raises(ConfigError, match="primary_score"):
        Detector(kind="ae", primary_score="elbo")


def test_numpy_input_is_accepted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    det = Detector(kind="ae", max_epochs=3).fit(X[:150]).calibrate(X[150:])
    assert len(det.score(X[:5])) == 5


def test_a_frame_with_columns_named_by_numbers_is_read_by_their_text():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)))  # columns 0, 1, 2
    det = Detector(kind="ae", max_epochs=3).fit(frame)
    assert det.preprocessor_.input_columns_ == ["0", "1", "2"]
    np.testing.assert_array_equal(det.raw_scores(frame.head(5))["recon"],
                                  det.raw_scores(frame.head(5).rename(columns=str))["recon"])
    assert list(det.reconstruct(frame.head(2)).columns) == ["0", "1", "2"]
    with pytest.raises(DataError, match="column '1': appears more than once"):
        det.raw_scores(frame.assign(**{"1": 0.0}))


def test_default_ensemble_size_by_kind():
    from training.detector.image_params import ImageDetectorParams
    from training.params import DetectorParams

    assert DetectorParams(kind="vae").n_models == 3
    assert DetectorParams(kind="ae").n_models == 1
    assert DetectorParams(kind="vae", n_models=1).n_models == 1
    assert ImageDetectorParams(kind="conv_vae").n_models == 1
    with pytest.raises(ConfigError, match="n_models"):
        DetectorParams(kind="vae", n_models=0)


def test_numpy_parameter_values_are_plain_values_and_messages_show_them_so():
    det = Detector(kind="ae", max_epochs=np.int64(3), hidden_sizes=np.array([8, 4]),
                   dropout=np.float32(0.25))
    assert det.params.max_epochs == 3 and type(det.params.max_epochs) is int
    assert det.params.hidden_sizes == [8, 4] and det.params.dropout == 0.25
    json.dumps(det.params.to_dict())  # saved as JSON with the model
    for params, message in (
            ({"max_epochs": np.int64(-2)}, "max_epochs: expected a positive integer, got -2"),
            ({"learning_rate": np.float64(np.inf)},
             "learning_rate: expected a finite number, got inf"),
            ({"beta": np.float64(np.inf)}, "beta: expected a finite number, got inf"),
            ({"dropout": np.float64(2.0)}, "dropout: 2.0 is out of range"),
            ({"hidden_sizes": [np.int64(2), -1]},
             "hidden_sizes: expected positive integers up to 16384, got [2, -1]")):
        with pytest.raises(ConfigError) as info:
            Detector(kind="ae", **params)
        assert str(info.value) == message


def test_models_saved_before_the_neighbour_default_load_as_they_were(splits, tmp_path):
    det = Detector(kind="vae", id_column="id", label_column="malignant", neighbours=0,
                   n_models=1, max_epochs=3).fit(splits["fit"]).calibrate(splits["cal"])
    path = det.save(tmp_path / "m")
    meta = json.loads((path / "detector.json").read_text())
    del meta["params"]["neighbours"]  # saved before the parameter existed
    (path / "detector.json").write_text(json.dumps(meta))
    again = Detector.load(path)
    assert again.params.neighbours == 0 and again.primary_score == "elbo"
    pd.testing.assert_frame_equal(again.score(splits["test"]), det.score(splits["test"]))


def test_a_model_saved_with_the_kth_distance_keeps_it_until_it_is_fitted_again(splits, tmp_path):
    det = Detector(kind="ae", id_column="id", label_column="malignant", neighbours=3, **FAST)
    path = det.fit(splits["fit"]).calibrate(splits["cal"]).save(tmp_path / "m")
    meta = json.loads((path / "detector.json").read_text())
    del meta["knn_mean"]  # saved when knn was the distance to the k-th nearest
    (path / "detector.json").write_text(json.dumps(meta))
    old = Detector.load(path)
    rows = splits["test"].head(5)
    X, _ = old.preprocessor_.transform(rows)
    ref = old.reference_.numpy().astype(np.float64)
    d = np.sort(np.sqrt(((X[:, None, :].astype(np.float64) - ref[None]) ** 2).sum(-1)), axis=1)
    np.testing.assert_allclose(old.raw_scores(rows)["knn"], d[:, 2], rtol=1e-6)
    old.fit(splits["fit"]).calibrate(splits["cal"])
    assert old.knn_mean_ and json.loads(old.save(tmp_path / "n").joinpath(
        "detector.json").read_text())["knn_mean"] is True


def test_neighbour_scores_by_hand_and_through_save_and_load(splits, tmp_path):
    det = Detector(kind="ae", id_column="id", label_column="malignant", neighbours=3, **FAST)
    det.fit(splits["fit"]).calibrate(splits["cal"])
    assert det.score_kinds == ("recon", "knn", "combined")
    rows = splits["test"].head(7)
    raw = det.raw_scores(rows)
    # knn: mean distance to the 3 nearest reference rows, by brute force
    X, _ = det.preprocessor_.transform(rows)
    ref = det.reference_.numpy().astype(np.float64)
    d = np.sqrt(((X[:, None, :].astype(np.float64) - ref[None]) ** 2).sum(-1))
    np.testing.assert_allclose(raw["knn"], np.sort(d, axis=1)[:, :3].mean(1), rtol=1e-6)
    # combined: the mean of the two parts, each standardised on the validation normals
    (loc_r, sc_r), (loc_k, sc_k) = det.combination_["recon"], det.combination_["knn"]
    expected = ((raw["recon"] - loc_r) / sc_r + (raw["knn"] - loc_k) / sc_k) / 2
    np.testing.assert_allclose(raw["combined"], expected, rtol=1e-9)
    det.save(tmp_path / "m")
    again = Detector.load(tmp_path / "m")
    pd.testing.assert_frame_equal(again.score(rows), det.score(rows))
    (tmp_path / "m" / "reference.pt").unlink()
    with pytest.raises(ModelFormatError, match="reference.pt"):
        Detector.load(tmp_path / "m")
    with pytest.raises(ConfigError, match="neighbours"):
        Detector(neighbours=-1)


def test_numbers_held_as_objects_are_numbers_and_a_refused_target_changes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(120, 3)), columns=["a", "b", "c"])
    det = Detector(kind="ae", max_epochs=2, n_models=2).fit(frame.astype(object))
    assert [s.kind for s in det.preprocessor_.columns_] == ["numeric"] * 3
    np.testing.assert_allclose(det.raw_scores(frame)["recon"],
                               det.raw_scores(frame.astype(object))["recon"])
    # id and label columns named by numbers, like the frame's own columns
    numbered = pd.DataFrame({0: frame.a, 1: frame.b, 2: np.arange(120), 3: 0})
    fitted = Detector(kind="ae", max_epochs=2, n_models=2, id_column=2, label_column=3)
    assert fitted.fit(numbered).preprocessor_.input_columns_ == ["0", "1"]
    # a target the params refuse leaves the model as it was, and loadable
    with pytest.raises(ConfigError, match="target_fpr"):
        det.calibrate(frame, target_fpr=1.5)
    assert det.params.target_fpr == 0.01
    det.save(tmp_path / "m")
    assert Detector.load(tmp_path / "m").params.target_fpr == 0.01
    det.calibrate(frame, target_fpr=np.float32(0.05))
    assert det.params.target_fpr == pytest.approx(0.05)
    with pytest.raises(DataError, match=r"the data has 'x0', 'x1', 'x2'"):
        det.raw_scores(frame.to_numpy())


def test_a_record_missing_every_feature_value_is_refused_naming_it(splits):
    """Imputed, it would be the typical normal record (p-value 1): it is refused, in scoring
    and in training, naming the record; one value is enough to be scored."""
    from training.preprocessing.tabular import EMPTY_RECORD

    det = Detector(kind="ae", id_column="id", label_column="malignant", max_epochs=2,
                   n_models=1).fit(splits["fit"]).calibrate(splits["cal"])
    rows = splits["test"].head(4).copy()
    features = [c for c in rows.columns if c not in ("id", "malignant")]
    rows.iloc[2, [rows.columns.get_loc(c) for c in features]] = np.nan
    with pytest.raises(DataError, match=re.escape(f"new.csv: record 2: {EMPTY_RECORD}")):
        det.score(rows, "new.csv")
    rows.iloc[2, rows.columns.get_loc(features[0])] = 1.0
    assert len(det.score(rows)) == 4
    train = splits["fit"].copy()
    train.iloc[7, [train.columns.get_loc(c) for c in features]] = np.nan
    with pytest.raises(DataError, match=r"train.csv: record 7: every feature value is missing"):
        Detector(kind="ae", id_column="id", label_column="malignant").fit(train, "train.csv")
    # the schema's check of a whole file names its record in file order, before any training
    with pytest.raises(DataError, match=r"train.csv: record 7: every feature value is missing"):
        TabularPreprocessor("id", "malignant").fit(train, "train.csv")
