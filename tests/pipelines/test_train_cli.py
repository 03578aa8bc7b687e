"""The training pipeline through the CLI, into a real SQLite MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli.main import main
from training.detector import Detector

NAME = "bc"


@pytest.fixture(scope="module")
def store(tmp_path_factory, breast_cancer_csv):
    """Train an AE and a VAE once into a fresh SQLite store; yield its URI."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for kind in ("ae", "vae"):
        code = main(["train", "--data", str(breast_cancer_csv), "--kind", kind, "--name", NAME,
                     "--label-column", "malignant", "--id-column", "id", "--epochs", "15",
                     "--experiment", "tests", "--tracking-uri", uri])
        assert code == 0
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def test_both_versions_registered_with_alias_and_tags(store):
    client = MlflowClient()
    versions = sorted(client.search_model_versions(f"name = '{NAME}'"), key=lambda v: v.version)
    assert [v.tags["kind"] for v in versions] == ["ae", "vae"]
    assert [v.tags["primary_score"] for v in versions] == ["recon", "combined"]
    for v in versions:
        assert float(v.tags["threshold"]) > 0 and v.tags["target_fpr"] == "0.01"
    assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {
        "challenger": "2"}


def test_runs_share_metric_and_param_names(store):
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 2
    common = {"eval/auroc", "eval/ap", "eval/precision", "eval/recall", "eval/f1", "eval/fpr",
              "eval/auroc_recon", "calibration/threshold", "calibration/threshold_recon",
              "calibration/fpr_recon", "val_recon_mse", "fit/seconds", "fit/epochs",
              "fit/best_val_recon_mse"}
    for r in runs:
        assert common <= set(r.data.metrics), sorted(common - set(r.data.metrics))
        assert r.data.metrics["eval/auroc"] > 0.8
        assert r.info.status == "FINISHED"
        assert all("/" in k for k in r.data.metrics if not k.startswith(("train_", "val_")))
    assert set(runs[0].data.params) == set(runs[1].data.params)
    ae = next(r for r in runs if r.data.tags["kind"] == "ae")
    vae = next(r for r in runs if r.data.tags["kind"] == "vae")
    assert {"train_mse", "val_mse"} <= set(ae.data.metrics)
    assert not {"train_neg_elbo", "val_neg_elbo"} & set(ae.data.metrics)
    assert {"train_neg_elbo", "val_neg_elbo"} <= set(vae.data.metrics)
    assert {"eval/auroc_agg_elbo", "eval/auroc_elbo", "calibration/threshold_elbo"} <= set(
        vae.data.metrics)
    assert vae.data.metrics["eval/auroc"] == vae.data.metrics["eval/auroc_combined"]
    # The VAE ensemble cross-fits: its thresholds rest on every normal row it trained on, the
    # AE's on the held-out fifth, and each run says which.
    assert (ae.data.params["calibration"], vae.data.params["calibration"]) == (
        "held-out", "cross-fit")
    assert vae.data.params["n_fit_rows"] == vae.data.params["n_calibration_rows"]
    assert vae.data.metrics["calibration/n"] == float(vae.data.params["n_fit_rows"])
    assert ae.data.metrics["calibration/n"] == float(ae.data.params["n_calibration_rows"])
    # The VAE fits on the rows the AE splits between fitting and calibrating.
    assert int(vae.data.params["n_fit_rows"]) == int(ae.data.params["n_fit_rows"]) + int(
        ae.data.params["n_calibration_rows"])
    for run, objective in ((ae, "val_mse"), (vae, "val_neg_elbo")):
        epochs = int(run.data.metrics["fit/epochs"])
        recon = client.get_metric_history(run.info.run_id, "val_recon_mse")
        assert [m.step for m in recon] == list(range(1, epochs + 1))
        assert len(client.get_metric_history(run.info.run_id, objective)) == epochs
    # The AE's objective on the validation rows is their reconstruction error.
    assert ae.data.metrics["val_mse"] == pytest.approx(ae.data.metrics["val_recon_mse"],
                                                        rel=1e-4)
    # Comparable across kinds: a VAE's per-feature error is of the AE's order (its ELBO is not).
    assert vae.data.metrics["val_recon_mse"] < 10 * ae.data.metrics["val_recon_mse"] + 1
    artifacts = {a.path for a in client.list_artifacts(vae.info.run_id)}
    assert {"loss_curves.png", "scores_elbo.png", "scores_recon.png", "roc_pr.png"} <= artifacts
    shared = artifacts & {a.path for a in client.list_artifacts(ae.info.run_id)}
    assert {"loss_curves.png", "scores_recon.png", "roc_pr.png"} <= shared  # the compare view
    exp = client.get_experiment_by_name("tests")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_pyfunc_scores_match_the_detector(store, breast_cancer):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger")
    rows = breast_cancer.drop(columns=["id", "malignant"]).head(20)
    out = model.predict(rows)
    for col in ("score", "p_value", "is_anomaly", "score_agg_elbo", "score_elbo", "p_value_elbo",
                "score_recon", "p_value_recon"):
        assert col in out.columns
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}@challenger")
    det = Detector.load(f"{local}/artifacts/detector")
    pd.testing.assert_frame_equal(out.reset_index(drop=True), det.score(rows))
    assert model.metadata.signature is not None


