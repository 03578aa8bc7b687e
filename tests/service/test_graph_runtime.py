"""Table and sequence models scored through their ONNX graph: torch's answers, from
onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from service import model as served_model
from service.model import ModelSource, ServedModel
from training.detector import Detector
from training.detector.graph_files import MARKER, graph_ready

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
RTOL = 1e-5
SOURCE = ModelSource(uri="models:/g@champion", name="g", version="1", alias="champion",
                     run_id="r1")


@pytest.fixture(scope="module", params=["ae", "vae"])
def saved(request, table, tmp_path_factory):
    det = Detector(kind=request.param, max_epochs=3, seed=0).fit(table.iloc[:180])
    det.calibrate(table.iloc[180:])
    folder = tmp_path_factory.mktemp(f"graph-{request.param}")
    return det.save(folder / "detector"), folder / "graph"


def _load_after_export(path, graph):
    """The model with torch, and through its graph (written by the first load that finds none,
    in the background)."""
    if not graph_ready(graph):
        first = ServedModel.load(SOURCE, path, 100, graph_dir=graph)
        assert first.runtime == "torch"
        served_model._exports[graph].join(300)
        assert graph_ready(graph)
    return ServedModel.load(SOURCE, path, 100), ServedModel.load(SOURCE, path, 100,
                                                                graph_dir=graph)


def test_the_graph_gives_torchs_answers(saved, table):
    path, graph = saved
    torch_model, graph_model = _load_after_export(path, graph)
    assert graph_model.runtime == "onnxruntime"
    assert graph_model.describe()["runtime"] == "onnxruntime"
    assert graph_model.describe() | {"runtime": "torch", "loaded_at": None} == \
        torch_model.describe() | {"loaded_at": None}
    want = torch_model.score(table)
    got = graph_model.score(table)
    assert list(got) == list(want)
    cal = torch_model.scorer.calibrations_

    def tolerance(values):  # relative, or relative to the largest for a score crossing zero
        atol = RTOL * float(np.max(np.abs(values))) if np.any(values <= 0) else 0.0
        return RTOL * np.abs(values) + atol

    for name in want:
        if name.startswith("score"):
            np.testing.assert_array_less(np.abs(got[name] - want[name]),
                                         tolerance(want[name]) + 1e-300, err_msg=name)
    for kind, c in cal.items():  # p-values and flags equal away from a calibration score
        raw = want[f"score_{kind}"]
        gap = np.min(np.abs(raw[:, None] - np.append(c.scores, c.threshold)[None, :]), axis=1)
        away = gap > 10 * tolerance(raw)
        assert away.sum() >= 150  # the calibration rows themselves are not away
        np.testing.assert_array_equal(got[f"p_value_{kind}"][away],
                                      want[f"p_value_{kind}"][away])
    primary = torch_model.scorer.primary_score
    away = np.abs(want["score"] - cal[primary].threshold) > 10 * tolerance(want["score"])
    np.testing.assert_array_equal(got["is_anomaly"][away], want["is_anomaly"][away])
    # One record at a time: the same as in the whole batch.
    one = graph_model.score(table.iloc[[7]])
    np.testing.assert_array_less(np.abs(one["score"] - got["score"][[7]]),
                                 tolerance(got["score"])[[7]] + 1e-300)


def test_explanations_load_the_networks_on_first_use(saved, table):
    path, graph = saved
    torch_model, graph_model = _load_after_export(path, graph)
    assert "detector" not in graph_model._held
    got = graph_model.score(table.head(5), explain=True)
    want = torch_model.score(table.head(5), explain=True)
    np.testing.assert_array_equal(got["explanation"], want["explanation"])
    assert graph_model.detector is graph_model._held["detector"]
    assert graph_model.runtime == "onnxruntime"  # the networks explain; the graph scores


def test_a_stale_graph_is_not_read_and_is_written_again(saved, tmp_path):
    path, graph = saved
    _load_after_export(path, graph)
    marker = json.loads((graph / MARKER).read_text())
    (graph / MARKER).write_text(json.dumps({**marker, "graph_version": 0}))
    model = ServedModel.load(SOURCE, path, 100, graph_dir=graph)
    assert model.runtime == "torch"
    served_model._exports[graph].join(300)
    assert graph_ready(graph)
    assert ServedModel.load(SOURCE, path, 100, graph_dir=graph).runtime == "onnxruntime"


def test_without_a_graph_folder_the_model_scores_with_torch(saved):
    path, _ = saved
    assert ServedModel.load(SOURCE, path, 100).runtime == "torch"


def test_the_service_imports_neither_torch_nor_mlflow():
    """What a start from a warm cache needs: the app, the CLI and onnxruntime; torch and
    MLflow load later, only if a request or the registry check needs them."""
    code = ("import sys, service.app, pipelines.cli.main, training.detector.graph; "
            "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_first_call_that_needs_the_networks_runs_off_the_event_loop(saved, table):
    """Loading torch takes seconds: on a graph-served model the first explanation or code is
    computed in a worker thread, never inline on the event loop; later ones inline."""
    import asyncio
    import threading

    from service.routes.deps import run_sized

    path, graph = saved
    _, graph_model = _load_after_export(path, graph)

    def where(model):
        model.detector  # noqa: B018 - loads the networks on first use
        return threading.current_thread()

    async def call(networks):
        return threading.current_thread(), await run_sized(graph_model, 1, where,
                                                           networks=networks)

    loop_thread, ran_in = asyncio.run(call(networks=False))
    assert ran_in is loop_thread  # a graph-only call stays inline (and loads the networks)
    _, fresh = _load_after_export(path, graph)
    graph_model = fresh
    loop_thread, ran_in = asyncio.run(call(networks=True))
    assert ran_in is not loop_thread and graph_model.networks_loaded
    loop_thread, ran_in = asyncio.run(call(networks=True))
    assert ran_in is loop_thread


def test_the_graph_folder_is_readable_as_the_umask_allows(saved):
    path, graph = saved
    _load_after_export(path, graph)
    mask = os.umask(0o022)
    os.umask(mask)
    assert graph.stat().st_mode & 0o777 == 0o777 & ~mask


def test_a_small_image_request_is_scored_on_the_event_loop(saved_images):
    """A request of a few small images is scored inline (cheaper than a worker thread's hand
    -off); many images, a large one, anomaly maps before the networks are loaded, or a file
    whose header does not read go to a worker thread."""
    from service.scoring.images import INLINE_PIXELS, is_small
    from tests.training.image_data import normal_images, write_png

    path, graph = saved_images
    _, model = _load_after_export(path, graph)
    folder = path.parent / "inline"
    one = [("a.png", write_png(folder / "a.png", normal_images(1)[0]).read_bytes())]
    side = int(INLINE_PIXELS**0.5) + 1
    large = [("b.png", write_png(folder / "b.png", np.zeros((side, side))).read_bytes())]
    per_image = int(np.prod(model.scorer.preprocessor_.shape))
    assert is_small(model, one) and is_small(model, one * (INLINE_PIXELS // per_image))
    assert not is_small(model, one * (INLINE_PIXELS // per_image + 1))
    assert not is_small(model, large)
    assert not is_small(model, [("c.png", b"not an image")])
    assert not model.networks_loaded and not is_small(model, one, maps=True)


# A sequence's recon is a channel's excess over its normal error, squared: near zero, float32
# rounding of the window errors (which differ in the last bits between runtimes and between
# batch compositions) shows as absolute differences of about 1e-7.
SEQ_ATOL = 1e-6


@pytest.fixture(scope="module", params=["seq_ae", "seq_vae"])
def saved_sequence(request, tmp_path_factory):
    from tests.training.sequence_data import rotating
    from training.detector import SequenceDetector

    normal, _ = rotating(500, seed=0)
    det = SequenceDetector(kind=request.param, time_column="t", window=12, max_epochs=3,
                           seed=0).fit(normal.iloc[:400])
    det.calibrate(normal.iloc[400:])
    folder = tmp_path_factory.mktemp(f"graph-{request.param}")
    return det.save(folder / "detector"), folder / "graph"


def test_a_sequence_model_is_scored_per_timestamp_through_its_graph(saved_sequence):
    from service.scoring.inputs import ModelInputs
    from tests.training.sequence_data import rotating

    path, graph = saved_sequence
    torch_model, graph_model = _load_after_export(path, graph)
    assert graph_model.runtime == "onnxruntime" and type(graph_model.scorer).__name__ == \
        "SequenceGraphScorer"
    series, _ = rotating(200, seed=3, anomalies=[(100, 130)], t0=5000)
    body = json.dumps({"records": series.to_dict(orient="records")}).encode()
    records = ModelInputs("g", graph_model.scorer.preprocessor_.columns_, 1000).parse(body,
                                                                                     True)
    want, got = torch_model.score(records), graph_model.score(records)
    assert list(got) == list(want)
    np.testing.assert_array_equal(got["warm_up"], want["warm_up"])
    assert got["warm_up"].sum() == 11
    keep = ~want["warm_up"]
    for name in want:
        if name.startswith("score"):
            np.testing.assert_allclose(got[name][keep], want[name][keep], rtol=RTOL,
                                       atol=SEQ_ATOL, err_msg=name)
    # A stream, and an explanation, take the networks: the same answers as torch's.
    assert "detector" not in graph_model._held
    explained = graph_model.score(records, explain=True)
    np.testing.assert_array_equal(explained["explanation"][keep],
                                  torch_model.score(records, explain=True)["explanation"][keep])
    pushed = graph_model.detector.stream().push(series, "request")
    np.testing.assert_allclose(pushed["score"].to_numpy()[keep], want["score"][keep],
                               rtol=RTOL, atol=SEQ_ATOL)


@pytest.fixture(scope="module", params=["conv_ae", "conv_vae"])
def saved_images(request, tmp_path_factory):
    from tests.training.image_data import normal_images
    from training.detector import ImageDetector

    images = normal_images(60, seed=0)
    det = ImageDetector(kind=request.param, max_epochs=3, seed=0).fit(images[:48])
    det.calibrate(images[48:])
    folder = tmp_path_factory.mktemp(f"graph-{request.param}")
    return det.save(folder / "detector"), folder / "graph"


def test_an_image_model_is_scored_through_its_graph_and_maps_take_the_networks(saved_images):
    from service.scoring.images import score_images
    from tests.training.image_data import normal_images, paint_defect, write_png

    path, graph = saved_images
    torch_model, graph_model = _load_after_export(path, graph)
    assert type(graph_model.scorer).__name__ == "ImageGraphScorer"
    images = [*normal_images(6, seed=5), paint_defect(normal_images(1, seed=6)[0])]
    folder = path.parent / "png"
    files = [(f"{i}.png", write_png(folder / f"{i}.png", x).read_bytes())
             for i, x in enumerate(images)]
    want = score_images(torch_model, files).answer()
    got = score_images(graph_model, files).answer()
    assert "detector" not in graph_model._held  # scores alone: the graph
    assert got["image_shape"] == want["image_shape"] and got["model"] == want["model"]
    kinds = torch_model.scorer.score_kinds
    if torch_model.kind == "conv_vae":
        assert "elbo_vs_png" in kinds  # computed beside the graph
    for g, w in zip(got["results"], want["results"], strict=True):
        assert g["file"] == w["file"]
        for k in kinds:
            # ``*_vs_local`` subtracts a complexity term: float32 rounding shows in absolute
            # terms, about 1e-6 of the scores' scale
            np.testing.assert_allclose(g["scores"][k], w["scores"][k], rtol=1e-4, atol=1e-5,
                                       err_msg=k)
    mapped = score_images(graph_model, files[:2], maps=True).answer()
    assert graph_model.networks_loaded and all(r["anomaly_map_png"] for r in mapped["results"])


def test_a_large_sequence_request_scores_with_the_networks_loaded_on_first_need(
        saved_sequence):
    """Over BULK_RECORDS records a sequence model's networks are faster than its graph: such
    a request loads them; a small one keeps the graph. The same scores either way."""
    from service.model import BULK_RECORDS
    from tests.training.sequence_data import rotating

    path, graph = saved_sequence
    _, graph_model = _load_after_export(path, graph)
    series, _ = rotating(BULK_RECORDS + 40, seed=8, t0=3000)
    small = graph_model.score(series.head(BULK_RECORDS))
    assert not graph_model.networks_loaded
    large = graph_model.score(series)
    assert graph_model.networks_loaded and graph_model.runtime == "onnxruntime"
    keep = ~small["warm_up"]
    np.testing.assert_allclose(large["score"][:BULK_RECORDS][keep], small["score"][keep],
                               rtol=RTOL, atol=SEQ_ATOL)
