import numpy as np
import pandas as pd
import pytest

from training.errors import ConfigError, DataError
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


# -- inputs whose shape would otherwise cost unbounded memory or mean nothing ----------------
def _ids(n: int, distinct: int) -> np.ndarray:
    """``n`` strings with ``distinct`` different values (the first ``distinct`` rows unique)."""
    codes = np.concatenate([np.arange(distinct), np.random.default_rng(0).integers(
        0, distinct, size=n - distinct)])
    return np.char.add("user-", codes.astype(str)).astype(object)


def test_an_identifier_column_is_refused_in_bounded_memory():
    import tracemalloc

    df = pd.DataFrame({"x": np.random.default_rng(1).normal(size=60_000),
                       "who": _ids(60_000, 50_001)})
    tracemalloc.start()
    with pytest.raises(DataError) as info:
        TabularPreprocessor().fit(df, "t.csv")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    err = info.value
    assert (err.source, err.column, err.record) == ("t.csv", "who", None)
    assert "50001 distinct values in 60000 rows" in err.reason and "--id-column" in err.reason
    assert "\n" not in str(err)
    assert peak < 64 * 2**20, peak  # a dense float64 one-hot of it: 24 GB
    # the same column as the id column, or dropped, trains
    assert TabularPreprocessor(id_column="who").fit(df).n_features_ == 1


def test_many_categories_keep_the_most_frequent_and_pool_the_rest():
    rng = np.random.default_rng(2)
    n = 60_000
    # hundreds of values with a long tail: a real category, not an identifier
    codes = rng.geometric(0.02, size=n)
    df = pd.DataFrame({"x": rng.normal(size=n), "city": np.char.add("c", codes.astype(str))})
    pre = TabularPreprocessor().fit(df)
    spec = pre.columns_[1]
    assert spec.other and len(spec.categories) == 64 and spec.width == 65
    assert pre.n_features_ == 66 and pre.feature_names_[-1] == "city=(other)"
    counts = df.city.value_counts()
    kept = counts[counts.index.isin(spec.categories)]
    assert kept.min() >= counts.drop(kept.index).max()  # the most frequent are kept
    top = kept.index
    X, extras = pre.transform(df)
    assert X.dtype == np.float32 and X.shape == (n, 66)
    assert np.array_equal(X[:, 1:].sum(axis=1), np.ones(n))  # one level per record
    rare, unseen = counts.index[-1], "never-seen"
    X2, e2 = pre.transform(pd.DataFrame({"x": [0.0, 0.0, 0.0], "city": [top[0], rare, unseen]}))
    assert X2[1, -1] == 1 and X2[2, -1] == 1 and X2[0, -1] == 0
    assert e2["unknown_categories"].tolist() == [0, 0, 0]  # a pooled column has no unknowns
    back = pre.inverse_transform(X2)
    assert back["city"].tolist() == [top[0], "(other)", "(other)"]
    again = TabularPreprocessor.from_dict(pre.to_dict())
    assert np.array_equal(again.transform(df)[0], X)
    old = pre.to_dict()  # a model saved before pooling existed has no 'other' key
    for c in old["columns"]:
        c.pop("other")
    assert TabularPreprocessor.from_dict(old).columns_[1].other is False


@pytest.mark.parametrize("values, shown_as", [
    (["2024-01-05T10:00:00", "2024-01-05T10:00:01"], "'2024-01-05T10:00:00'"),
    (["2024-01-05", "2023-12-31"], "'2024-01-05'"),
    (["2024-01-05 10:00:00+01:00", "2024-01-05 10:00:00Z"], "'2024-01-05 10:00:00+01:00'"),
    (["10:15:00", "23:59:59.5"], "'10:15:00'"),
])
def test_dates_as_text_are_refused_naming_the_column(values, shown_as):
    n = 200
    stamps = [values[i % 2] for i in range(n)]
    stamps[5] = "not a date"  # nearly all, not all
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "when": stamps})
    with pytest.raises(DataError) as info:
        TabularPreprocessor().fit(df, "t.csv")
    assert info.value.column == "when" and shown_as in info.value.reason
    assert "--id-column" in info.value.reason and "hour, weekday" in info.value.reason
    assert TabularPreprocessor(id_column="when").fit(df).input_columns_ == ["x"]


