"""``anomaly score`` in process against a registered model in a real SQLite MLflow store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from pipelines.batch.io import TableReader, _record_numbers
from pipelines.batch.plan import output_for
from pipelines.batch.results import EXPERIMENT, ScoreSample
from pipelines.cli.main import main
from tests.batch_support import NAME, pandas_written_frame, trained_store
from training.errors import ConfigError, DataError

SCORE_COLUMNS = ["score", "p_value", "is_anomaly", "score_recon", "p_value_recon",
                 "unknown_categories"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = trained_store(tmp_path_factory)
    mlflow.set_tracking_uri(s.uri)
    mlflow.set_registry_uri(s.uri)
    return s


@pytest.fixture(scope="module")
def expected(store) -> pd.DataFrame:
    """What MLflow's own pyfunc loader gives on the same rows."""
    return mlflow.pyfunc.load_model(store.model_uri).predict(store.frame)


def _score(store, *args: str) -> int:
    return main(["score", "--model", store.model_uri, "--tracking-uri", store.uri, *args])


@pytest.mark.parametrize("suffix_in,suffix_out", [(".csv", ".parquet"), (".parquet", ".csv")])
def test_scores_equal_the_pyfunc(store, expected, tmp_path, suffix_in, suffix_out):
    src = tmp_path / f"in{suffix_in}"
    if suffix_in == ".csv":
        src.write_bytes(store.csv.read_bytes())
    else:
        store.frame.to_parquet(src)
    out = tmp_path / f"out{suffix_out}"
    # One chunk holds the whole file here, as one pyfunc call does: the numbers are identical.
    # Across chunk boundaries float32 matrix products may round differently (~1e-7 relative).
    chunk = "100000" if suffix_in == ".csv" else "100"
    assert _score(store, "--input", str(src), "--output", str(out), "--chunk-rows", chunk) == 0
    got = pd.read_csv(out) if suffix_out == ".csv" else pd.read_parquet(out)
    assert list(got.columns) == [*store.frame.columns, *SCORE_COLUMNS, "model_name",
                                 "model_version"]
    for c in SCORE_COLUMNS:
        if chunk == "100000" or c in ("is_anomaly", "unknown_categories"):
            np.testing.assert_array_equal(got[c].to_numpy(), expected[c].to_numpy(), err_msg=c)
        else:
            np.testing.assert_allclose(got[c].to_numpy(), expected[c].to_numpy(), rtol=1e-6,
                                       err_msg=c)
    np.testing.assert_array_equal(got["id"].to_numpy(), store.frame["id"].to_numpy())
    assert set(got["model_name"]) == {NAME} and set(got["model_version"].astype(str)) == {"1"}
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_job_is_logged_to_mlflow(store, expected, tmp_path):
    out = tmp_path / "o.parquet"
    assert _score(store, "--input", str(store.csv), "--output", str(out), "--keep", "id") == 0
    assert list(pd.read_parquet(out).columns)[:2] == ["id", "score"]
    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    run = MlflowClient().search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                     max_results=1)[0]
    m, p = run.data.metrics, run.data.params
    assert p["model_name"] == NAME and p["model_version"] == "1"
    assert m["rows"] == len(store.frame)
    assert m["anomalies"] == int(expected["is_anomaly"].sum())
    assert m["anomaly_rate"] == pytest.approx(expected["is_anomaly"].mean())
    assert m["score_p50"] == pytest.approx(float(expected["score"].median()))
    assert m["rows_per_second"] > 0 and m["seconds"] > 0


def test_glob_writes_one_output_per_input_and_resume_skips(store, tmp_path, capsys):
    for i in range(2):
        store.frame.iloc[i * 100:(i + 1) * 100].to_parquet(tmp_path / f"drop{i}.parquet")
    outdir = tmp_path / "scored"
    args = ("--input", str(tmp_path / "drop*.parquet"), "--output", f"{outdir}/")
    assert _score(store, *args) == 0
    first = {p.name: p.read_bytes() for p in outdir.iterdir()}
    assert sorted(first) == ["drop0.parquet", "drop1.parquet"]
    (outdir / "drop1.parquet").unlink()
    capsys.readouterr()
    assert _score(store, *args, "--resume") == 0
    printed = capsys.readouterr().out
    assert "drop0.parquet: skipped" in printed and "drop1.parquet ->" in printed
    # A rerun gives the same file, byte for byte.
    assert (outdir / "drop1.parquet").read_bytes() == first["drop1.parquet"]


