"""Request parsing against a model's schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training.errors import DataError, TooLargeError
from training.preprocessing.tabular import Records


def _parse(served, body, strict=False) -> Records:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return served.inputs.parse(raw, strict)


def test_records_and_columns_layouts_agree(served, records):
    by_rows = _parse(served, {"records": records})
    columns = {c: [r[c] for r in records] for c in records[0]}
    by_cols = _parse(served, {"columns": columns})
    assert by_rows.n == by_cols.n == 6 and by_rows.ignored == by_cols.ignored == []
    pre = served.detector.preprocessor_
    (Xa, ea), (Xb, eb) = pre.transform(by_rows), pre.transform(by_cols)
    assert np.array_equal(Xa, Xb)
    assert np.array_equal(ea["unknown_categories"], eb["unknown_categories"])


@pytest.mark.parametrize("change,record,column,words", [
    (lambda r: r[2].pop("b"), 2, "b", "missing column"),
    (lambda r: r[4].update(a="1.5"), 4, "a", "valid number"),
    (lambda r: r[0].update(c=True), 0, "c", "valid number"),
    (lambda r: r[1].update(color=3), 1, "color", "string"),
    (lambda r: r[3].update(flag=[1]), 3, "flag", ""),
])
def test_bad_values_name_record_and_column(served, records, change, record, column, words):
    change(records)
    with pytest.raises(DataError) as e:
        _parse(served, {"records": records})
    assert (e.value.record, e.value.column) == (record, column)
    assert f"record {record}, column '{column}'" in str(e.value) and words in str(e.value)


def test_non_finite_numbers_are_rejected(served):
    with pytest.raises(DataError) as e:
        _parse(served, b'{"columns": {"a": [1.0, NaN]}}')
    assert (e.value.record, e.value.column) == (1, "a") and "finite" in str(e.value)


def test_nulls_are_missing_values_imputed_like_training(served, records):
    records[0]["c"] = None
    records[0]["color"] = None
    X, extras = served.detector.preprocessor_.transform(_parse(served, {"records": records}))
    expected, _ = served.detector.preprocessor_.transform(pd.DataFrame(records))
    assert np.array_equal(X, expected) and extras["unknown_categories"][0] == 0


def test_extra_columns_ignored_or_rejected_when_strict(served, records):
    for r in records:
        r["note"] = "hello"
    assert _parse(served, {"records": records}).ignored == ["note"]
    with pytest.raises(DataError) as e:
        _parse(served, {"records": records}, strict=True)
    assert (e.value.record, e.value.column) == (0, "note") and "strict" in str(e.value)


@pytest.mark.parametrize("body,words", [
    ({"records": []}, "no records"),
    ({}, "either 'records'"),
    ({"records": [], "columns": {}}, "no records"),
    (b"[]", "must be a JSON object"),
    (b"{nope", "Invalid JSON"),
    ({"rows": []}, "unknown field"),
])
def test_layout_errors_say_what_is_accepted(served, body, words):
    with pytest.raises(DataError, match=words):
        _parse(served, body)


def test_unequal_columns_and_both_layouts(served, records):
    cols = {c: [r[c] for r in records] for c in records[0]}
    cols["b"] = cols["b"][:-1]
    with pytest.raises(DataError) as e:
        _parse(served, {"columns": cols})
    assert e.value.column == "b" and "one value per record" in str(e.value)
    full = {c: [r[c] for r in records] for c in records[0]}
    with pytest.raises(DataError, match="either"):
        _parse(served, {"records": records, "columns": full})


def test_too_many_extra_columns_are_refused_without_listing_them(served, records):
    import time

    wide = {**records[0], **{f"c{i}": 0 for i in range(100_000)}}
    for body in ({"records": [wide]}, {"columns": {k: [v] for k, v in wide.items()}}):
        raw = json.dumps(body).encode()
        start = time.perf_counter()
        with pytest.raises(TooLargeError) as e:
            _parse(served, raw)
        assert str(e.value) == ("100000 columns the model does not read; at most 1000: send "
                                "only the model's columns")
        assert time.perf_counter() - start < 5
    few = {**records[0], **{f"c{i}": 0 for i in range(1_000)}}
    assert len(_parse(served, {"records": [few]}).ignored) == 1_000


def test_too_many_records(served, records):
    with pytest.raises(TooLargeError, match="more than 100 records"):
        _parse(served, {"records": records * 20})


def test_parsed_records_encode_like_the_frame_path(served, table):
    rng = np.random.default_rng(7)
    df = table.sample(60, random_state=3).reset_index(drop=True).astype(object)
    df.loc[rng.random(60) < 0.2, "a"] = None
    df.loc[rng.random(60) < 0.2, "color"] = "purple"  # unseen category
    df.loc[rng.random(60) < 0.1, "flag"] = None
    df = df.where(pd.notna(df), None)
    recs = df.to_dict(orient="records")
    pre = served.detector.preprocessor_
    X, extras = pre.transform(_parse(served, {"records": recs}))
    X_ref, extras_ref = pre.transform(pd.DataFrame(recs))
    assert X.dtype == X_ref.dtype == np.float32
    assert np.array_equal(X, X_ref)
    assert np.array_equal(extras["unknown_categories"], extras_ref["unknown_categories"])
    assert extras["unknown_categories"].sum() > 0
