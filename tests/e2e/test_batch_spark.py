"""``--engine spark``: pyspark in local mode scores with mlflow.pyfunc.spark_udf.

One Spark session serves the module (starting the JVM is the slow part).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.batch.job import run_batch
from pipelines.batch.options import ScoreOptions
from pipelines.cli.main import main
from tests.batch_support import NAME, pandas_written_frame, trained_store
from training.errors import DataError

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java")


@pytest.fixture(scope="module")
def spark():
    from pipelines.batch.engines.spark import spark_session

    session = spark_session()
    yield session
    session.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return trained_store(tmp_path_factory)


def test_spark_scores_match_in_process_scores(spark, store, tmp_path):
    src = tmp_path / "in.parquet"
    store.frame.to_parquet(src)
    local = run_batch(ScoreOptions(model=store.model_uri, input=str(src),
                                   output=str(tmp_path / "local.parquet"), keep=["id"],
                                   tracking_uri=store.uri))
    result = run_batch(ScoreOptions(model=store.model_uri, input=str(src),
                                    output=str(tmp_path / "spark"), keep=["id"],
                                    engine="spark", tracking_uri=store.uri))
    assert result.rows == len(store.frame) and result.model_version == "1"
    assert result.anomalies == local.anomalies
    got = pd.read_parquet(tmp_path / "spark").sort_values("id").reset_index(drop=True)
    want = pd.read_parquet(tmp_path / "local.parquet")
    assert list(got.columns) == list(want.columns)
    for c in ("score", "p_value", "score_recon", "p_value_recon"):
        np.testing.assert_allclose(got[c], want[c], rtol=1e-6, err_msg=c)
    assert (got["is_anomaly"] == want["is_anomaly"]).mean() > 0.995
    assert set(got["model_name"]) == {NAME}
    assert not (tmp_path / "spark._partial").exists()


def test_spark_schema_mismatch_fails_before_scoring(spark, store, tmp_path):
    src = tmp_path / "in.csv"
    store.frame.drop(columns=["mean_radius"]).to_csv(src, index=False)
    with pytest.raises(DataError, match="mean_radius"):
        run_batch(ScoreOptions(model=store.model_uri, input=str(src),
                               output=str(tmp_path / "o"), engine="spark",
                               tracking_uri=store.uri))
    assert not (tmp_path / "o").exists()


def _refused_then_skipped(store, src: Path, out: Path, match: str, keep=None):
    """``src`` fails the job with an error matching ``match`` and leaves no output; with
    ``--on-error skip`` it is scored: that job's result."""
    with pytest.raises(DataError, match=match):
        run_batch(ScoreOptions(model=store.model_uri, input=str(src), output=str(out),
                               engine="spark", tracking_uri=store.uri))
    assert not out.exists()
    return run_batch(ScoreOptions(model=store.model_uri, input=str(src), output=str(out),
                                  engine="spark", on_error="skip", keep=keep,
                                  tracking_uri=store.uri))


def test_spark_text_in_a_number_column_fails_naming_it_or_is_skipped(spark, store, tmp_path):
    src = tmp_path / "in.csv"
    frame = store.frame.astype({"mean_radius": object})
    frame.loc[[3, 8], "mean_radius"] = "abc"
    frame.to_csv(src, index=False)
    result = _refused_then_skipped(store, src, tmp_path / "o", f"^{src}: column 'mean_radius': "
                                   "expected a number, got 'abc'; fix the row or rerun with "
                                   "--on-error skip$")
    assert result.rows == len(frame) - 2 and result.inputs[0].rejected == 2
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=f"^{empty}: file is empty$"):
        run_batch(ScoreOptions(model=store.model_uri, input=str(empty),
                               output=str(tmp_path / "e"), engine="spark",
                               tracking_uri=store.uri))