def _bad_csv(store, tmp_path: Path) -> Path:
    lines = store.csv.read_text().splitlines()
    lines[4] = lines[4] + ",extra"  # record 3: a field too many
    fields = lines[8].split(",")
    fields[2] = "n/a?"  # record 7: text in a numeric feature
    lines[8] = ",".join(fields)
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_row_fails_naming_file_and_record(store, tmp_path, capsys):
    src, out = _bad_csv(store, tmp_path), tmp_path / "o.parquet"
    assert _score(store, "--input", str(src), "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert "bad.csv: record 3" in err and "--on-error skip" in err
    assert not out.exists() and not list(tmp_path.glob(".o.parquet*"))


def test_malformed_rows_skipped_counted_and_written_to_rejects(store, expected, tmp_path):
    src, out = _bad_csv(store, tmp_path), tmp_path / "o.parquet"
    assert _score(store, "--input", str(src), "--output", str(out), "--on-error", "skip",
                  "--chunk-rows", "5") == 0
    got = pd.read_parquet(out)
    assert len(got) == len(store.frame) - 2
    keep = ~store.frame.index.isin([3, 7])
    np.testing.assert_allclose(got["score"].to_numpy(), expected["score"][keep].to_numpy(),
                               rtol=1e-6)
    rejects = pd.read_csv(tmp_path / "o.rejects.csv")
    assert rejects["record"].tolist() == [3, 7]
    assert "mean_texture" in rejects["reason"][1]


def test_rows_the_model_cannot_score_are_skipped_with_their_file_record(store, expected,
                                                                      tmp_path, capsys):
    """A malformed row (record 3) and a value that overflows the model (record 9, same chunk
    of 5): the first error names the file's record 9 after the reader's reject, and with
    --on-error skip both are rejects and the rest is scored."""
    lines = store.csv.read_text().splitlines()
    lines[4] = lines[4] + ",extra"  # record 3
    fields = lines[10].split(",")
    fields[2] = "1e308"  # record 9: mean_texture
    lines[10] = ",".join(fields)
    src = tmp_path / "bad.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.parquet"
    assert _score(store, "--input", str(src), "--output", str(out), "--chunk-rows", "5",
                  "--on-error", "skip") == 0
    got = pd.read_parquet(out)
    keep = ~store.frame.index.isin([3, 9])
    assert len(got) == keep.sum()
    np.testing.assert_allclose(got["score"].to_numpy(), expected["score"][keep].to_numpy(),
                               rtol=1e-6)
    rejects = pd.read_csv(tmp_path / "o.rejects.csv")
    assert rejects["record"].tolist() == [3, 9]
    assert "too far outside the training data" in rejects["reason"][1]
    lines[4] = lines[4].removesuffix(",extra")
    src.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert _score(store, "--input", str(src), "--output", str(tmp_path / "f.parquet"),
                  "--chunk-rows", "5") == 2
    assert "record 9, column 'mean_texture'" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing_file", "schema", "unwritable", "unknown_alias",
                                  "bad_keep", "unknown_suffix"])