def test_promote_and_list(store, capsys):
    assert main(["models", "--tracking-uri", store, "promote", NAME, "--version", "1",
                 "--alias", "champion"]) == 0
    aliases = MlflowClient().get_registered_model(NAME).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": "2", "champion": "1"}
    capsys.readouterr()
    assert main(["models", "--tracking-uri", store, "list"]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "challenger" in out
    auroc = [line.split()[6] for line in out.splitlines()[2:]]  # the runs' eval/auroc
    assert len(auroc) == 2 and all(0.5 < float(a) <= 1 for a in auroc), out
    assert main(["models", "--tracking-uri", store, "promote", NAME, "--version", "9"]) == 2
    assert "has no version 9" in capsys.readouterr().err


# -- bad input: one line naming the problem, exit 2, nothing logged or registered ------------
def _write(tmp_path, name, df):
    path = tmp_path / name
    df.to_csv(path, index=False) if name.endswith(".csv") else df.to_parquet(path)
    return path


BAD_CASES = {
    "missing file": (lambda t, df: t / "nope.csv", [], "nope.csv: file not found"),
    "empty file": (lambda t, df: (t / "e.csv").write_text("") or t / "e.csv", [],
                   "e.csv: file is empty"),
    "header only": (lambda t, df: _write(t, "h.csv", df.head(0)), [], "no rows"),
    "wrong suffix": (lambda t, df: _write(t, "x.csv", df).rename(t / "x.txt"), [],
                     "unsupported file type '.txt'"),
    "misnamed label": (lambda t, df: _write(t, "d.csv", df), ["--label-column", "malignnt"],
                       "label column 'malignnt' not found"),
    "misnamed id": (lambda t, df: _write(t, "d.csv", df), ["--id-column", "ident"],
                    "id column 'ident' not found"),
    "text in numeric": (lambda t, df: _write(t, "d.csv", df.astype({"mean_radius": object})
                                             .assign(mean_radius=lambda d: d.mean_radius.where(
                                                 d.index != d.index[7], "twelve"))), [],
                        "record 7, column 'mean_radius': expected a number, got 'twelve'"),
    "all missing column": (lambda t, df: _write(t, "d.parquet", df.assign(extra=np.nan)), [],
                           "column 'extra' is entirely missing"),
    "too few rows": (lambda t, df: _write(t, "d.csv", df.head(12)), [], "12 normal rows"),
    "eval data schema": (lambda t, df: _write(t, "d.csv", df), [
        "--label-column", "malignant", "--eval-data", "EVAL"], "missing column(s) ['mean_area']"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_fails_cleanly(case, tmp_path, breast_cancer, capsys):
    make, extra, message = BAD_CASES[case]
    df = breast_cancer.drop(columns=["id"])
    if case != "misnamed label" and "--label-column" not in extra:
        df = df[df.malignant == 0].drop(columns=["malignant"])
    path = make(tmp_path, df)
    extra = [str(_write(tmp_path, "ev.csv", breast_cancer.drop(columns=["mean_area"])))
             if a == "EVAL" else a for a in extra]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "--data", str(path), "--kind", "ae", "--name", "bad", "--epochs", "2",
                 "--tracking-uri", uri, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "mlflow.db").exists()  # failed before any run or registration


def test_unknown_config_key_through_the_console_script(tmp_path, breast_cancer_csv):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {breast_cancer_csv}\nname: m\nepocs: 3\n")
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--config", str(cfg)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {cfg}: unknown config key(s) ['epocs']; known keys: ['alias', "
        "'calibration_fraction', 'data', 'eval_data', 'eval_fraction', 'experiment', 'id_column', "
        "'kind', 'label_column', 'model', 'name', 'normal_class', 'register', 'seed', "
        "'target_fpr']"]
    assert not (tmp_path / "mlflow.db").exists()


def test_too_few_calibration_records_warn_and_say_what_they_promise(tmp_path, breast_cancer,
                                                                      capsys):
    """60 normal rows leave 12 for calibration: too few for 1% (and for a tail fit), so the run
    says so in the CLI summary, a metric and the version's tags."""
    path = tmp_path / "small.csv"
    breast_cancer[breast_cancer.malignant == 0].head(60).drop(columns="malignant").to_csv(
        path, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["train", "--data", str(path), "--kind", "ae", "--name", "small", "--epochs",
                 "2", "--id-column", "id", "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0
    assert "WARNING: 12 calibration records cannot promise a false-positive rate of 0.01" in out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("small", "1")
    metrics = client.get_run(mv.run_id).data.metrics
    assert metrics["calibration/achievable_fpr"] == pytest.approx(1 / 13)
    assert metrics["calibration/target_fpr"] == 0.01
    assert float(mv.tags["achievable_fpr"]) == pytest.approx(1 / 13, rel=1e-5)


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupt_while_registering_leaves_no_version(store, breast_cancer_csv,
                                                          monkeypatch, capsys, existing):
    """Ctrl-C (or SIGTERM, which the CLI turns into one) after MLflow has created the version
    but before this process has its number: the version is taken back (and the registered
    model, when this run created it), and the run is not left RUNNING. Everything runs for
    real on a SQLite MLflow store; only the moment of the interrupt is injected, right after
    MLflow's own ``register_model`` returns (a signal's timing cannot be aimed there from
    outside): a real SIGTERM to this process, which the CLI's own handler turns into Ctrl-C."""
    name = NAME if existing else "interrupted"
    client = MlflowClient()
    before = len(client.search_model_versions(f"name = '{NAME}'"))
    real = mlflow.register_model

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(mlflow, "register_model", interrupted)
    code = main(["train", "--data", str(breast_cancer_csv), "--kind", "ae", "--name", name,
                 "--label-column", "malignant", "--id-column", "id", "--epochs", "1",
                 "--experiment", "interrupted", "--tracking-uri", store])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    if existing:
        assert len(client.search_model_versions(f"name = '{NAME}'")) == before
    else:
        assert client.search_registered_models(f"name = '{name}'") == []
    runs = mlflow.search_runs(experiment_names=["interrupted"], output_format="list")
    assert runs and all(r.info.status != "RUNNING" for r in runs)
