"""``anomaly score`` on a cached table (sequence, image) model through its ONNX graph, as
real processes.

The first job scores with torch and writes the graph beside the cached model in the
background; the next one scores through the graph, imports neither torch nor MLflow (its
MLflow run is kept by a helper process), and writes the same scores. An alias that moved since
the version was cached is followed; an unreachable registry fails the job with nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli.main import main
from pipelines.demo.run import write_demo_data
from tests.servers import free_port
from training.detector.graph_files import graph_ready

NAME = "graph-bc"
SCORES = ["score", "score_recon"]
P_VALUES = ["p_value", "p_value_recon"]
# Prints which of torch and MLflow the job imported, at its exit.
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('IMPORTED %s\\n' % "
         "[m for m in ('torch', 'mlflow') if m in sys.modules])); "
         "from pipelines.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graph-store")
    csv = write_demo_data(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert main(["train", "--data", str(csv), "--kind", "ae", "--name", NAME, "--id-column",
                 "id", "--label-column", "malignant", "--epochs", "2", "--alias", "champion",
                 "--tracking-uri", uri]) == 0
    env = {**os.environ, "ANOMALY_CACHE_DIR": str(folder / "cache"),
           "ANOMALY_GRAPH_RUNTIME": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    return {"folder": folder, "uri": uri, "csv": csv, "env": env,
            "graph": folder / "cache" / NAME / "v1" / "graph"}


def _score(store, out: Path, *, model: str = f"models:/{NAME}@champion",
           tracking_uri: str | None = None, env: dict[str, str] | None = None,
           keep: tuple[str, ...] = ("--keep", "id")) -> subprocess.CompletedProcess:
    args = ["score", "--model", model, "--tracking-uri", tracking_uri or store["uri"],
            "--input", str(store["csv"]), "--output", str(out), *keep]
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                          text=True, timeout=300, env={**store["env"], **(env or {})})


def _wait_for_graph(graph: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not graph_ready(graph):
        assert time.monotonic() < deadline, "the background export wrote no graph"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def torch_scored(store, tmp_path_factory) -> pd.DataFrame:
    """The first job: torch, then the graph written in the background for the next one."""
    out = tmp_path_factory.mktemp("torch") / "o.parquet"
    done = _score(store, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED ['torch', 'mlflow']" in done.stderr
    _wait_for_graph(store["graph"])
    return pd.read_parquet(out)


def test_cached_graph_scores_like_torch_without_importing_torch_or_mlflow(
        store, torch_scored, tmp_path):
    out = tmp_path / "o.parquet"
    done = _score(store, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED []" in done.stderr
    got = pd.read_parquet(out)
    assert list(got.columns) == list(torch_scored.columns)
    for c in SCORES:
        np.testing.assert_allclose(got[c], torch_scored[c], rtol=1e-5, atol=1e-7, err_msg=c)
    for c in P_VALUES:
        # A record of the calibration split ties its own calibration score under torch; float32
        # rounding in the graph may move it one rank, one step of 1 / (n_calibration + 1).
        step = torch_scored[c].min()
        assert np.abs(got[c] - torch_scored[c]).max() <= step + 1e-12, c
        assert (got[c] == torch_scored[c]).mean() > 0.9, c
    np.testing.assert_array_equal(got["id"], torch_scored["id"])
    assert (got["is_anomaly"] == torch_scored["is_anomaly"]).mean() > 0.99
    assert set(got["model_version"]) == {"1"}
    # The helper kept the job's run: parameters, metrics, artifacts, finished.
    client = MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("batch-scoring")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                             max_results=1)[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_id in done.stdout
    assert run.data.params["model_version"] == "1" and run.data.tags["model_name"] == NAME
    assert run.data.metrics["rows"] == len(got)
    assert run.data.metrics["anomalies"] == int(got["is_anomaly"].sum())
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"inputs.txt", "summary.json"} <= names


def test_a_moved_alias_is_followed_not_the_cached_version(store, torch_scored, tmp_path):
    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    v1 = client.get_model_version(NAME, "1")
    v2 = client.create_model_version(NAME, v1.source, run_id=v1.run_id)
    client.set_registered_model_alias(NAME, "champion", v2.version)
    try:
        out = tmp_path / "o.parquet"
        done = _score(store, out)
        assert done.returncode == 0, done.stderr[-3000:]
        got = pd.read_parquet(out)
        assert set(got["model_version"]) == {str(v2.version)}
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def test_a_missing_input_is_exit_2_and_opens_no_run(store, torch_scored, tmp_path):
    client = MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("batch-scoring")
    before = len(client.search_runs([exp.experiment_id]))
    args = ["score", "--model", f"models:/{NAME}@champion", "--tracking-uri", store["uri"],
            "--input", str(tmp_path / "nowhere.csv"), "--output", str(tmp_path / "o.parquet")]
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=120, env=store["env"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert "nowhere.csv" in done.stderr and "Traceback" not in done.stderr
    # The helper, started before the input was checked, was stopped before it opened a run.
    assert len(client.search_runs([exp.experiment_id])) == before
    assert list(tmp_path.iterdir()) == []


def test_a_job_failing_mid_file_marks_its_run_failed(store, torch_scored, tmp_path):
    lines = store["csv"].read_text().splitlines()
    fields = lines[301].split(",")
    fields[2] = "n/a?"  # record 300: text in a numeric feature, past the checks
    lines[301] = ",".join(fields)
    src = tmp_path / "bad.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.parquet"
    args = ["score", "--model", f"models:/{NAME}@champion", "--tracking-uri", store["uri"],
            "--input", str(src), "--output", str(out), "--chunk-rows", "100"]
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True,
                          text=True, timeout=120, env=store["env"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert "bad.csv: record 300" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.parquet*"))
    client = MlflowClient(tracking_uri=store["uri"])
    exp = client.get_experiment_by_name("batch-scoring")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                             max_results=1)[0]
    assert run.data.params["input"] == str(src)
    assert run.info.status == "FAILED" and "record 300" in run.data.tags["error"]


def test_an_unreachable_registry_fails_the_job_and_writes_nothing(store, torch_scored,
                                                                  tmp_path):
    out = tmp_path / "o.parquet"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = _score(store, out, tracking_uri=dead,
                  env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"})
    assert done.returncode == 1, done.stderr[-3000:]
    assert "registry unreachable at http://127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


# -- a tracking server: the run through its REST API, no helper process ------------------------
@pytest.fixture(scope="module")
def server_store(tmp_path_factory):
    from tests.servers import MlflowServer

    folder = tmp_path_factory.mktemp("graph-server")
    server = MlflowServer(folder / "server").start()
    try:
        csv = write_demo_data(folder)
        env = {**os.environ, "ANOMALY_CACHE_DIR": str(folder / "cache"),
               "ANOMALY_GRAPH_RUNTIME": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        assert main(["train", "--data", str(csv), "--kind", "ae", "--name", NAME,
                     "--id-column", "id", "--label-column", "malignant", "--epochs", "2",
                     "--alias", "champion", "--tracking-uri", server.uri]) == 0
        store = {"folder": folder, "uri": server.uri, "csv": csv, "env": env,
                 "graph": folder / "cache" / NAME / "v1" / "graph"}
        first = _score(store, folder / "first.parquet")
        assert first.returncode == 0, first.stderr[-3000:]
        _wait_for_graph(store["graph"])
        yield store
    finally:
        server.stop()


def test_a_tracking_server_keeps_the_run_through_its_rest_api(server_store, tmp_path):
    out = tmp_path / "o.parquet"
    done = _score(server_store, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED []" in done.stderr
    got = pd.read_parquet(out)
    first = pd.read_parquet(server_store["folder"] / "first.parquet")
    np.testing.assert_allclose(got["score"], first["score"], rtol=1e-5, atol=1e-7)
    client = MlflowClient(tracking_uri=server_store["uri"])
    exp = client.get_experiment_by_name("batch-scoring")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                             max_results=1)[0]
    assert run.info.run_id in done.stdout
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("score-")
    # Kept by the job itself (its own argv), not by the helper process.
    assert run.data.tags["mlflow.source.name"] == "-c"
    assert run.data.tags["model_version"] == "1"
    assert run.data.params["model_uri"] == f"models:/{NAME}@champion"
    assert run.data.metrics["rows"] == len(got)
    assert run.data.metrics["anomalies"] == int(got["is_anomaly"].sum())
    inputs = client.download_artifacts(run.info.run_id, "inputs.txt", str(tmp_path))
    assert Path(inputs).read_text() == str(server_store["csv"])
    summary = client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))
    assert f'"rows": {len(got)}' in Path(summary).read_text()


def test_an_alias_removed_from_the_server_is_a_clear_error(server_store, tmp_path):
    client = MlflowClient(tracking_uri=server_store["uri"], registry_uri=server_store["uri"])
    client.delete_registered_model_alias(NAME, "champion")
    try:
        out = tmp_path / "o.parquet"
        done = _score(server_store, out)
        assert done.returncode == 2, done.stderr[-3000:]
        assert f"models:/{NAME}@champion: model '{NAME}' has no alias 'champion'" in done.stderr
        assert "Traceback" not in done.stderr and not out.exists()
    finally:
        client.set_registered_model_alias(NAME, "champion", "1")


def _torch_then_graph(tmp_path: Path, name: str, new_data: Path, train: list[str]
                      ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Train ``name`` (3 epochs, alias champion) into a fresh store, score ``new_data`` twice:
    first with torch (which writes the graph), then through the graph, without torch or
    MLflow in the job. Returns the store and the two outputs (torch's, the graph's)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", *train, "--name", name, "--epochs", "3", "--alias", "champion",
                 "--tracking-uri", uri]) == 0
    store = {"uri": uri, "csv": new_data,
             "env": {**os.environ, "ANOMALY_CACHE_DIR": str(tmp_path / "cache"),
                     "ANOMALY_GRAPH_RUNTIME": "true",
                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}}
    model = f"models:/{name}@champion"
    first = _score(store, tmp_path / "torch.parquet", model=model, keep=())
    assert first.returncode == 0, first.stderr[-3000:]
    assert "IMPORTED ['torch', 'mlflow']" in first.stderr
    _wait_for_graph(tmp_path / "cache" / name / "v1" / "graph")
    second = _score(store, tmp_path / "graph.parquet", model=model, keep=())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "IMPORTED []" in second.stderr
    return (store, pd.read_parquet(tmp_path / "torch.parquet"),
            pd.read_parquet(tmp_path / "graph.parquet"))


def test_a_sequence_model_scores_through_its_graph_after_the_first_job(tmp_path):
    """The first job on a sequence model writes its graph; the next one scores every row
    through it, without torch or MLflow, with the same scores and warm-up rows."""
    from tests.training.sequence_data import rotating

    normal, _ = rotating(600, seed=0)
    data = tmp_path / "normal.csv"
    normal.to_csv(data, index=False)
    new, _ = rotating(300, seed=4, anomalies=[(150, 180)], t0=9000)
    new.to_csv(tmp_path / "new.csv", index=False)
    _, want, got = _torch_then_graph(
        tmp_path, "graph-seq", tmp_path / "new.csv",
        ["--data", str(data), "--kind", "seq_ae", "--time-column", "t", "--window", "12"])
    assert list(got.columns) == list(want.columns) and len(got) == 300
    np.testing.assert_array_equal(got["warm_up"], want["warm_up"])
    assert got["warm_up"].sum() == 11
    np.testing.assert_allclose(got["score"].fillna(0), want["score"].fillna(0), rtol=1e-5,
                               atol=1e-6)


def test_an_image_model_scores_through_its_graph_unless_it_writes_maps(tmp_path):
    """The first job on an image model writes its graph; the next one scores the folder
    through it, without torch or MLflow, with the same scores; a job that writes anomaly maps
    loads the networks, which the maps need."""
    from tests.training.image_data import write_mvtec

    root = write_mvtec(tmp_path / "blob", n_train=40, n_test_good=6, n_defect=6)
    store, want, got = _torch_then_graph(tmp_path, "graph-img", root / "test",
                                         ["--data", str(root), "--kind", "conv_ae"])
    model = "models:/graph-img@champion"
    assert list(got.columns) == list(want.columns) and len(got) == 12
    np.testing.assert_array_equal(got["path"], want["path"])
    scores = [c for c in got.columns if c.startswith("score")]
    for c in scores:
        np.testing.assert_allclose(got[c], want[c], rtol=1e-4, atol=1e-6, err_msg=c)
    assert (got["is_anomaly"] == want["is_anomaly"]).mean() > 0.9
    maps = tmp_path / "maps"
    third = _score(store, tmp_path / "maps.parquet", model=model, keep=("--maps-dir", str(maps)))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "IMPORTED ['torch', 'mlflow']" in third.stderr
    assert len(list(maps.rglob("*.map.png"))) == 12
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "maps.parquet")["score"],
                               want["score"], rtol=1e-5)