def test_bad_input_exits_2_and_writes_nothing(store, tmp_path, capsys, case):
    src = tmp_path / "in.parquet"
    store.frame.drop(columns=["mean_radius", "worst_area"]).to_parquet(src) if case == "schema" \
        else store.frame.to_parquet(src)
    out = tmp_path / "out" / "o.parquet"
    args = ["--input", str(src), "--output", str(out)]
    model = store.model_uri
    if case == "missing_file":
        args[1] = str(tmp_path / "nope.parquet")
    elif case == "unwritable":
        (tmp_path / "out").write_text("a file, not a folder")
    elif case == "unknown_alias":
        model = f"models:/{NAME}@nope"
    elif case == "bad_keep":
        args += ["--keep", "id,nope"]
    elif case == "unknown_suffix":
        args[3] = str(tmp_path / "o.xlsx")
    code = main(["score", "--model", model, "--tracking-uri", store.uri, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    expected_words = {"missing_file": "file not found", "schema": "'mean_radius', 'worst_area'",
                      "unwritable": "choose a writable --output", "unknown_alias": "no alias",
                      "bad_keep": "'nope'", "unknown_suffix": ".xlsx"}[case]
    assert expected_words in err
    if case != "unwritable":
        assert not out.exists()



def test_an_output_through_a_link_is_written_and_a_pipe_is_left_alone(store, tmp_path, capsys):
    import os
    import stat

    src = tmp_path / "in.parquet"
    store.frame.to_parquet(src)
    real = tmp_path / "real.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    assert _score(store, "--input", str(src), "--output", str(link)) == 0
    assert link.is_symlink() and len(pd.read_csv(real)) == len(store.frame)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    capsys.readouterr()
    assert _score(store, "--input", str(src), "--output", str(fifo)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err, err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_text_in_a_numeric_parquet_column_is_a_named_reject(store, tmp_path, capsys):
    """pandas writes text as large_string: read as numbers like any other text."""
    frame = store.frame.astype({"mean_texture": str})
    frame.loc[5, "mean_texture"] = "abc"
    src = tmp_path / "text.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).cast(pa.schema(
        [pa.field(f.name, pa.large_string() if f.name == "mean_texture" else f.type)
         for f in pa.Schema.from_pandas(frame, preserve_index=False)])), src)
    out = tmp_path / "o.csv"
    assert _score(store, "--input", str(src), "--output", str(out)) == 2
    assert "record 5, column 'mean_texture'" in capsys.readouterr().err
    assert _score(store, "--input", str(src), "--output", str(out), "--on-error", "skip") == 0
    assert len(pd.read_csv(out)) == len(frame) - 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_wide_rows_make_chunks_of_fewer_rows(tmp_path, monkeypatch, suffix):
    """A chunk holds at most --chunk-rows rows and about _CHUNK_BYTES bytes, so memory follows
    the chunk's size in bytes, however wide the rows."""
    import pipelines.batch.io as batch_io

    monkeypatch.setattr(batch_io, "_CHUNK_BYTES", 200_000)
    monkeypatch.setattr(batch_io, "_CSV_BLOCK_BYTES", 100_000)  # a CSV is read block by block
    frame = pd.DataFrame(np.arange(400 * 300, dtype=float).reshape(400, 300),
                         columns=[f"c{i}" for i in range(300)])
    src = tmp_path / f"wide{suffix}"
    frame.to_csv(src, index=False) if suffix == ".csv" else frame.to_parquet(src)
    reader = TableReader(src, 10_000, numeric_columns=list(frame.columns))
    chunks = list(reader.chunks(list(frame.columns)))
    assert len(chunks) > 1 and max(c.batch.num_rows for c in chunks) < 400
    assert max(c.batch.nbytes for c in chunks) < 2 * 200_000 + 4 * 100_000
    np.testing.assert_array_equal(np.concatenate([c.records for c in chunks]), np.arange(400))
    got = pa.Table.from_batches([c.batch for c in chunks]).to_pandas()
    np.testing.assert_array_equal(got.to_numpy(), frame.to_numpy())


@pytest.mark.parametrize("options,words", [
    ({"keep": ["id", "id"]}, "column 'id' is named twice"),
    ({"engine": "spark", "output": "scored.csv"}, "writes a Parquet dataset"),
])
def test_options_that_cannot_mean_what_they_say_are_refused(options, words):
    from pipelines.batch.options import ScoreOptions

    with pytest.raises(ConfigError, match=words):
        ScoreOptions(**{"model": "models:/m@champion", "input": "a.parquet",
                        "output": "b.parquet", **options}).check()


def test_a_csv_record_longer_than_a_block_is_named_as_such(tmp_path, monkeypatch):
    import pipelines.batch.io as batch_io

    monkeypatch.setattr(batch_io, "_CSV_BLOCK_BYTES", 1 << 16)
    src = tmp_path / "long.csv"
    src.write_text("a,b\n" + "1,x\n" * 10 + "2," + "y" * (1 << 18) + "\n3,z\n")
    with pytest.raises(DataError, match="a record longer than 0.0625 MiB.*shorten its long field"):
        list(TableReader(src, 100, ["a"]).chunks(["a", "b"]))