def test_date_typed_columns_are_refused():
    import datetime

    n = 50
    base = pd.DataFrame({"x": np.arange(n, dtype=float)})
    typed = {
        "timestamp": pd.date_range("2024-01-01", periods=n, freq="h"),
        "aware": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
        "duration": pd.to_timedelta(np.arange(n), unit="s"),
        "date": [datetime.date(2024, 1, 1 + i % 28) for i in range(n)],
        "time": [datetime.time(i % 24, 0) for i in range(n)],
    }
    for name, values in typed.items():
        with pytest.raises(DataError, match="dates/times") as info:
            TabularPreprocessor().fit(base.assign(**{name: values}), "t.parquet")
        assert info.value.column == name


@pytest.mark.parametrize("value, shown_as", [
    (np.array([0, 1]), "a list ([0, 1])"), ([0, 1], "a list ([0, 1])"),
    ({"k": 1}, "a dict ({'k': 1})"), (b"\x89PNG", "bytes (b'\\x89PNG')"),
])
def test_nested_values_are_refused_in_training_and_scoring(value, shown_as):
    n = 30
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "c": ["a", "b"] * 15})
    nested = df.assign(c=pd.Series([value] * n, dtype=object))
    with pytest.raises(DataError) as info:
        TabularPreprocessor().fit(nested, "t.parquet")
    assert (info.value.column, info.value.record) == ("c", 0)
    assert shown_as in info.value.reason
    pre = TabularPreprocessor().fit(df)
    for col in ("c", "x"):  # a categorical or a numeric column of the model
        bad = df.astype({col: object})
        bad.at[3, col] = value
        with pytest.raises(DataError) as info:
            pre.transform(bad, "in.parquet")
        assert (info.value.column, info.value.record) == (col, 3), col
        assert shown_as in info.value.reason


def test_duplicate_column_names_are_refused():
    df = pd.DataFrame([[1.0, 2.0, 3.0]] * 20, columns=["a", "b", "a"])
    with pytest.raises(DataError, match="more than once") as info:
        TabularPreprocessor().fit(df, "t.csv")
    assert info.value.column == "a"
    pre = TabularPreprocessor().fit(df.iloc[:, :2].assign(b=np.arange(20.0)))
    with pytest.raises(DataError, match="more than once"):
        pre.transform(df, "in.csv")


def test_a_boolean_among_numbers_is_no_number():
    rng = np.random.default_rng(0)
    pre = TabularPreprocessor().fit(pd.DataFrame({"a": rng.random(40), "b": rng.random(40)}))
    mixed = pd.DataFrame({"a": [1, "2", 3.0, None, True], "b": [0.1] * 5})
    with pytest.raises(DataError, match="record 4, column 'a': expected a number, got True"):
        pre.transform(mixed, "frame")
    X, _ = pre.transform(mixed.iloc[:4], "frame")  # numbers as text still read as numbers
    assert np.isfinite(X).all()


