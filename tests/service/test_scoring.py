"""The pure scoring functions: same numbers as the Detector, response shapes, metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from service.metrics import Metrics, ScoreHistograms, score_buckets
from service.schemas import EncodeResponse, ModelInfo, ReconstructResponse, ScoreResponse
from service.scoring import records as scoring
from service.scoring.render import render_results
from training.errors import DataError


def _batch(served, records):
    return served.inputs.parse(json.dumps({"records": records}).encode())


def test_scores_match_the_detector_exactly(served, table):
    df = table.iloc[150:220].reset_index(drop=True).astype(object)
    df = df.where(pd.notna(df), None)
    recs = df.to_dict(orient="records")
    scored = scoring.score_batch(served, _batch(served, recs))
    expected = served.detector.score(pd.DataFrame(recs))
    body = ScoreResponse.model_validate(scored.answer())
    assert body.n_records == 70 and body.model.version == "3"
    assert body.model.threshold == served.detector.thresholds_[served.detector.primary_score]
    assert np.array_equal([r.score for r in body.results], expected["score"])
    assert np.array_equal([r.p_value for r in body.results], expected["p_value"])
    assert [r.is_anomaly for r in body.results] == expected["is_anomaly"].tolist()
    for kind in served.detector.calibrations_:
        assert np.array_equal([r.scores[kind] for r in body.results], expected[f"score_{kind}"])
    assert scored.flagged == int(expected["is_anomaly"].sum())


def test_records_and_frames_take_the_same_path(served, records):
    parsed = _batch(served, records)
    from_records = served.detector.score_columns(parsed, explain=True)
    from_frame = served.detector.score_columns(pd.DataFrame(records), explain=True)
    assert list(from_records) == list(from_frame)
    for c in from_records:
        assert np.array_equal(from_records[c], from_frame[c]), c


def test_rendered_results_equal_the_columns(served, records):
    cols = served.score(_batch(served, records))
    kinds = [c[len("score_"):] for c in cols if c.startswith("score_")]
    expected = [{"score": cols["score"][i], "p_value": cols["p_value"][i],
                 "is_anomaly": bool(cols["is_anomaly"][i]),
                 "scores": {k: cols[f"score_{k}"][i] for k in kinds},
                 "p_values": {k: cols[f"p_value_{k}"][i] for k in kinds},
                 "unknown_categories": int(cols["unknown_categories"][i])}
                for i in range(len(records))]
    assert json.loads(render_results(cols)) == expected
    one = {k: v[:1] for k, v in cols.items()}
    assert json.loads(render_results(one)) == expected[:1]
    assert json.loads(render_results({k: v[:0] for k, v in cols.items()})) == []


def test_explain_lists_largest_errors_first(served, records):
    body = scoring.score_batch(served, _batch(served, records), explain=True, top_k=3).answer()
    full = served.detector.explain_frame(pd.DataFrame(records))
    for i, r in enumerate(body["results"]):
        cols = [c["column"] for c in r["explanation"]]
        assert cols == list(full.iloc[i].sort_values(ascending=False, kind="stable").index[:3])


def test_overflowing_record_is_named(served, records):
    records[3]["b"] = 1e300
    for answer in (scoring.score_batch, scoring.encode_batch, scoring.reconstruct_batch):
        with pytest.raises(DataError) as e:  # a 422 everywhere, never a 200 with nulls
            answer(served, _batch(served, records))
        assert (e.value.record, e.value.column) == (3, "b"), answer.__name__


def test_encode_and_reconstruct_shapes(served, records):
    enc = EncodeResponse.model_validate(scoring.encode_batch(served, _batch(served, records)))
    assert len(enc.latent) == 6 and len(enc.latent[0]) == enc.latent_dim
    rec = ReconstructResponse.model_validate(
        scoring.reconstruct_batch(served, _batch(served, records)))
    assert rec.columns == ["a", "b", "c", "color", "flag", "const"]
    assert rec.records[0]["color"] in {"red", "green", "blue"} and rec.records[0]["const"] == 7.0


def test_describe_matches_the_schema(served):
    info = ModelInfo.model_validate(served.describe())
    assert [c.name for c in info.input_schema] == ["a", "b", "c", "color", "flag", "const"]
    assert not info.input_schema[-1].used and info.input_schema[3].categories


def test_score_histogram_counts_by_bucket(served):
    hist = ScoreHistograms()
    bounds = score_buckets(served)
    scores = np.r_[bounds[0] - 1, bounds[0], bounds[2], bounds[-1] + 1]
    hist.observe(served, scores)
    hist.observe(served, scores[:1])
    (fam,) = hist.collect()
    counts = {s.labels["le"]: s.value for s in fam.samples if s.name.endswith("_bucket")}
    assert counts[f"{bounds[0]:.6g}"] == 3  # two below the first bound, one on it
    assert counts[f"{bounds[2]:.6g}"] == 4 and counts["+Inf"] == 5
    total = [s.value for s in fam.samples if s.name.endswith("_sum")]
    if bounds[0] >= 0:
        assert total == [pytest.approx(scores.sum() + scores[0])]
    else:  # a score that can be negative (combined): OpenMetrics has no _sum, nor _count
        assert total == [] and not [s for s in fam.samples if s.name.endswith("_count")]


def test_score_histogram_counts_a_request_and_a_large_batch_alike(served):
    """Up to a few records are counted one by one, larger batches with array passes."""
    bounds = score_buckets(served)
    scores = np.r_[bounds, bounds - 1e-9, bounds + 1e-9, bounds[-1] * 10, np.nan]  # NaN: no score
    one_by_one, batched = ScoreHistograms(), ScoreHistograms()
    for s in scores:
        one_by_one.observe(served, np.array([s]))
    batched.observe(served, scores)
    (a,), (b,) = one_by_one.collect(), batched.collect()
    assert [(s.name, s.labels) for s in a.samples] == [(s.name, s.labels) for s in b.samples]
    assert [s.value for s in a.samples] == pytest.approx([s.value for s in b.samples])


def test_metrics_render(served):
    m = Metrics(lambda: [served])
    m.observe_scores(served, np.array([0.1, 5.0]), 1)
    m.observe_request("/v1/models/{name}/score", served.name, 200, 0.002)
    text = m.render().decode()
    assert f'anomaly_records_scored_total{{model="{served.name}",version="3"}} 2.0' in text
    assert 'anomaly_model_loaded{alias="champion"' in text


def test_a_direction_model_reconstructs_a_requests_records_in_their_units(tmp_path):
    from service.model import ModelSource, ServedModel
    from training import Detector

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(np.abs(rng.normal(size=(120, 260))) + 1.0,
                         columns=[f"e{i}" for i in range(260)])
    det = Detector(kind="vae", n_models=1, max_epochs=2).fit(frame.iloc[:90])
    det.calibrate(frame.iloc[90:])
    assert det.preprocessor_.geometry_ == "direction"
    source = ModelSource(uri="models:/wide@champion", name="wide", version="1",
                         alias="champion", run_id="r1")
    served = ServedModel.load(source, det.save(tmp_path / "detector"), max_records=10)
    records = frame.head(3).to_dict(orient="records")
    rec = ReconstructResponse.model_validate(
        scoring.reconstruct_batch(served, _batch(served, records)))
    want = det.reconstruct(frame.head(3))
    np.testing.assert_allclose(pd.DataFrame(rec.records)[want.columns].to_numpy(),
                               want.to_numpy(), rtol=1e-6)