def test_record_numbers_skip_malformed_lines():
    # Good rows 0..4 with malformed records 1 and 4 skipped: records 0, 2, 3, 5, 6.
    np.testing.assert_array_equal(_record_numbers(0, 5, [1, 4]), [0, 2, 3, 5, 6])
    np.testing.assert_array_equal(_record_numbers(3, 2, [1, 4]), [5, 6])
    np.testing.assert_array_equal(_record_numbers(0, 0, [1]), [])



def test_a_csvs_category_columns_stay_text_in_every_chunk(tmp_path):
    """A category that looks like a number (``007``) is read as the text it is, though every
    value of the column looks like a number (pyarrow alone reads them as integers: 7, 12)."""
    src = tmp_path / "codes.csv"
    src.write_text("x,code\n1.5,007\n2.5,012\n3.5,100\n")
    reader = TableReader(src, 2, numeric_columns=["x"], text_columns=["code"])
    assert reader.schema.field("code").type == pa.string()
    chunks = list(reader.chunks(["x", "code"]))
    assert [c.batch.column(1).to_pylist() for c in chunks] == [["007", "012"], ["100"]]
    assert chunks[0].batch.column(0).to_pylist() == [1.5, 2.5]


def test_a_csvs_missing_values_are_the_ones_pandas_reads_as_missing(tmp_path):
    """Training reads a CSV with pandas: its NA tokens ('None', '<NA>'...) are missing values
    here too, in numbers (imputed, not rejects) and in categories (not unknown ones)."""
    from pandas._libs.parsers import STR_NA_VALUES

    from pipelines.batch.io import NA_VALUES

    assert sorted(NA_VALUES) == sorted(STR_NA_VALUES)
    src = tmp_path / "na.csv"
    src.write_text("x,code\n1.5,a\nNone,None\n<NA>,<NA>\nNA,b\n")
    chunk, = TableReader(src, 100, numeric_columns=["x"], text_columns=["code"]).chunks(
        ["x", "code"])
    assert not chunk.rejects
    assert chunk.batch.to_pydict() == {"x": [1.5, None, None, None],
                                       "code": ["a", None, None, "b"]}


def test_numbers_with_spaces_around_them_are_numbers(tmp_path):
    """pandas reads ' 3.363' (a space after each comma) as 3.363; a field of spaces alone is
    no number."""
    src = tmp_path / "spaces.csv"
    src.write_text("x,y,code\n0.126, 3.363, a\n\t2,4 ,b\n1,  ,c\n")
    chunk, = TableReader(src, 100, numeric_columns=["x", "y"], text_columns=["code"]).chunks(
        ["x", "y", "code"])
    assert chunk.batch.to_pydict() == {"x": [0.126, 2.0], "y": [3.363, 4.0],
                                       "code": [" a", "b"]}
    assert [(r.record, r.message) for r in chunk.rejects] == [
        (2, "column 'y': expected double, got '  '")]


def test_booleans_in_a_number_column_are_rejects_in_parquet_as_in_csv(tmp_path):
    """A boolean is no number, whichever way the file stores it (JSON requests and the
    detector refuse it too): each such record is a reject naming the column."""
    src = tmp_path / "flags.parquet"
    pq.write_table(pa.table({"a": pa.array([True, None, False]), "b": [1.0, 2.0, 3.0]}), src)
    chunk, = TableReader(src, 100, numeric_columns=["a", "b"]).chunks(["a", "b"])
    assert chunk.batch.to_pydict() == {"a": [None], "b": [2.0]}
    assert [(r.record, r.message) for r in chunk.rejects] == [
        (0, "column 'a': expected double, got True"),
        (2, "column 'a': expected double, got False")]
    csv = tmp_path / "flags.csv"
    csv.write_text("a,b\nTRUE,1\n,2\n")
    chunk, = TableReader(csv, 100, numeric_columns=["a", "b"]).chunks(["a", "b"])
    assert [(r.record, r.message) for r in chunk.rejects] == [
        (0, "column 'a': expected double, got 'TRUE'")]


