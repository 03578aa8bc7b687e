"""Image training through the CLI into a real SQLite MLflow store, and the image pyfunc."""

from __future__ import annotations

import base64

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli.main import main
from pipelines.demo.images import write_digits
from tests.training.image_data import normal_images, write_mvtec, write_png

EXPERIMENT = "image-tests"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """conv_ae on an MVTec-style PNG folder, conv_vae on the 8x8 digits (.npz); yield paths."""
    folder = tmp_path_factory.mktemp("imgstore")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    root = write_mvtec(folder / "blob", n_train=50, n_test_good=8, n_defect=8)
    digits = write_digits(folder)
    common = ["--experiment", EXPERIMENT, "--tracking-uri", uri]
    assert main(["train", "--data", str(root), "--kind", "conv_ae", "--name", "blob",
                 "--epochs", "25", *common]) == 0
    # The VAE as a two-member ensemble: it cross-fits, holding no images out for calibration.
    config = folder / "digits.yaml"
    config.write_text("model:\n  n_models: 2\n")
    assert main(["train", "--config", str(config), "--data", str(digits), "--kind", "conv_vae",
                 "--name", "digits", "--normal-class", "0", "--epochs", "4", *common]) == 0
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return {"uri": uri, "root": root, "folder": folder}


def _runs():
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    return {r.data.tags["kind"]: r for r in client.search_runs([exp.experiment_id])}


def test_runs_log_table_metric_names_and_pictures(store):
    client = MlflowClient()
    runs = _runs()
    assert set(runs) == {"conv_ae", "conv_vae"}
    for kind, run in runs.items():
        m = run.data.metrics
        assert {"eval/auroc", "eval/ap", "calibration/threshold", "calibration/threshold_recon",
                "eval/auroc_recon", "eval/fpr", "calibration/fpr_recon", "fit/seconds",
                "fit/epochs", "val_recon_mse"} <= set(m)
        objective = "neg_elbo" if kind == "conv_vae" else "mse"
        assert {f"train_{objective}", f"val_{objective}"} <= set(m)
        assert run.data.params["kind"] == kind and run.info.status == "FINISHED"
        pictures = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
        assert {"images/reconstructions.png", "images/latent_space.png"} <= pictures
        plots = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"loss_curves.png", "roc_pr.png"} <= plots
    assert runs["conv_ae"].data.metrics["eval/auroc"] > 0.9  # the painted patches are obvious
    assert runs["conv_ae"].data.params["image_shape"] == "1x16x16"
    assert runs["conv_vae"].data.params["image_shape"] == "1x8x8"
    assert (runs["conv_ae"].data.params["calibration"],
            runs["conv_vae"].data.params["calibration"]) == ("held-out", "cross-fit")
    assert runs["conv_vae"].data.params["normal_class"] == "0"
    assert "eval/auroc_elbo" in runs["conv_vae"].data.metrics
    vae_pics = {a.path for a in client.list_artifacts(runs["conv_vae"].info.run_id, "images")}
    assert {"images/prior_samples.png", "images/interpolation.png"} <= vae_pics
    versions = client.search_model_versions("name = 'blob'")
    assert [v.tags["kind"] for v in versions] == ["conv_ae"]


def test_pyfunc_scores_base64_bytes_and_paths(store, tmp_path):
    model = mlflow.pyfunc.load_model("models:/blob@challenger")
    path = write_png(tmp_path / "one.png", normal_images(1, seed=3)[0])
    raw = path.read_bytes()
    by_image = model.predict(pd.DataFrame({"image": [base64.b64encode(raw).decode(), raw]}))
    by_path = model.predict(pd.DataFrame({"path": [str(path)]}))
    assert list(by_image.columns) == ["score", "p_value", "is_anomaly", "score_recon",
                                      "p_value_recon", "score_recon_vs_local",
                                      "p_value_recon_vs_local"]
    assert (by_image.score == by_image.score_recon_vs_local).all()  # the primary score
    assert by_image.score.nunique() == 1
    # float32 convolutions may round differently for another batch size
    assert by_path.score.iloc[0] == pytest.approx(by_image.score.iloc[0], rel=1e-5)


def test_bad_image_fails_before_a_run_and_names_the_file(store, capsys):
    bad = store["folder"] / "bad"
    for i, im in enumerate(normal_images(40)):
        write_png(bad / f"{i:02d}.png", im)
    (bad / "17b.png").write_bytes(b"not a png")
    before = len(_runs())
    code = main(["train", "--data", str(bad), "--kind", "conv_ae", "--name", "bad", "--epochs",
                 "1", "--experiment", EXPERIMENT, "--tracking-uri", store["uri"]])
    assert code == 2
    assert "17b.png" in capsys.readouterr().err
    assert len(_runs()) == before
    assert main(["train", "--data", str(bad), "--kind", "conv_ae", "--name", "bad",
                 "--normal-class", "3", "--experiment", EXPERIMENT,
                 "--tracking-uri", store["uri"]]) == 2