def _vectors(n: int, d: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = np.abs(rng.normal(size=(n, d))) * rng.uniform(0.1, 3.0, size=d)
    return pd.DataFrame(X, columns=[f"e{i}" for i in range(d)])


def test_geometry_auto_compares_wide_numeric_rows_by_direction():
    from training.preprocessing.tabular import DIRECTION_MIN_COLUMNS

    wide = _vectors(300, DIRECTION_MIN_COLUMNS)
    pre = TabularPreprocessor().fit(wide)
    assert pre.geometry_ == "direction"
    X, _ = pre.transform(wide)
    # the rows divided by their lengths, centred per column, one scale for every column
    unit = wide.to_numpy() / np.linalg.norm(wide.to_numpy(), axis=1, keepdims=True)
    centred = unit - unit.mean(axis=0)
    scale = np.sqrt(np.mean(centred.var(axis=0)))
    np.testing.assert_allclose(X, centred / scale, rtol=1e-4, atol=1e-5)
    # a record's length does not count: twice a row is the same row
    np.testing.assert_allclose(pre.transform(wide.head(3) * 2)[0], X[:3], rtol=1e-5, atol=1e-6)
    # back in the input's units given each record's length
    back = pre.inverse_transform(X[:3], pre.row_lengths(wide.head(3)))
    np.testing.assert_allclose(back.to_numpy(), wide.head(3).to_numpy(), rtol=1e-4)
    # values near float64's limit: the same direction, no overflow; a row of zeros stays 0
    big = wide.head(2).copy()
    big.iloc[0] *= 1e300
    big.iloc[1] = 0.0
    X_big, _ = pre.transform(big)
    np.testing.assert_allclose(X_big[0], X[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(X_big[1], -np.array([s.mean for s in pre.columns_]) / scale,
                               rtol=1e-4, atol=1e-5)
    again = TabularPreprocessor.from_dict(pre.to_dict())
    assert again.geometry_ == "direction"
    np.testing.assert_array_equal(again.transform(wide)[0], X)


def test_geometry_auto_keeps_columns_for_narrow_or_mixed_tables_and_old_models():
    from training.preprocessing.tabular import DIRECTION_MIN_COLUMNS

    narrow = _vectors(300, DIRECTION_MIN_COLUMNS - 1)
    pre = TabularPreprocessor().fit(narrow)
    assert pre.geometry_ == "columns" and pre.row_lengths(narrow) is None
    mixed = _vectors(300, DIRECTION_MIN_COLUMNS).assign(kind=["a", "b", "c"] * 100)
    assert TabularPreprocessor().fit(mixed).geometry_ == "columns"
    assert TabularPreprocessor(geometry="direction").fit(narrow).geometry_ == "direction"
    assert TabularPreprocessor(geometry="columns").fit(mixed.drop(columns="kind")
                                                       ).geometry_ == "columns"
    with pytest.raises(ConfigError, match=r"categorical column\(s\) 'kind': use 'columns'"):
        TabularPreprocessor(geometry="direction").fit(mixed)
    saved = TabularPreprocessor().fit(narrow).to_dict()
    del saved["geometry"]  # saved before there was a choice
    assert TabularPreprocessor.from_dict(saved).geometry_ == "columns"
    # a constant category has no feature: the rows are still vectors
    assert TabularPreprocessor().fit(mixed.assign(kind="a")).geometry_ == "direction"
    one = pd.DataFrame({"x": np.arange(1.0, 50.0), "c": 3.0})
    with pytest.raises(ConfigError, match="1 non-constant numeric column cannot have"):
        TabularPreprocessor(geometry="direction").fit(one)
    with pytest.raises(ConfigError, match=r"geometry: expected one of \['auto'"):
        TabularPreprocessor(geometry="cosine")


def test_direction_sets_apart_the_few_columns_in_a_larger_unit_than_the_vector():
    rng = np.random.default_rng(0)
    flags = pd.DataFrame((rng.random((200, 400)) < 0.2).astype(float),
                         columns=[f"f{i}" for i in range(400)])
    plain = TabularPreprocessor().fit(flags)
    assert plain.geometry_ == "direction" and not any(s.apart for s in plain.columns_)
    # an image's height and width in pixels beside 400 0/1 flags: the 1% largest columns (4)
    # hold nearly all of each row's mean square, so a row's direction would be its size's.
    # They are set apart: standardised on their own, out of the row's length
    sized = flags.assign(height=rng.integers(20, 600, 200), width=rng.integers(20, 600, 200))
    pre = TabularPreprocessor().fit(sized)
    assert pre.geometry_ == "direction"
    assert [s.name for s in pre.columns_ if s.apart] == ["height", "width"]
    X, _ = pre.transform(sized)
    np.testing.assert_allclose(X[:, :400], plain.transform(flags)[0], rtol=1e-5, atol=1e-5)
    size = sized[["height", "width"]].to_numpy(dtype=float)
    np.testing.assert_allclose(X[:, 400:], (size - size.mean(0)) / size.std(0), rtol=1e-5)
    np.testing.assert_allclose(pre.row_lengths(sized), np.linalg.norm(flags.to_numpy(), axis=1))
    back = pre.inverse_transform(X[:5], pre.row_lengths(sized.head(5)))
    np.testing.assert_allclose(back.to_numpy(), sized.head(5).to_numpy(dtype=float),
                               rtol=1e-4, atol=1e-5)
    saved = pre.to_dict()
    np.testing.assert_array_equal(TabularPreprocessor.from_dict(saved).transform(sized)[0], X)
    # only a column set apart says so: a model without any is written (and read) as before
    assert [c["name"] for c in saved["columns"] if "apart" in c] == ["height", "width"]
    assert not any("apart" in c for c in plain.to_dict()["columns"])
    # a group of equal large columns (12 sizes beside 300 flags) is set apart whole: the
    # largest 2% of the columns are counted among all of them, not among those left
    group = flags.iloc[:, :300].assign(**{f"size{i}": rng.normal(300, 80, 200)
                                          for i in range(12)})
    assert TabularPreprocessor().fit(group).set_apart_ == [f"size{i}" for i in range(12)]
    # more than 5% of the columns (21 of 430) in units each larger than the rest: not one
    # vector. auto compares columns; direction, asked for, divides rows by their whole length
    many = flags.assign(**{f"size{i}": rng.uniform(1, 2, 200) * 2.0 ** i for i in range(30)})
    assert TabularPreprocessor().fit(many).geometry_ == "columns"
    asked = TabularPreprocessor(geometry="direction").fit(many)
    assert asked.geometry_ == "direction" and not any(s.apart for s in asked.columns_)
    assert TabularPreprocessor(geometry="columns").fit(sized).geometry_ == "columns"


def test_a_boolean_column_where_the_model_reads_numbers_is_refused_as_text_is():
    pre = TabularPreprocessor().fit(pd.DataFrame({"a": [0.0, 1.0, 0.5, 2.0], "b": 1.0}))
    for column in ([None, True], pd.array([None, False], dtype="boolean"),
                   np.array([True, False])):
        frame = pd.DataFrame({"a": column, "b": [1.0, 2.0]})
        with pytest.raises(DataError, match=r"record (0|1), column 'a': expected a number, got"):
            pre.transform(frame, "frame")


def test_direction_row_lengths_of_records_as_of_a_frame():
    wide = _vectors(40, 300)
    pre = TabularPreprocessor().fit(wide)
    rows = wide.head(3)
    records = Records(n=3, records=rows.to_dict(orient="records"))  # a JSON request's rows
    np.testing.assert_allclose(pre.row_lengths(records), pre.row_lengths(rows), rtol=1e-12)
    np.testing.assert_allclose(pre.row_lengths(rows), np.linalg.norm(rows.to_numpy(), axis=1))


def test_geometry_is_a_table_parameter():
    from training.detector.image_params import ImageDetectorParams
    from training.detector.sequence_params import SequenceDetectorParams
    from training.params import DetectorParams

    with pytest.raises(ConfigError, match=r"geometry: expected one of \['auto', 'columns', "
                                          r"'direction'\], got 'cosine'"):
        DetectorParams(geometry="cosine")
    for cls, kind in ((ImageDetectorParams, "conv_vae"), (SequenceDetectorParams, "seq_vae")):
        with pytest.raises(ConfigError, match="geometry: for tables only"):
            cls(kind=kind, geometry="direction")