def test_a_record_missing_every_feature_value_is_a_reject(tmp_path):
    """Imputed, a record without a single feature value would score as the typical normal
    record: it is a reject, in CSV (empty fields, NA tokens) as in Parquet (nulls, NaN). A
    column that is no feature (an id) does not make it one."""
    from training.preprocessing.tabular import EMPTY_RECORD

    src = tmp_path / "holes.csv"
    src.write_text("id,x,code\n1,1.5,a\n2,,\n3,NaN,None\n4,,b\n")
    chunk, = TableReader(src, 100, numeric_columns=["id", "x"], text_columns=["code"],
                         feature_columns=["x", "code"]).chunks(["id", "x", "code"])
    assert chunk.batch.to_pydict() == {"id": [1.0, 4.0], "x": [1.5, None], "code": ["a", "b"]}
    assert [(r.record, r.message) for r in chunk.rejects] == [(1, EMPTY_RECORD),
                                                              (2, EMPTY_RECORD)]
    parquet = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"x": [1.0, float("nan"), None], "y": [None, None, None]}), parquet)
    chunk, = TableReader(parquet, 100, numeric_columns=["x", "y"],
                         feature_columns=["x", "y"]).chunks(["x", "y"])
    assert chunk.records.tolist() == [0]
    assert [r.record for r in chunk.rejects] == [1, 2]
    # without feature columns (series: a row of gaps is part of the series) nothing is rejected
    chunk, = TableReader(parquet, 100, numeric_columns=["x", "y"]).chunks(["x", "y"])
    assert not chunk.rejects


def test_an_unnamed_header_field_is_named_as_pandas_names_it(tmp_path):
    """A frame written with its index (``to_csv()``): pandas reads the first column as
    ``Unnamed: 0``, and so does a batch job."""
    src = tmp_path / "indexed.csv"
    pd.DataFrame({"a": [0.5, 1.5], "b": ["x", "y"]}).to_csv(src)
    reader = TableReader(src, 100, numeric_columns=["Unnamed: 0", "a"], text_columns=["b"])
    assert reader.columns == list(pd.read_csv(src).columns) == ["Unnamed: 0", "a", "b"]
    chunk, = reader.chunks(["b", "Unnamed: 0"])
    assert chunk.batch.to_pydict() == {"b": ["x", "y"], "Unnamed: 0": [0.0, 1.0]}


def test_parquet_integers_past_2_to_the_53_read_as_the_float64_training_reads(tmp_path):
    """int64 nanosecond times and uint64 counts past 2**63 lose digits as float64, as they do
    in training (pandas), and are no reject."""
    big, huge = [1696606208078407019, 2**60 + 1], [2**64 - 1, 2**63 + 12345]
    src = tmp_path / "big.parquet"
    pq.write_table(pa.table({"big": pa.array(big, pa.int64()),
                             "huge": pa.array(huge, pa.uint64())}), src)
    chunk, = TableReader(src, 100, numeric_columns=["big", "huge"]).chunks(["big", "huge"])
    assert not chunk.rejects
    assert chunk.batch.to_pydict() == {"big": [float(v) for v in big],
                                       "huge": [float(v) for v in huge]}
    assert chunk.batch.to_pydict() == pd.read_parquet(src).astype("float64").to_dict("list")

def test_output_templates():
    when = datetime(2024, 5, 6, 7, 8, 9)
    src = Path("in/a.csv")
    assert output_for("o/{date}/{stem}.parquet", src, when, True) == Path("o/2024-05-06/a.parquet")
    assert output_for("o/", src, when, False) == Path("o/a.parquet")
    assert output_for("o", src, when, True) == Path("o/a.parquet")
    assert output_for("o.csv", src, when, False) == Path("o.csv")
    assert output_for("o/{{x}}-{stem}.csv", src, when, False) == Path("o/{x}-a.csv")
    # an escaped {stem} is text: several inputs go into the folder it names
    assert output_for("o/{{stem}}/", src, when, True) == Path("o/{stem}/a.parquet")
    for template in ("o/{stem.__class__}.csv", "o/{stem[0]}.csv", "o/{stem!r}.csv",
                     "o/{stem:>9}.csv", "o/{nope}.csv", "o/{stem"):
        with pytest.raises(ConfigError, match="output 'o/"):  # names only: no attributes
            output_for(template, src, when, False)