def test_spark_refuses_or_skips_a_record_missing_every_feature_value(spark, store, tmp_path):
    """As the local engine does: imputed, such a record would be the typical normal one. The
    id and label columns are no features: a row with only those is still empty."""
    from training.preprocessing.tabular import EMPTY_RECORD

    frame = store.frame.copy()
    features = [c for c in frame.columns if c not in ("id", "malignant")]
    frame.loc[[4, 9], features] = np.nan
    for src in (tmp_path / "holes.csv", tmp_path / "holes.parquet"):
        frame.to_csv(src, index=False) if src.suffix == ".csv" else frame.to_parquet(src)
        result = _refused_then_skipped(store, src, tmp_path / "o", re.escape(
            f"{src}: {EMPTY_RECORD}; fix the row or rerun with --on-error skip"), keep=["id"])
        assert result.rows == len(frame) - 2 and result.inputs[0].rejected == 2
        ids = set(pd.read_parquet(tmp_path / "o")["id"])
        assert not ids & set(frame.loc[[4, 9], "id"])
        shutil.rmtree(tmp_path / "o")


@pytest.fixture(scope="module")
def pandas_written(tmp_path_factory) -> tuple[str, str, Path]:
    """A two-epoch AE trained on a CSV as pandas writes it: the frame's index as an unnamed
    first column, lowercase true/false (pandas: booleans), 'None' and '<NA>' for missing.
    (store URI, model URI, the folder)"""
    frame = pandas_written_frame(120)
    folder = tmp_path_factory.mktemp("pandas-written")
    frame.to_csv(folder / "written.csv")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        assert main(["train", "--data", str(folder / "written.csv"), "--kind", "ae",
                     "--name", "pandas-written", "--epochs", "2", "--alias", "champion",
                     "--experiment", "batch-tests", "--tracking-uri", uri]) == 0
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    return uri, "models:/pandas-written@champion", folder


def test_spark_reads_a_csv_as_training_and_the_local_engine_read_it(spark, pandas_written,
                                                                   tmp_path):
    """An unnamed index column is 'Unnamed: 0' (Spark: '_c0'), pandas' missing-value tokens
    are missing (Spark: the text 'None', a number column read as text), numbers with spaces
    around them are numbers and lowercase true/false are the booleans the model trained with:
    the Spark engine's scores are the local engine's and the detector's on pandas' frame."""
    from pipelines.batch.model import load_batch_model
    from training.data.tables import read_table

    uri, model_uri, folder = pandas_written
    lines = (folder / "written.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    for i, f in enumerate(rows):
        f[1], f[2] = f" {f[1]}", f"{f[2]} "  # ' 3.363', '3.363 '
        if i % 7 == 1:
            f[3] = ("NULL", "N/A", "nan")[i % 3]
        if i % 11 == 2:
            f[4], f[5] = "<NA>", "None"  # a missing category and boolean
    src = tmp_path / "scored.csv"
    src.write_text("\n".join([lines[0], *(",".join(f) for f in rows)]) + "\n")
    assert lines[0].startswith(",a,b,")

    run_batch(ScoreOptions(model=model_uri, input=str(src), output=str(tmp_path / "local.parquet"),
                           tracking_uri=uri))
    result = run_batch(ScoreOptions(model=model_uri, input=str(src),
                                    output=str(tmp_path / "spark"), engine="spark",
                                    tracking_uri=uri))
    assert result.rows == len(rows) and result.inputs[0].rejected == 0
    got = pd.read_parquet(tmp_path / "spark").sort_values("Unnamed: 0").reset_index(drop=True)
    local = pd.read_parquet(tmp_path / "local.parquet")
    assert got.columns[0] == "Unnamed: 0" and list(got.columns) == list(local.columns)
    assert (got["unknown_categories"] == 0).all()
    detector = load_batch_model(model_uri, tmp_path, tracking_uri=uri).detector
    want = detector.score(read_table(src), source=str(src))
    for c in ("score", "score_recon", "p_value"):
        np.testing.assert_allclose(got[c], local[c], rtol=1e-6, err_msg=c)
        np.testing.assert_allclose(got[c], want[c], rtol=1e-6, err_msg=c)
