"""The sequence detector: time order checked, windows, per-timestamp scores, chunks and streams,
explanations per channel, save/load, and a quality floor on patterns a row-wise model misses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.training.sequence_data import rotating
from training import Detector
from training.detector import SequenceDetector, load_detector
from training.detector.series import MAX_KEY_CHARS
from training.errors import ConfigError, DataError
from training.preprocessing.sequences import SequencePreprocessor, choose_window

FAST = {"max_epochs": 25, "patience": 5}


@pytest.fixture(scope="module")
def series():
    normal, _ = rotating(900, seed=0)
    test, labels = rotating(600, seed=1, anomalies=[(150, 200), (400, 440)], t0=2000)
    return normal, test, labels


@pytest.fixture(scope="module")
def fitted(series):
    normal, _, _ = series
    det = SequenceDetector(kind="seq_ae", time_column="t", window=16, **FAST)
    return det.fit(normal.iloc[:600]).calibrate(normal.iloc[600:])


def test_windows_are_time_major_and_end_at_their_row():
    df = pd.DataFrame({"t": [0, 1, 2, 3], "x": [0.0, 1.0, 2.0, 3.0], "y": [10.0, 11, 12, 13]})
    pre = SequencePreprocessor("t", window=3).fit(df)
    X, extras = pre.transform(df)
    assert X.shape == (2, 6)
    assert extras["row"].tolist() == [2, 3]
    raw = pre.inverse_transform(X)  # (2, 3, 2) in the channels' units
    np.testing.assert_allclose(raw[1], [[1, 11], [2, 12], [3, 13]], atol=1e-5)
    assert pre.feature_names_[:2] == ["x@-2", "y@-2"] and pre.input_columns_ == ["t", "x", "y"]


@pytest.mark.parametrize(("times", "record", "word"), [
    ([0, 1, 2, 2, 4], 3, "duplicates"),
    ([0, 1, 3, 2, 4], 3, "earlier"),
])
def test_duplicate_or_shuffled_timestamp_names_the_row(times, record, word):
    df = pd.DataFrame({"t": times, "x": np.arange(5.0)})
    with pytest.raises(DataError) as e:
        SequencePreprocessor("t", window=2).fit(df, "pump.csv")
    assert e.value.record == record and e.value.column == "t" and e.value.source == "pump.csv"
    assert word in str(e.value) and f"record {record}" in str(e.value)


def test_dates_parse_and_series_are_checked_apart():
    df = pd.DataFrame({"time": ["2024-01-01 00:00:00", "2024-01-01 00:00:00",
                                "2024-01-01 00:00:01", "2024-01-01 00:00:02",
                                "2024-01-01 00:00:04"],
                       "unit": ["a", "b", "a", "a", "a"], "x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    pre = SequencePreprocessor("time", "unit", window=2).fit(df)  # same time, other series: fine
    assert pre.gaps_ == {"n_gaps": 1, "longest": 2.0}  # a 2 s step where 1 s is the rule
    bad = df.assign(unit="a")
    with pytest.raises(DataError, match="duplicates") as e:
        pre.transform(bad)
    assert e.value.record == 1


def test_non_numeric_channel_and_missing_value_are_named():
    df = pd.DataFrame({"t": [0, 1, 2], "x": [1.0, 2.0, 3.0], "mode": ["a", "b", "a"]})
    with pytest.raises(DataError) as e:
        SequencePreprocessor("t", window=2).fit(df)
    assert e.value.column == "mode"
    pre = SequencePreprocessor("t", window=2).fit(df.drop(columns="mode"))
    with pytest.raises(DataError) as e:
        pre.transform(pd.DataFrame({"t": [0, 1, 2], "x": [1.0, np.nan, 3.0]}))
    assert (e.value.record, e.value.column) == (1, "x")


def test_window_default_follows_the_autocorrelation():
    t = np.arange(2000)
    slow = np.sin(2 * np.pi * t / 200)[:, None]
    fast = np.random.default_rng(0).normal(size=(2000, 1))
    assert choose_window(fast, 2000) == 8  # white noise: no memory, the smallest window
    # sin(2 pi k / 200) decorrelates below 1/e at k ~ 38: two correlation lengths
    assert 70 <= choose_window(slow, 2000) <= 80


def test_params_are_checked():
    with pytest.raises(ConfigError, match="window"):
        SequenceDetector(kind="seq_ae", window=1)
    with pytest.raises(ConfigError, match="architecture"):
        SequenceDetector(kind="seq_ae", architecture="transformer")
    with pytest.raises(ConfigError, match="for sequences"):
        SequenceDetector(kind="vae")
    with pytest.raises(ConfigError, match="'t' is the time column too"):
        SequenceDetector(kind="seq_ae", time_column="t", series_column="t")


def test_per_timestamp_scores_warm_up_and_explanations(fitted, series):
    _, test, _ = series
    out = fitted.score_series(test, explain=True)
    assert len(out) == len(test)
    assert out["warm_up"].tolist() == [True] * 15 + [False] * (len(test) - 15)
    assert out["score"].iloc[:15].isna().all() and not out["is_anomaly"].iloc[:15].any()
    assert out["score"].iloc[15:].notna().all()
    assert [c for c in out.columns if c.startswith("explain_")] == \
        ["explain_a", "explain_b", "explain_c"]
    # the same numbers as the template's window scores
    np.testing.assert_array_equal(out["score"].to_numpy()[15:],
                                  fitted.raw_scores(test)["recon"])


def test_explanation_points_at_the_deviating_channel(fitted, series):
    _, test, _ = series
    bent = test.copy()
    bent.loc[300:330, "c"] += 1.5  # only channel c leaves its curve
    ex = fitted.score_series(bent, explain=True).iloc[316:330]
    per_channel = ex[["explain_a", "explain_b", "explain_c"]].mean()
    assert per_channel.idxmax() == "explain_c"


@pytest.mark.parametrize("sizes", [[1] * 40, [7, 3, 100, 5, 200], [599, 1]])
def test_chunks_across_window_boundaries_score_as_one_pass(fitted, series, sizes):
    _, test, _ = series
    whole = fitted.score_series(test, explain=True)
    bounds = np.cumsum([0, *sizes])
    bounds = bounds[bounds < len(test)].tolist() + [len(test)]
    chunks = [test.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    parts = pd.concat(list(fitted.score_chunks(chunks, explain=True)))
    # float32 network passes over batches of other sizes differ in the last bits: up to ~3e-6
    # on scores and explanations of order 1
    pd.testing.assert_frame_equal(parts.reset_index(drop=True), whole.reset_index(drop=True),
                                  check_exact=False, rtol=1e-5, atol=1e-5)


def test_chunks_of_interleaved_series_score_as_one_pass(series):
    normal, test, _ = series
    two = pd.concat([normal.assign(unit="p1"), normal.assign(unit="p2")]).sort_values(
        ["t", "unit"], kind="stable").reset_index(drop=True)
    det = SequenceDetector(kind="seq_ae", time_column="t", series_column="unit", window=8,
                           **FAST).fit(two.iloc[:1200]).calibrate(two.iloc[1200:])
    new = pd.concat([test.assign(unit="p1"), test.iloc[:300].assign(unit="p2")]).sort_values(
        ["t", "unit"], kind="stable").reset_index(drop=True)
    whole = det.score_series(new)
    assert int(whole["warm_up"].sum()) == 2 * 7
    parts = pd.concat(list(det.score_chunks([new.iloc[i : i + 37]
                                             for i in range(0, len(new), 37)])))
    np.testing.assert_allclose(parts["score"].to_numpy(), whole["score"].to_numpy(),
                               rtol=1e-5)
    late = new.iloc[40:80].copy()
    late.loc[late.index[5], "t"] = 0  # goes back in time after the first chunk
    with pytest.raises(DataError, match="earlier") as e:
        list(det.score_chunks([new.iloc[:40], late]))
    assert e.value.record == 45 and e.value.column == "t"


def test_stream_state_is_bounded_and_expires(fitted, series):
    _, test, _ = series
    now = [0.0]
    stream = fitted.stream(max_keys=3, idle_seconds=60, clock=lambda: now[0])
    for i in range(5):  # point by point
        assert stream.push(test.iloc[i : i + 1])["warm_up"].all()
    assert len(stream) == 1  # no series column: one series
    assert stream.buffered() == 5
    with pytest.raises(DataError, match="duplicates") as e:
        stream.push(test.iloc[4:6])  # a point seen already
    assert e.value.record == 0
    pushed = stream.push(test.iloc[5:100])
    assert stream.buffered() == fitted.window_ - 1  # never more than one window's context
    assert pushed["warm_up"].sum() == fitted.window_ - 1 - 5
    now[0] = 61.0
    assert stream.expire() == 1 and len(stream) == 0
    again = stream.push(test.iloc[100:101])
    assert again["warm_up"].all()  # an expired series starts over


def test_stream_keeps_at_most_max_keys_series(series):
    normal, test, _ = series
    many = pd.concat([normal.assign(unit=k) for k in range(2)]).sort_values(
        ["t", "unit"], kind="stable").reset_index(drop=True)
    det = SequenceDetector(kind="seq_ae", time_column="t", series_column="unit", window=4,
                           max_epochs=2).fit(many.iloc[:1000]).calibrate(many.iloc[1000:])
    stream = det.stream(max_keys=5)
    for k in range(50):
        stream.push(test.iloc[:10].assign(unit=f"m{k}"))
    assert len(stream) == 5 and stream.keys() == [f"m{k}" for k in range(45, 50)]
    assert all(stream.buffered(f"m{k}") == 3 for k in range(45, 50))
    # bounded in bytes too: a key is at most MAX_KEY_CHARS long
    long = test.iloc[:2].assign(unit=["m0", "k" * (MAX_KEY_CHARS + 1)])
    with pytest.raises(DataError, match=f"{MAX_KEY_CHARS + 1} characters") as e:
        stream.push(long)
    assert e.value.record == 1 and e.value.column == "unit"
    assert stream.keys() == [f"m{k}" for k in range(45, 50)]  # nothing kept of the push


def test_save_load_gives_the_same_scores(fitted, series, tmp_path):
    _, test, _ = series
    fitted.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert isinstance(back, SequenceDetector) and back.window_ == 16
    pd.testing.assert_frame_equal(back.score_series(test), fitted.score_series(test))


@pytest.mark.parametrize("kind", ["seq_ae", "seq_vae"])
def test_quality_floor_on_patterns_a_row_wise_model_cannot_see(series, kind):
    """Backward turns: every row is normal, the order is not. Measured (window 16, code 12,
    25 epochs): AUROC seq_ae 0.98, seq_vae 0.98; the row-wise ``ae`` 0.49. The thresholds
    flag 3-7% of the wholly normal windows (calibrated at 1% on 285 overlapping windows of one
    series: the rate holds only roughly)."""
    normal, test, labels = series
    det = SequenceDetector(kind=kind, time_column="t", window=16, **FAST)
    det.fit(normal.iloc[:600]).calibrate(normal.iloc[600:])
    out = det.score_series(test)
    scored = ~out["warm_up"].to_numpy()
    seq_auroc = roc_auc_score(labels[scored], out["score"].to_numpy()[scored])
    rows = Detector(kind="ae", max_epochs=40).fit(normal[["a", "b", "c"]].iloc[:600])
    rows.calibrate(normal[["a", "b", "c"]].iloc[600:])
    row_auroc = roc_auc_score(labels, rows.score(test[["a", "b", "c"]])["score"])
    assert abs(row_auroc - 0.5) < 0.15, row_auroc
    assert seq_auroc > 0.9, seq_auroc
    flagged = out["is_anomaly"].to_numpy()[scored]
    assert flagged[labels[scored] == 1].mean() > 0.5  # its own threshold finds them
    # Windows wholly normal (not those still holding the end of an anomaly) are rarely flagged.
    touched = pd.Series(labels).rolling(det.window_, min_periods=1).max().to_numpy()[scored]
    assert flagged[touched == 0].mean() < 0.15


def _with_slow_channel(frame: pd.DataFrame, seed: int, offset: float = 0.0) -> pd.DataFrame:
    """The rotation plus ``slow``: a smooth random walk (a temperature, say) that wanders on
    a time scale far longer than a window, shifted by ``offset``."""
    rng = np.random.default_rng(seed)
    walk = np.convolve(rng.normal(size=len(frame) + 99), np.ones(100) / 10, mode="valid")
    return frame.assign(slow=np.cumsum(walk) * 0.01 + offset)


def test_slow_channel_is_centred_so_its_drift_raises_no_alarm(series):
    normal, test, labels = series
    normal = _with_slow_channel(normal, 0)
    # Later, the slow channel sits far above anything it did in the training rows.
    fit = normal.iloc[:600]
    drifted = _with_slow_channel(test, 1, offset=float(fit["slow"].max() + 10 * fit["slow"].std()))
    flagged, detectors = {}, {}
    for rule in ("centre", "keep"):
        det = SequenceDetector(kind="seq_ae", time_column="t", window=16, slow_channels=rule,
                               **FAST).fit(fit).calibrate(normal.iloc[600:])
        out = det.score_series(drifted)
        scored = ~out["warm_up"].to_numpy()
        touched = pd.Series(labels).rolling(16, min_periods=1).max().to_numpy()[scored]
        flagged[rule] = out["is_anomaly"].to_numpy()[scored][touched == 0].mean()
        detectors[rule] = det
    assert [detectors["centre"].preprocessor_.channels_[j]
            for j in detectors["centre"].preprocessor_.centred_] == ["slow"]
    assert detectors["keep"].preprocessor_.centred_ == []
    assert flagged["keep"] > 0.5, flagged  # the level alone flags most normal windows (0.79)
    assert flagged["centre"] < 0.15, flagged  # as without the slow channel (0.02)
    # The shape of the backward turns still counts.
    out = detectors["centre"].score_series(drifted)
    scored = ~out["warm_up"].to_numpy()
    assert roc_auc_score(labels[scored], out["score"].to_numpy()[scored]) > 0.9


def test_centred_channels_are_saved_and_older_models_keep_every_level():
    t = np.arange(400)
    df = pd.DataFrame({"t": t, "fast": np.random.default_rng(0).normal(size=400),
                       "slow": np.sin(2 * np.pi * t / 400)})
    pre = SequencePreprocessor("t", window=8).fit(df)
    assert pre.centred_ == [1]
    X, _ = pre.transform(df)
    np.testing.assert_allclose(X.reshape(-1, 8, 2)[:, :, 1].mean(axis=1), 0, atol=1e-6)
    back = SequencePreprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(back.transform(df)[0], X)
    old = {k: v for k, v in pre.to_dict().items() if k not in ("slow", "centred")}
    legacy = SequencePreprocessor.from_dict(old)
    assert legacy.slow == "keep" and legacy.centred_ == []
    assert not np.allclose(legacy.transform(df)[0], X)
    with pytest.raises(ConfigError, match="slow_channels"):
        SequenceDetector(kind="seq_ae", slow_channels="drop")


def test_slowness_is_pooled_over_series_each_about_its_own_mean():
    """Two machines, rows interleaved in time: a slow channel is found although neighbouring
    rows belong to different series, and a fast channel whose level differs between the
    machines is not slow."""
    rng = np.random.default_rng(0)

    def machine(unit, level, seed):
        frame = pd.DataFrame({"t": np.arange(600), "unit": unit,
                              "x": rng.normal(size=600) + level})
        return _with_slow_channel(frame, seed)

    both = pd.concat([machine("a", 0.0, 1), machine("b", 5.0, 2)])
    for df in (both.sort_values(["t", "unit"], kind="stable"), both):  # interleaved, one after
        pre = SequencePreprocessor("t", "unit", window=8).fit(df.reset_index(drop=True))
        assert [pre.channels_[j] for j in pre.centred_] == ["slow"]


def test_a_model_saved_before_the_rule_loads_as_keep(fitted, series, tmp_path):
    import json

    _, test, _ = series
    fitted.save(tmp_path / "m")
    for name, keys in (("detector.json", ("slow_channels",)),
                       ("preprocessing.json", ("slow", "centred"))):
        path = tmp_path / "m" / name
        meta = json.loads(path.read_text())
        target = meta["params"] if name == "detector.json" else meta
        for k in keys:
            target.pop(k)
        path.write_text(json.dumps(meta))
    back = load_detector(tmp_path / "m")
    assert back.params.slow_channels == "keep" and back.preprocessor_.centred_ == []
    pd.testing.assert_frame_equal(back.score_series(test), fitted.score_series(test))


def test_a_channel_too_large_to_standardise_is_named():
    frame, _ = rotating(200, seed=1)
    frame.loc[40, "b"] = 1e308
    with pytest.raises(DataError, match="record 40, column 'b': 1e\\+308 is too large"):
        SequencePreprocessor(time_column="t").fit(frame, "pump.csv")