def test_score_sample_quantiles_are_exact_when_small_and_bounded_when_large():
    s = ScoreSample(size=1000)
    s.add(np.arange(101, dtype=float))
    assert s.quantiles()["score_p50"] == 50.0
    for _ in range(20):
        s.add(np.random.default_rng(1).random(10_000))
    assert len(s._values) == 1000
    assert pa.array(s._values).type == pa.float64()


def _duplicate_header(store, tmp_path):
    src = tmp_path / "in.csv"
    frame = store.frame.copy()
    frame.insert(2, "mean_radius", frame["mean_radius"], allow_duplicates=True)
    frame.to_csv(src, index=False)
    return src


def _list_column(store, tmp_path):
    src = tmp_path / "in.parquet"
    table = pa.Table.from_pandas(store.frame, preserve_index=False)
    i = table.schema.get_field_index("mean_texture")
    table = table.set_column(i, "mean_texture", pa.array([[1.0, 2.0]] * len(store.frame)))
    pq.write_table(table, src)
    return src


def _latin1(store, tmp_path):
    src = tmp_path / "in.csv"
    lines = store.frame.to_csv(index=False).splitlines()
    lines[6] = "\xe9" + lines[6]  # record 5 starts with a Latin-1 byte
    src.write_bytes("\n".join(lines).encode("latin-1"))
    return src


def _latin1_header(store, tmp_path):
    src = tmp_path / "in.csv"
    text = store.frame.to_csv(index=False).replace("mean_radius", "m\xe9an_radius", 1)
    src.write_bytes(text.encode("latin-1"))
    return src


def _overflowing(store, tmp_path):
    src = tmp_path / "in.csv"
    frame = store.frame.copy()
    frame.loc[7, "mean_area"] = 1e308
    frame.to_csv(src, index=False)
    return src


