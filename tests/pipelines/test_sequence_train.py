"""Sequence training through the CLI into a real SQLite MLflow store, and the sequence pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli.main import main
from tests.training.sequence_data import rotating
from training.detector.persistence import load_detector

EXPERIMENT = "sequence-tests"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """seq_ae on one labelled series (anomalies in its last part); yield paths."""
    folder = tmp_path_factory.mktemp("seqstore")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    frame, labels = rotating(1500, seed=3, anomalies=[(1300, 1340), (1420, 1450)])
    data = folder / "pump.csv"
    frame.assign(y=labels).to_csv(data, index=False)
    assert main(["train", "--data", str(data), "--kind", "seq_ae", "--name", "pump",
                 "--time-column", "t", "--label-column", "y", "--window", "16", "--epochs",
                 "20", "--experiment", EXPERIMENT, "--tracking-uri", uri]) == 0
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return {"uri": uri, "data": data, "frame": frame, "folder": folder}


def test_run_logs_the_shared_metric_names_and_the_series_plot(store):
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id])
    m = run.data.metrics
    assert {"eval/auroc", "eval/ap", "eval/f1", "eval/fpr", "calibration/threshold",
            "calibration/achievable_fpr", "calibration/threshold_recon", "fit/seconds",
            "fit/epochs", "val_recon_mse", "train_mse", "val_mse"} <= set(m)
    assert m["eval/auroc"] > 0.9
    assert run.data.params["window"] == "16" and run.data.params["time_column"] == "t"
    # a turn every 20 steps decorrelates within the window: no channel is slow
    assert run.data.params["slow_channels"] == "centre"
    assert run.data.params["centred_channels"] == "none"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"series_scores.png", "loss_curves.png", "roc_pr.png"} <= artifacts


def test_pyfunc_scores_as_the_detector_does(store, tmp_path):
    model = mlflow.pyfunc.load_model("models:/pump@challenger")
    new = store["frame"].iloc[1200:1300].reset_index(drop=True)
    out = model.predict(new)
    assert len(out) == len(new) and out["warm_up"].sum() == 15
    path = mlflow.artifacts.download_artifacts("models:/pump@challenger", dst_path=str(tmp_path))
    det = load_detector(f"{path}/artifacts/detector")
    np.testing.assert_array_equal(out["score"].to_numpy(), det.score_series(new)["score"])


def test_shuffled_time_fails_before_a_run_naming_the_row(store, tmp_path, capsys):
    bad = store["frame"].copy()
    bad.loc[[10, 11], "t"] = bad.loc[[11, 10], "t"].to_numpy()
    path = tmp_path / "shuffled.csv"
    bad.to_csv(path, index=False)
    code = main(["train", "--data", str(path), "--kind", "seq_ae", "--name", "bad",
                 "--time-column", "t", "--experiment", EXPERIMENT, "--tracking-uri",
                 store["uri"]])
    assert code == 2
    err = capsys.readouterr().err
    assert "record 11" in err and "column 't'" in err and "earlier" in err


@pytest.mark.parametrize("flags, message", [
    (["--time-column", "nope"], "time column 'nope' not found"),
    (["--time-column", "t", "--series-column", "nope"], "series column 'nope' not found"),
    (["--time-column", "t", "--series-column", "unit"], "record 4, column 'unit': missing "
                                                        "series key"),
])
def test_a_missing_time_or_series_column_or_key_fails_before_a_run(store, tmp_path, capsys,
                                                                  flags, message):
    frame = store["frame"].head(200).assign(unit="p1").astype({"unit": object})
    frame.loc[4, "unit"] = None
    path = tmp_path / "units.csv"
    frame.to_csv(path, index=False)
    code = main(["train", "--data", str(path), "--kind", "seq_ae", "--name", "bad", *flags,
                 "--experiment", EXPERIMENT, "--tracking-uri", store["uri"]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and message in err, err


def test_a_folder_is_one_series_per_file(store, tmp_path):
    folder = tmp_path / "units"
    folder.mkdir()
    for k in range(2):
        rotating(500, seed=10 + k)[0].to_csv(folder / f"unit{k}.csv", sep=";", index=False)
    assert main(["train", "--data", str(folder), "--kind", "seq_vae", "--name", "units",
                 "--time-column", "t", "--epochs", "3", "--experiment", EXPERIMENT,
                 "--tracking-uri", store["uri"]]) == 0
    model = mlflow.pyfunc.load_model("models:/units@challenger")
    new = pd.read_csv(folder / "unit0.csv", sep=";").assign(series="unit0").iloc[:50]
    assert model.predict(new)["warm_up"].sum() < 50


@pytest.mark.parametrize("chunk", ["37", "100000"])
def test_batch_streams_a_long_series_in_chunks_with_the_pyfunc_scores(store, tmp_path, chunk):
    frame, _ = rotating(700, seed=4, t0=10_000)
    src, out = tmp_path / "long.csv", tmp_path / "scored.parquet"
    frame.to_csv(src, index=False)
    assert main(["score", "--model", "models:/pump@challenger", "--tracking-uri",
                 store["uri"], "--input", str(src), "--output", str(out),
                 "--chunk-rows", chunk]) == 0
    got = pd.read_parquet(out)
    expected = mlflow.pyfunc.load_model("models:/pump@challenger").predict(frame)
    assert len(got) == len(frame) and got["warm_up"].sum() == 15
    np.testing.assert_array_equal(got["warm_up"], expected["warm_up"])
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5)
    np.testing.assert_array_equal(got["t"], frame["t"])


def test_batch_names_the_record_whose_time_goes_back(store, tmp_path, capsys):
    frame, _ = rotating(200, seed=4, t0=10_000)
    frame.loc[150, "t"] = 10_001
    src = tmp_path / "bad.csv"
    frame.to_csv(src, index=False)
    code = main(["score", "--model", "models:/pump@challenger", "--tracking-uri", store["uri"],
                 "--input", str(src), "--output", str(tmp_path / "o.parquet"),
                 "--chunk-rows", "64"])
    assert code == 2
    err = capsys.readouterr().err
    assert "record 150" in err and "column 't'" in err


def test_spark_engine_refuses_a_sequence_model(store, tmp_path, capsys):
    src = tmp_path / "in.csv"
    store["frame"].head(50).to_csv(src, index=False)
    code = main(["score", "--model", "models:/pump@challenger", "--tracking-uri", store["uri"],
                 "--input", str(src), "--output", str(tmp_path / "o.parquet"),
                 "--engine", "spark"])
    assert code == 2
    assert "--engine local" in capsys.readouterr().err


def test_a_folder_whose_files_differ_names_the_file(store, tmp_path, capsys):
    folder = tmp_path / "units"
    folder.mkdir()
    store["frame"].head(100).to_csv(folder / "a.csv", index=False)
    store["frame"].head(100).rename(columns={"c": "d"}).to_csv(folder / "b.csv", index=False)
    code = main(["train", "--data", str(folder), "--kind", "seq_ae", "--name", "bad",
                 "--time-column", "t", "--experiment", EXPERIMENT, "--tracking-uri",
                 store["uri"]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {folder / 'b.csv'}: columns ['a', 'b', 'd', 't'] differ from those of " \
           "a.csv ['a', 'b', 'c', 't']" in err, err
