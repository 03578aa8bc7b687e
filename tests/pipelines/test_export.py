"""``anomaly export``: the graph and its sidecar reproduce the detector's scores in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.cli.main import main
from pipelines.registry.download import load_model
from tests.scores_support import assert_scores_close
from tests.training.image_data import normal_images, paint_defect
from training.calibration import conformal_p_values
from training.detector.image import ImageDetector
from training.preprocessing.tabular import TabularPreprocessor

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
RTOL = 1e-5


@pytest.fixture(scope="module")
def store(tmp_path_factory, breast_cancer_csv):
    """A table VAE (@champion) and an AE with the knn and combined scores whose rows are
    compared by direction (@knn)."""
    folder = tmp_path_factory.mktemp("export-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    common = ["--data", str(breast_cancer_csv), "--name", "bc-export", "--id-column", "id",
              "--label-column", "malignant", "--epochs", "3", "--tracking-uri", uri]
    assert main(["train", "--kind", "vae", "--alias", "champion", *common]) == 0
    config = folder / "knn.yaml"
    config.write_text("model:\n  neighbours: 5\n  geometry: direction\n")
    assert main(["train", "--kind", "ae", "--alias", "knn", "--config", str(config),
                 *common]) == 0
    return uri


def _session(path):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s, [o.name for o in s.get_outputs()]


def _away_from(scores: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Scores farther than the tolerance from every value of ``steps``."""
    gap = np.min(np.abs(scores[:, None] - steps[None, :]), axis=1)
    return gap > 10 * RTOL * np.maximum(np.abs(scores), 1e-12)


@pytest.mark.parametrize("alias, kinds", [("champion", ["agg_elbo", "elbo", "recon", "knn",
                                                       "combined"]),
                                          ("knn", ["recon", "knn", "combined"])])
def test_table_model_roundtrips_through_onnxruntime(store, breast_cancer, tmp_path, capsys,
                                                    alias, kinds):
    uri = f"models:/bc-export@{alias}"
    out = tmp_path / "model.onnx"
    capsys.readouterr()
    assert main(["export", uri, "--format", "onnx", "--output", str(out),
                 "--tracking-uri", store]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "model.onnx.json" in printed
    sidecar = json.loads((tmp_path / "model.onnx.json").read_text())
    assert list(sidecar["outputs"]) == kinds and sidecar["not_exported"] == {}
    assert sidecar["source"]["version"] in ("1", "2")

    # Everything a runtime needs comes from the sidecar: preprocessing, thresholds, p-values.
    pre = TabularPreprocessor.from_dict(sidecar["preprocessing"])
    assert pre.geometry_ == ("direction" if alias == "knn" else "columns")
    X, _ = pre.transform(breast_cancer, "records")
    session, names = _session(out)
    assert names == kinds and session.get_inputs()[0].name == sidecar["input"]["name"]
    got = dict(zip(names, session.run(None, {"x": X}), strict=True))
    want = load_model(uri, tracking_uri=store).detector.score(breast_cancer)
    for kind in kinds:
        scores = want[f"score_{kind}"].to_numpy()
        assert_scores_close(got[kind], scores, RTOL, kind)
        # p-values and flags step at the calibration scores (the table holds those very
        # records): equal wherever the score is not within the tolerance of a step.
        cal = np.asarray(sidecar["scores"][kind]["calibration_scores"])
        clear = _away_from(scores, cal)
        p = conformal_p_values(cal, got[kind])
        np.testing.assert_array_equal(p[clear], want[f"p_value_{kind}"].to_numpy()[clear])
        assert clear.mean() > 0.5
    primary = sidecar["primary_score"]
    threshold = sidecar["scores"][primary]["threshold"]
    clear = _away_from(want["score"].to_numpy(), np.array([threshold]))
    np.testing.assert_array_equal((got[primary] > threshold)[clear],
                                  want["is_anomaly"].to_numpy()[clear])
    # One record at a time, as an edge box would call it.
    one = session.run(None, {"x": X[:1]})
    assert_scores_close(one[0], want[f"score_{kinds[0]}"].to_numpy()[:1], RTOL, "one record")


def test_image_model_exports_the_graph_scores_and_names_what_it_cannot(tmp_path, capsys):
    images = normal_images(70, seed=3)
    det = ImageDetector(kind="conv_vae", max_epochs=2).fit(images[:55]).calibrate(images[55:])
    folder = tmp_path / "model"
    det.save(folder / "artifacts" / "detector")
    out = tmp_path / "digits.onnx"
    capsys.readouterr()
    assert main(["export", str(folder), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not exported: elbo_vs_png" in printed and "PNG" in printed
    sidecar = json.loads((tmp_path / "digits.onnx.json").read_text())
    assert "elbo_vs_png" in sidecar["not_exported"]
    assert sidecar["scores"]["elbo_vs_png"]["exported"] is False
    assert sidecar["preprocessing"]["class"] == "ImagePreprocessor"
    batch = np.stack([*images[55:60], paint_defect(images[60])])
    X, _ = det._matrix(batch, "images")
    session, names = _session(out)
    assert names == ["agg_elbo", "elbo", "recon", "elbo_vs_local", "recon_vs_local"]
    got = dict(zip(names, session.run(None, {"x": X}), strict=True))
    want = det.raw_scores(batch)
    for kind in names:
        assert_scores_close(got[kind], want[kind], RTOL, kind)


def test_unknown_model_is_the_callers_mistake(store, tmp_path, capsys):
    assert main(["export", "models:/nope@champion", "--output", str(tmp_path / "m.onnx"),
                 "--tracking-uri", store]) == 2
    assert "nope" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_output_that_is_a_folder_leaves_nothing_half_written(store, tmp_path, capsys):
    uri = "models:/bc-export@champion"
    folder = tmp_path / "graphs"
    folder.mkdir()
    (tmp_path / "m.onnx.json").mkdir()  # the sidecar's place is taken by a folder
    for out in (folder, tmp_path / "m.onnx"):
        capsys.readouterr()
        assert main(["export", uri, "--output", str(out), "--tracking-uri", store]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graphs", "m.onnx.json"]
    assert not list(folder.iterdir())



def test_a_special_file_at_the_output_is_not_replaced(store, tmp_path, capsys):
    """A pipe (or a device such as /dev/null) stays what it is: exit 2, nothing written; an
    empty path is the caller's mistake too."""
    import os
    import stat

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    for out in (str(fifo), ""):
        capsys.readouterr()
        assert main(["export", "models:/bc-export@champion", "--output", out,
                     "--tracking-uri", store]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.onnx"]

def test_the_graph_file_has_an_ordinary_files_permissions(store, tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", "models:/bc-export@champion", "--output", str(out),
                 "--tracking-uri", store]) == 0
    assert out.stat().st_mode & 0o777 == (tmp_path / "m.onnx.json").stat().st_mode & 0o777
