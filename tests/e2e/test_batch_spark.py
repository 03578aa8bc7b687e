"""``--engine spark``: pyspark in local mode scores with mlflow.pyfunc.spark_udf.

One Spark session serves the module (starting the JVM is the slow part).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from pipelines.batch.job import run_batch
from pipelines.batch.options import ScoreOptions
from tests.batch_support import NAME, trained_store
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


def test_spark_text_in_a_number_column_fails_naming_it_or_is_skipped(spark, store, tmp_path):
    src = tmp_path / "in.csv"
    frame = store.frame.astype({"mean_radius": object})
    frame.loc[[3, 8], "mean_radius"] = "abc"
    frame.to_csv(src, index=False)
    with pytest.raises(DataError, match=f"^{src}: column 'mean_radius': expected a number, "
                                        "got 'abc'; fix the row or rerun with --on-error skip$"):
        run_batch(ScoreOptions(model=store.model_uri, input=str(src),
                               output=str(tmp_path / "o"), engine="spark",
                               tracking_uri=store.uri))
    assert not (tmp_path / "o").exists()
    result = run_batch(ScoreOptions(model=store.model_uri, input=str(src),
                                    output=str(tmp_path / "o"), engine="spark",
                                    on_error="skip", tracking_uri=store.uri))
    assert result.rows == len(frame) - 2 and result.inputs[0].rejected == 2
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=f"^{empty}: file is empty$"):
        run_batch(ScoreOptions(model=store.model_uri, input=str(empty),
                               output=str(tmp_path / "e"), engine="spark",
                               tracking_uri=store.uri))
