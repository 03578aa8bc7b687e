"""Image scoring over HTTP: a real ``anomaly serve`` process serving a conv_ae from SQLite."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.train.config import TrainConfig
from pipelines.train.run import run_training
from service.schemas import ImageScoreResponse
from tests.training.image_data import DEFECT, normal_images, paint_defect, write_mvtec


def _png(image: np.ndarray, mode: str = "L") -> bytes:
    img = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    buf = io.BytesIO()
    (img.convert(mode) if mode != "L" else img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def svc(tmp_path_factory, service_factory):
    folder = tmp_path_factory.mktemp("img-svc")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = TrainConfig(data=str(write_mvtec(folder / "blob")), name="blob", kind="conv_ae",
                      alias="champion", experiment="image-service",
                      model={"max_epochs": 30, "patience": 30})
    run_training(cfg, tracking_uri=uri)
    return service_factory(["models:/blob@champion"], uri)


def test_score_images_with_maps(svc):
    normal = normal_images(2, seed=11)
    broken = paint_defect(normal_images(1, seed=12)[0], (1, 11))
    files = [("files", ("a.png", _png(normal[0]), "image/png")),
             ("files", ("b.png", _png(normal[1], "RGB"), "image/png")),
             ("files", ("defect.png", _png(broken), "image/png"))]
    with svc.client() as c:
        r = c.post("/v1/models/blob/score-images", files=files, params={"maps": "true"})
    assert r.status_code == 200, r.text
    body = ImageScoreResponse.model_validate(r.json())
    assert body.model.kind == "conv_ae" and body.image_shape == [1, 16, 16]
    assert [x.file for x in body.results] == ["a.png", "b.png", "defect.png"]
    assert body.results[2].score > max(body.results[0].score, body.results[1].score)
    assert body.results[2].is_anomaly
    m = np.asarray(Image.open(io.BytesIO(base64.b64decode(body.results[2].anomaly_map_png))))
    assert m.shape == (16, 16)
    py, px = np.unravel_index(np.argmax(m), m.shape)
    assert 0 <= py <= 1 + DEFECT and 10 <= px <= 11 + DEFECT


def test_bad_files_are_4xx_naming_the_file(svc):
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 0] = 255
    buf = io.BytesIO()
    Image.fromarray(colour).save(buf, format="PNG")
    good = ("files", ("ok.png", _png(normal_images(1)[0]), "image/png"))
    with svc.client() as c:
        for bad, expected in (
                (("files", ("notes.txt", b"hello", "text/plain")), "notes.txt"),
                (("files", ("red.png", buf.getvalue(), "image/png")), "red.png: a colour")):
            r = c.post("/v1/models/blob/score-images", files=[good, bad])
            assert r.status_code == 422, r.text
            assert expected in r.json()["error"]["message"]
        r = c.post("/v1/models/blob/score", json={"records": [{"x": 1}]})
        assert r.status_code == 422 and "score-images" in r.json()["error"]["message"]
        r = c.post("/v1/models/blob/score-images")
        assert r.status_code == 422
        r = c.get("/v1/models/blob")
        assert r.status_code == 200 and r.json()["kind"] == "conv_ae"


def test_mlflow_invocations_score_base64_images_as_the_pyfunc_does(svc):
    """A client of ``mlflow models serve`` for an image model (one record per image, base64 in
    the column ``image``) changes its base URL only: the pyfunc's columns and numbers."""
    import mlflow
    import pandas as pd

    images = [*normal_images(2, seed=21), paint_defect(normal_images(1, seed=22)[0], (2, 2))]
    encoded = [base64.b64encode(_png(x)).decode() for x in images]
    expected = mlflow.pyfunc.load_model("models:/blob@champion").predict(
        pd.DataFrame({"image": encoded}))
    with svc.client() as c:
        split = c.post("/invocations", json={"dataframe_split": {
            "columns": ["image"], "data": [[e] for e in encoded]}})
        records = c.post("/v1/models/blob/invocations",
                         json={"dataframe_records": [{"image": e} for e in encoded]})
        uploads = c.post("/v1/models/blob/score-images", files=[
            ("files", (f"{i}.png", _png(x), "image/png")) for i, x in enumerate(images)])
    assert split.status_code == 200 and records.status_code == 200, (split.text, records.text)
    got = split.json()["predictions"]
    assert records.json()["predictions"] == got
    assert list(got[0]) == list(expected.columns)
    np.testing.assert_allclose([p["score"] for p in got], expected["score"], rtol=1e-4,
                               atol=1e-5)
    assert [p["is_anomaly"] for p in got] == [False, False, True]
    np.testing.assert_allclose([p["score"] for p in got],
                               [r["score"] for r in uploads.json()["results"]], rtol=1e-12)


@pytest.mark.parametrize(("body", "status", "expected"), [
    ({"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"], ["%%%"]]}},
     422, "record 1"),
    ({"dataframe_records": [{"path": "/etc/passwd"}]}, 422, "a path names a file"),
    ({"dataframe_records": [{"image": 7}]}, 422, "base64 string"),
    ({"instances": []}, 422, "no records"),
])
def test_mlflow_invocations_refuse_bad_images_naming_the_record(svc, body, status, expected):
    with svc.client() as c:
        r = c.post("/invocations", json=body)
        csv = c.post("/invocations", content=b"image\nabc\n",
                     headers={"Content-Type": "text/csv"})
    assert r.status_code == status, r.text
    assert expected in r.json()["error"]["message"], r.text
    assert csv.status_code == 415 and "base64 in the column 'image'" in csv.text
