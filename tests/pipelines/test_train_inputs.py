"""Training inputs a careful user still gets wrong: each fails with exit 2 and one line naming
the file and column, before any MLflow run is opened, in bounded memory and time."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli.main import main

# Runs a command and prints its exit code and its peak resident memory (kB), measured by the
# kernel for the child alone.
_MEASURED = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def _train(path, tmp_path, *extra) -> int:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return main(["train", "--data", str(path), "--kind", "ae", "--name", "m", "--epochs", "1",
                 "--tracking-uri", uri, *extra])


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_an_identifier_column_exits_2_in_seconds_and_bounded_memory(tmp_path):
    """60,000 rows with 50,001 distinct strings in one column (dense one-hot: 24 GB)."""
    rng = np.random.default_rng(0)
    codes = np.concatenate([np.arange(50_001), rng.integers(0, 50_001, size=9_999)])
    path = tmp_path / "users.csv"
    pd.DataFrame({"x": rng.normal(size=60_000), "y": rng.normal(size=60_000),
                  "who": np.char.add("user-", codes.astype(str))}).to_csv(path, index=False)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURED, sys.executable, "-m", "pipelines.cli", "train",
         "--data", str(path), "--name", "m", "--tracking-uri",
         f"sqlite:///{tmp_path / 'mlflow.db'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    seconds = time.perf_counter() - start
    code, peak_kb = (int(v) for v in proc.stdout.split())
    assert code == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: column 'who': 50001 distinct values in 60000 rows, 40939 of them seen "
        "only once: an identifier or free text, not a category to learn from; set it as the id "
        "column (--id-column) or drop it"]
    assert not (tmp_path / "mlflow.db").exists()
    print(f"identifier column: exit {code} in {seconds:.1f}s, peak RSS {peak_kb / 1024:.0f} MiB")
    assert peak_kb < 1536 * 1024, peak_kb


def test_duplicate_column_names_are_named_csv_and_parquet(tmp_path, capsys):
    rng = np.random.default_rng(1)
    rows = "\n".join(f"{a:.4f},{b:.4f},{c:.4f}" for a, b, c in rng.normal(size=(200, 3)))
    csv = tmp_path / "d.csv"
    csv.write_text("a,b,a\n" + rows + "\n")
    assert _train(csv, tmp_path) == 2
    assert _last_error(capsys) == (f"error: {csv}: column 'a': appears more than once in the "
                                   "header; rename or drop the copies")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(rng.normal(size=200)) for _ in range(3)],
                                        names=["a", "b", "a"]), parquet)
    assert _train(parquet, tmp_path) == 2
    assert _last_error(capsys) == (f"error: {parquet}: column 'a': appears more than once in "
                                   "the header; rename or drop the copies")
    assert not (tmp_path / "mlflow.db").exists()



def test_a_field_past_the_header_is_named_not_read_as_a_row_index(tmp_path, capsys):
    """pandas alone reads a file whose lines end in a delimiter with its first column as the
    row index, every value one column to the left of its name."""
    from training.data.tables import read_table

    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 3))
    rows = [f"{a:.4f},{b:.4f},{c:.4f}" for a, b, c in values]
    trailing = tmp_path / "t.csv"
    trailing.write_text("a,b,c\n" + "".join(r + ",\n" for r in rows))
    np.testing.assert_allclose(read_table(trailing)[["a", "b", "c"]].to_numpy(),
                               values.round(4))
    extra = tmp_path / "e.csv"
    extra.write_text("a,b,c\n" + "\n".join(rows[:7] + [rows[7] + ",1.5"] + rows[8:]) + "\n")
    assert _train(extra, tmp_path) == 2
    assert _last_error(capsys) == (f"error: {extra}: record 7: more fields than the header's 3 "
                                   "names; remove the extra field or name its column")
    assert not (tmp_path / "mlflow.db").exists()

def test_a_record_without_any_value_is_named_in_file_order_before_a_run(tmp_path, capsys):
    """A line of commas (as a spreadsheet's export leaves): refused naming its place in the
    file, before any split or run, and in the evaluation data too."""
    from training.preprocessing.tabular import EMPTY_RECORD

    rng = np.random.default_rng(4)
    rows = [f"{i},{a:.4f},{b:.4f},0" for i, (a, b) in enumerate(rng.normal(size=(200, 2)))]
    holes = tmp_path / "h.csv"
    holes.write_text("id,a,b,y\n" + "\n".join(rows[:150] + ["150,,,1"] + rows[151:]) + "\n")
    assert _train(holes, tmp_path, "--id-column", "id", "--label-column", "y") == 2
    assert _last_error(capsys) == f"error: {holes}: record 150: {EMPTY_RECORD}"
    assert not (tmp_path / "mlflow.db").exists()
    good = tmp_path / "g.csv"
    good.write_text("id,a,b,y\n" + "\n".join(rows) + "\n")
    assert _train(good, tmp_path, "--id-column", "id", "--label-column", "y", "--eval-data",
                  str(holes)) == 2
    assert _last_error(capsys) == f"error: {holes}: record 150: {EMPTY_RECORD}"
    assert not (tmp_path / "mlflow.db").exists()


def test_old_mac_line_ends_read_as_pandas_reads_them(tmp_path):
    from training.data.tables import read_table

    cr = tmp_path / "cr.csv"
    cr.write_bytes(b'a,"b\rc",d\r1,5,-3\r0,4,-2\r')
    want = pd.read_csv(cr)
    got = read_table(cr)
    assert list(got.columns) == ["a", "b\rc", "d"] == list(want.columns)
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())
    np.testing.assert_array_equal(got.to_numpy(), [[1, 5, -3], [0, 4, -2]])


def test_a_list_column_is_refused_naming_it(tmp_path, capsys):
    rng = np.random.default_rng(2)
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"x": rng.normal(size=200),
                             "pair": pa.array([[0, 1]] * 200, type=pa.list_(pa.int64()))}), path)
    assert _train(path, tmp_path) == 2
    assert _last_error(capsys) == (
        f"error: {path}: column 'pair': has type list<element: int64>; a column takes one number, "
        "text or boolean per record: flatten it into columns of its own, or drop it")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_timestamp_column_is_refused_with_a_hint(fmt, tmp_path, capsys):
    rng = np.random.default_rng(3)
    when = pd.date_range("2024-01-01", periods=200, freq="min")
    df = pd.DataFrame({"x": rng.normal(size=200), "when": when})
    path = tmp_path / f"t.{fmt}"
    df.assign(when=when.strftime("%Y-%m-%dT%H:%M:%S")).to_csv(path, index=False) \
        if fmt == "csv" else df.to_parquet(path)
    assert _train(path, tmp_path) == 2
    err = _last_error(capsys)
    assert err.startswith(f"error: {path}: column 'when': holds dates/times"), err
    assert "--id-column" in err
    assert _train(path, tmp_path, "--id-column", "when", "--no-register") == 0


def test_a_file_not_in_utf8_names_the_record(tmp_path, capsys):
    rng = np.random.default_rng(4)
    lines = ["x,town"] + [f"{v:.3f},Paris" for v in rng.normal(size=200)]
    lines[151] = lines[151].replace("Paris", "Montr\xe9al")  # record 150, in Latin-1
    path = tmp_path / "latin1.csv"
    path.write_bytes("\n".join(lines).encode("latin-1"))
    assert _train(path, tmp_path) == 2
    assert _last_error(capsys) == (f"error: {path}: record 150: not UTF-8 text (byte 0xe9); "
                                   "save the file as UTF-8")


def test_dates_and_times_of_other_kinds_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(5)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": rng.normal(size=200),
                             "day": [datetime.date(2024, 1, 1 + i % 28) for i in range(200)]}),
                   path)
    assert _train(path, tmp_path) == 2
    assert "column 'day': holds dates/times" in _last_error(capsys)


def test_a_column_name_past_the_csv_field_limit_is_named(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = "\n".join(f"{a:.4f},{b:.4f}" for a, b in rng.normal(size=(50, 2)))
    csv = tmp_path / "long.csv"
    csv.write_text(f"{'y' * 200_000},b\n{rows}\n")
    assert _train(csv, tmp_path) == 2
    err = _last_error(capsys)
    assert err.startswith(f"error: {csv}: the header does not read as CSV (field larger"), err
    assert not (tmp_path / "mlflow.db").exists()


def test_values_too_large_to_standardise_are_named_before_a_run(tmp_path, capsys):
    """Finite values whose spread overflows float64 once registered a model that could not
    score; now they fail like any bad value."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    frame.loc[17, "b"] = 1e308
    csv = tmp_path / "huge.csv"
    frame.to_csv(csv, index=False)
    assert _train(csv, tmp_path) == 2
    err = _last_error(capsys)
    assert err.startswith(f"error: {csv}: record 17, column 'b': 1e+308 is too large to "
                          "standardise"), err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_dictionary_column_of_a_parquet_file_trains_as_its_values(tmp_path):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120),
                          "shift": pd.Categorical(rng.choice(["day", "night"], size=120))})
    parquet = tmp_path / "cat.parquet"
    frame.to_parquet(parquet)
    assert _train(parquet, tmp_path) == 0