def test_batch_scores_a_folder_with_maps(store, tmp_path):
    out, maps = tmp_path / "scores.parquet", tmp_path / "maps"
    test_dir = store["root"] / "test"
    code = main(["score", "--model", "models:/blob@challenger", "--input", str(test_dir),
                 "--output", str(out), "--maps-dir", str(maps), "--tracking-uri", store["uri"]])
    assert code == 0
    df = pd.read_parquet(out)
    assert len(df) == 16 and df.columns[0] == "path"
    assert {"score", "p_value", "is_anomaly", "score_recon", "model_name",
            "model_version"} <= set(df.columns)
    defect = df.path.str.contains("/patch/")
    assert df.score[defect].min() > df.score[~defect].median()
    written = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.png"))
    assert len(written) == 16 and written[0] == "good/000.map.png"
    from PIL import Image

    assert Image.open(maps / "patch" / "000.map.png").size == (16, 16)


def test_batch_glob_and_bad_images(store, tmp_path, capsys):
    folder = tmp_path / "in"
    for i, im in enumerate(normal_images(3)):
        write_png(folder / f"{i}.png", im)
    (folder / "9.png").write_bytes(b"garbage")
    out = tmp_path / "o.csv"
    args = ["score", "--model", "models:/blob@challenger", "--input", str(folder / "*.png"),
            "--output", str(out), "--tracking-uri", store["uri"]]
    assert main(args) == 2
    assert "9.png" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--on-error", "skip"]) == 0
    assert len(pd.read_csv(out)) == 3
    assert "9.png" in (tmp_path / "o.rejects.csv").read_text()


def test_a_maps_dir_that_takes_no_files_exits_2_before_scoring(store, tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    out = tmp_path / "o.csv"
    code = main(["score", "--model", "models:/blob@challenger", "--input",
                 str(store["root"] / "test"), "--output", str(out), "--maps-dir", str(taken),
                 "--tracking-uri", store["uri"]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and f"error: {taken}: cannot write anomaly maps there" in err
    assert not out.exists()


def test_decoding_threads_change_nothing_but_the_speed(store, tmp_path, capsys, monkeypatch):
    """Chunks of 5 images, decoded in the scoring thread or by two threads a chunk ahead: the
    same rows in the same order, the same failing file, the same rejects."""
    from pipelines.batch.engines import images as engine

    monkeypatch.setattr(engine, "IMAGE_CHUNK", 5)
    folder = tmp_path / "in"
    for i, im in enumerate(normal_images(13)):
        write_png(folder / f"{i:02d}.png", im)
    outs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.parquet"
        assert main(["score", "--model", "models:/blob@challenger", "--input", str(folder),
                     "--output", str(out), "--decode-workers", str(workers),
                     "--tracking-uri", store["uri"]]) == 0
        outs[workers] = pd.read_parquet(out)
    assert len(outs[0]) == 13
    pd.testing.assert_frame_equal(outs[0], outs[2])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store["uri"])
    runs = client.search_runs([client.get_experiment_by_name("batch-scoring").experiment_id],
                              max_results=2, order_by=["attributes.start_time DESC"])
    assert sorted(r.data.params["decode_workers"] for r in runs) == ["0", "2"]
    (folder / "07.png").write_bytes(b"garbage")  # in the second chunk
    (folder / "11.png").write_bytes(b"garbage")  # in the third
    for workers in (0, 2):
        args = ["score", "--model", "models:/blob@challenger", "--input", str(folder),
                "--output", str(tmp_path / f"bad{workers}.csv"), "--decode-workers",
                str(workers), "--tracking-uri", store["uri"]]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "07.png" in err and "11.png" not in err
        assert not (tmp_path / f"bad{workers}.csv").exists()
        assert main([*args, "--on-error", "skip"]) == 0
        rejects = pd.read_csv(tmp_path / f"bad{workers}.rejects.csv")
        assert rejects["record"].tolist() == [7, 11]
    assert main(["score", "--model", "models:/blob@challenger", "--input", str(folder),
                 "--output", str(tmp_path / "x.csv"), "--decode-workers", "-1"]) == 2


def test_config_checks_image_options():
    from pipelines.train.config import TrainConfig
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match="label_column"):
        TrainConfig(data="x", name="n", kind="conv_ae", label_column="y")
    with pytest.raises(ConfigError, match="normal_class applies to images"):
        TrainConfig(data="x", name="n", kind="ae", normal_class=1)
    with pytest.raises(ConfigError, match="model.image_size"):
        TrainConfig(data="x", name="n", kind="conv_ae", model={"image_size": [1, 2, 3]})
    cfg = TrainConfig(data="x", name="n", kind="conv_vae", model={"image_size": 28})
    assert cfg.detector_params().image_size == [28, 28]


def test_separate_eval_data_and_splits(tmp_path):
    from pipelines.train.config import TrainConfig
    from pipelines.train.kinds import kind_for

    root = write_mvtec(tmp_path / "m", n_train=40, n_test_good=4, n_defect=5)
    for eval_data in (root / "test", root):  # a labelled folder, or an MVTec root's test/
        cfg = TrainConfig(data=str(root / "train" / "good"), name="n", kind="conv_ae",
                          eval_data=str(eval_data))
        prepared = kind_for("conv_ae").prepare(cfg, cfg.detector_params())
        splits, det, extra = prepared.splits, prepared.detector, prepared.params
        assert splits.eval_y.tolist() == [0] * 4 + [1] * 5
        assert len(splits.fit) + len(splits.calibration) == 40
        assert extra["image_shape"] == "1x16x16" and det.params.image_size == [16, 16]