def _timestamps(store, tmp_path):
    src = tmp_path / "in.parquet"
    frame = store.frame.copy()
    frame["mean_area"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(frame.index, "s")
    frame.to_parquet(src)
    return src


@pytest.mark.parametrize("make, message", [
    (_duplicate_header, "column 'mean_radius': appears more than once in the header"),
    (_latin1_header, "the header is not UTF-8 text"),
    (_overflowing, "record 7, column 'mean_area': values too far outside the training data"),
    (_timestamps, "column 'mean_area': holds dates/times (datetime64"),  # [ns] or [us]
    (_list_column, "column 'mean_texture': has type list<element: double>; a column takes one "
                   "number, text or boolean per record"),
    (_latin1, "record 5: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
])
def test_unusable_tables_exit_2_naming_the_column_or_record(store, tmp_path, capsys, make,
                                                            message):
    src = make(store, tmp_path)
    out = tmp_path / "o.parquet"
    code = _score(store, "--input", str(src), "--output", str(out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {src}: {message}"), err
    assert not out.exists()


def test_runtime_choice_weighs_the_graphs_start_up_against_torchs_rows(store, tmp_path):
    from pipelines.batch.job import TORCH_FROM_ROWS, _rows_about, torch_pays
    from pipelines.batch.model import load_batch_model

    model = load_batch_model(store.model_uri, tmp_path, tracking_uri=store.uri)
    parquet, csv = tmp_path / "a.parquet", tmp_path / "b.csv"
    store.frame.to_parquet(parquet)
    store.frame.to_csv(csv, index=False)
    # Parquet: the footer's count; CSV: an estimate from its size, of the right magnitude.
    assert _rows_about([(parquet, tmp_path / "o1.parquet")], model) == len(store.frame)
    estimate = _rows_about([(csv, tmp_path / "o2.parquet")], model)
    assert len(store.frame) / 5 < estimate < len(store.frame) * 5
    assert not torch_pays("vae", TORCH_FROM_ROWS["vae"]) and torch_pays("vae", 10**7)
    assert not torch_pays("ae", 10**8)
    assert not torch_pays("conv_ae", 10**8)  # images cost the same either way


def _in_own_store(store, *args: str) -> int:
    """``main(args)`` against another store, then the module's store MLflow's default again."""
    try:
        return main(list(args))
    finally:
        mlflow.set_tracking_uri(store.uri)
        mlflow.set_registry_uri(store.uri)


def _trained_on(store, data: Path, name: str) -> tuple[str, str]:
    """A two-epoch AE trained on ``data`` in a store of its own: (store URI, model URI)."""
    uri = f"sqlite:///{data.parent / 'mlflow.db'}"
    assert _in_own_store(store, "train", "--data", str(data), "--kind", "ae", "--name", name,
                         "--epochs", "2", "--alias", "champion", "--experiment", "batch-tests",
                         "--tracking-uri", uri) == 0
    return uri, f"models:/{name}@champion"


def _scored_as_trained(store, uri: str, model_uri: str, src: Path, out: Path) -> pd.DataFrame:
    """Score ``src`` in a batch job; check its scores are the detector's on the frame training
    reads from the same file (``read_table``)."""
    from pipelines.batch.model import load_batch_model
    from training.data.tables import read_table

    assert _in_own_store(store, "score", "--model", model_uri, "--tracking-uri", uri,
                         "--input", str(src), "--output", str(out)) == 0
    got = pd.read_csv(out)
    detector = load_batch_model(model_uri, out.parent, tracking_uri=uri).detector
    want = detector.score(read_table(src), source=str(src))
    assert len(got) == len(want) and not out.with_name(f"{out.stem}.rejects.csv").exists()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-6)
    return got


@pytest.fixture(scope="module")
def pandas_written(store, tmp_path_factory) -> tuple[str, str, Path]:
    """A model trained on a CSV as pandas writes and reads it: the frame's index as an unnamed
    first column, lowercase true/false (pandas: booleans), 'None' and '<NA>' for missing."""
    frame = pandas_written_frame(200)
    data = tmp_path_factory.mktemp("pandas-written") / "written.csv"
    frame.to_csv(data)
    return *_trained_on(store, data, "pandas-written"), data


def test_the_csv_a_model_trained_on_scores_with_no_unknown_category(store, pandas_written,
                                                                     tmp_path):
    """A batch job reads a CSV as training's pandas does: the unnamed index column, boolean
    categories (trained as 'True'/'False', read here as 'true'/'false') and missing values."""
    uri, model_uri, data = pandas_written
    got = _scored_as_trained(store, uri, model_uri, data, tmp_path / "o.csv")
    assert got.columns[0] == "Unnamed: 0"
    assert (got["unknown_categories"] == 0).all()


@pytest.fixture(scope="module")
def big_integers(store, tmp_path_factory) -> tuple[str, str, Path]:
    """A model trained on a Parquet file of int64 nanosecond times (past 2**53) and uint64
    counts (past 2**63)."""
    rng = np.random.default_rng(4)
    n = 200
    a = rng.normal(size=n)
    counts = np.uint64(2**63) + rng.integers(0, 10**12, size=n, dtype=np.uint64)
    frame = pd.DataFrame({"a": a, "b": 3 * a + rng.normal(scale=0.2, size=n),
                          "t": 1696606208078407019 + np.arange(n, dtype=np.int64) * 10**9,
                          "cnt": counts})
    data = tmp_path_factory.mktemp("big-integers") / "big.parquet"
    frame.to_parquet(data)
    return *_trained_on(store, data, "big-integers"), data


def test_integers_past_2_to_the_53_score_as_they_trained(store, big_integers, tmp_path):
    uri, model_uri, data = big_integers
    _scored_as_trained(store, uri, model_uri, data, tmp_path / "o.csv")


def test_a_uint64_columns_model_predicts_on_its_training_frame(store, big_integers, tmp_path):
    """MLflow infers no type for uint64 (the whole signature fell back to one unnamed Any, and
    the model then received no named column): the column is named, typed Any."""
    from pipelines.batch.model import load_batch_model

    uri, model_uri, data = big_integers
    path = load_batch_model(model_uri, tmp_path, tracking_uri=uri).path
    pyfunc = mlflow.pyfunc.load_model(str(path))
    assert pyfunc.metadata.get_input_schema().input_names() == ["a", "b", "t", "cnt"]
    frame = pd.read_parquet(data)
    assert frame["cnt"].dtype == np.uint64
    got = pyfunc.predict(frame)
    assert len(got) == len(frame) and np.isfinite(got["score"]).all()