@pytest.mark.parametrize("config, message", [
    ("model: 5\n", "model: expected a mapping of hyperparameters, got 5"),
    ("seed: abc\n", "seed: expected a whole number from 0 to 9223372036854775807, got 'abc'"),
    ("label_column: [1, 2]\n", "label_column: expected text, got [1, 2]"),
    ("register: 'no'\n", "register: expected true or false, got 'no'"),
    ("alias: latest\n", "alias: 'latest' is reserved by MLflow"),
    ("alias: 'a b'\n", "alias: 'a b' is not a valid alias"),
    ("experiment: ' '\n", "experiment: required, and not blank"),
    ("model:\n  latent_dim: 100000000\n", "model.latent_dim: at most 16384"),
    ("model:\n  hidden_sizes: [100000000]\n", "model.hidden_sizes: expected positive integers"),
])
def test_config_values_of_the_wrong_type_exit_2_before_a_run(tmp_path, capsys, config,
                                                            message):
    rng = np.random.default_rng(5)
    csv = tmp_path / "d.csv"
    pd.DataFrame(rng.normal(size=(100, 3)), columns=list("abc")).to_csv(csv, index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    assert _train(csv, tmp_path, "--config", str(cfg)) == 2
    err = _last_error(capsys)
    assert message in err, err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_config_file_not_in_utf8_is_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("experiment: caf\xe9\n".encode("latin-1"))
    assert _train(tmp_path / "d.csv", tmp_path, "--config", str(cfg)) == 2
    assert _last_error(capsys) == (f"error: {cfg}: not UTF-8 text (byte 0xe9); save the file "
                                   "as UTF-8")


def test_a_table_too_wide_for_mlflows_dataset_schema_is_noted_not_failed(tmp_path, caplog):
    """MLflow's store refuses a dataset schema over 1 MB (about 20,000 columns): the run keeps
    the data's path as a tag instead of failing after the fit."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        _log_both(tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)
    assert "longer than MLflow stores" in caplog.text


def _log_both(tmp_path):
    import mlflow

    from pipelines.train.run import _log_dataset

    wide = pd.DataFrame(np.zeros((3, 25_000)), columns=[f"column_{i}" for i in range(25_000)])
    narrow = wide.iloc[:, :3]
    with mlflow.start_run(experiment_id=mlflow.create_experiment("wide")) as run:
        _log_dataset(mlflow.data.from_pandas(wide, source=str(tmp_path / "w.csv")), "w.csv")
        _log_dataset(mlflow.data.from_pandas(narrow, source=str(tmp_path / "n.csv")), "n.csv")
    got = mlflow.get_run(run.info.run_id)
    assert got.data.tags["dataset"] == "w.csv"
    assert len(got.inputs.dataset_inputs) == 1  # the narrow one, logged as usual
