import numpy as np
import pandas as pd
import pytest

from training.errors import DataError
from training.preprocessing.tabular import Records, TabularPreprocessor


def test_schema_kinds_and_exclusions(mixed_table):
    pre = TabularPreprocessor(id_column="id").fit(mixed_table)
    kinds = {c.name: c.kind for c in pre.columns_}
    assert "id" not in kinds
    assert kinds == {"a": "numeric", "b": "numeric", "c": "numeric", "color": "categorical",
                     "flag": "categorical", "const": "numeric"}
    const = next(c for c in pre.columns_ if c.name == "const")
    assert const.dropped and const.width == 0
    # a, b, c + 3 colors + 2 flags
    assert pre.n_features_ == 8
    assert "color=red" in pre.feature_names_


def test_missing_values_are_imputed_with_training_median(mixed_table):
    pre = TabularPreprocessor(id_column="id").fit(mixed_table)
    X, extras = pre.transform(mixed_table)
    unknown = extras["unknown_categories"]
    assert np.isfinite(X).all() and X.dtype == np.float32
    c = next(s for s in pre.columns_ if s.name == "c")
    col = pre.feature_names_.index("c")
    row = int(np.flatnonzero(mixed_table["c"].isna())[0])
    assert X[row, col] == pytest.approx((c.median - c.mean) / c.std, abs=1e-5)
    assert unknown.sum() == 0


def test_unseen_categories_are_counted_and_encode_as_zeros(mixed_table):
    pre = TabularPreprocessor(id_column="id").fit(mixed_table)
    new = mixed_table.head(3).copy()
    new["color"] = ["purple", "red", None]
    X, extras = pre.transform(new)
    unknown = extras["unknown_categories"]
    assert unknown.tolist() == [1, 0, 0]
    cols = [pre.feature_names_.index(f"color={c}") for c in ("blue", "green", "red")]
    assert X[0, cols].sum() == 0 and X[1, cols].sum() == 1 and X[2, cols].sum() == 0


def test_numbers_sent_as_strings_are_accepted(mixed_table):
    pre = TabularPreprocessor(id_column="id").fit(mixed_table)
    as_text = mixed_table.head(5).astype({"a": str})
    X1, _ = pre.transform(as_text)
    X2, _ = pre.transform(mixed_table.head(5))
    np.testing.assert_allclose(X1, X2, rtol=1e-6)


def test_errors_name_record_and_column(mixed_table):
    pre = TabularPreprocessor(id_column="id").fit(mixed_table)
    bad = mixed_table.head(4).copy()
    bad["a"] = bad["a"].astype(object)
    bad.loc[2, "a"] = "abc"
    with pytest.raises(DataError, match=r"in.csv: record 2, column 'a': expected a number"):
        pre.transform(bad, "in.csv")
    with pytest.raises(DataError, match=r"missing column\(s\) \['b'\]"):
        pre.transform(mixed_table.drop(columns=["b"]))
    inf = mixed_table.head(3).copy()
    inf.loc[1, "c"] = np.inf
    with pytest.raises(DataError, match=r"record 1, column 'c': non-finite"):
        pre.transform(inf)


def test_fit_rejects_bad_training_columns():
    df = pd.DataFrame({"a": np.arange(50.0), "empty": [np.nan] * 50})
    with pytest.raises(DataError, match="column 'empty' is entirely missing"):
        TabularPreprocessor().fit(df, "train.csv")
    typo = pd.DataFrame({"a": [str(i) for i in range(49)] + ["12,5"]})
    with pytest.raises(DataError, match=r"record 49, column 'a': expected a number, got '12,5'"):
        TabularPreprocessor().fit(typo, "train.csv")


def test_round_trip_through_dict_and_inverse(mixed_table):
    pre = TabularPreprocessor(id_column="id").fit(mixed_table)
    again = TabularPreprocessor.from_dict(pre.to_dict())
    X1, _ = pre.transform(mixed_table)
    X2, _ = again.transform(mixed_table)
    np.testing.assert_array_equal(X1, X2)
    back = again.inverse_transform(X1)
    np.testing.assert_allclose(back["a"], mixed_table["a"], rtol=1e-5, atol=1e-5)
    assert (back["color"] == mixed_table["color"]).all()


def test_records_encode_bit_for_bit_like_frames_for_every_column_kind():
    """The encoding of parsed JSON records (Records) equals the DataFrame path exactly:
    numeric (float, int, with missing values), categorical (text, bool, with missing and
    unseen values), and constant columns of both kinds (in the schema, not features)."""
    rng = np.random.default_rng(3)
    n = 200
    train = pd.DataFrame({
        "f": rng.normal(size=n) * 1e3 + 0.1,
        "i": rng.integers(-5, 50, size=n),
        "miss": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),
        "text": rng.choice(["a", "b", "c"], size=n),
        "flag": rng.random(n) < 0.5,
        "const_num": 7.0,
        "const_cat": "same",
    })
    pre = TabularPreprocessor().fit(train)
    assert {s.name for s in pre.columns_ if s.dropped} == {"const_num", "const_cat"}
    records = []
    for k in range(40):
        r = {"f": float(rng.normal() * 1e3), "i": int(rng.integers(-100, 100)),
             "miss": None if k % 3 == 0 else float(rng.normal()),
             "text": [None, "a", "zzz", "c"][k % 4], "flag": [True, False, None][k % 3],
             "const_num": None if k % 5 == 0 else 7.0,
             "const_cat": ["same", "other", None][k % 3]}
        records.append(r)
    frame = pd.DataFrame.from_records(records, columns=pre.input_columns_)
    X_frame, e_frame = pre.transform(frame)
    by_rows = Records(n=len(records), records=records)
    by_cols = Records(n=len(records), columns={c: [r[c] for r in records]
                                                for c in pre.input_columns_})
    for parsed in (by_rows, by_cols):
        X, extras = pre.transform(parsed)
        assert X.dtype == np.float32 and X.tobytes() == X_frame.tobytes()
        assert np.array_equal(extras["unknown_categories"], e_frame["unknown_categories"])
    # unseen 'zzz' and 'other' are counted; missing values are not
    assert e_frame["unknown_categories"].tolist()[:4] == [0, 1, 1, 0]
