"""Reading tables from CSV or Parquet with errors that name the file.

What every reader of tables checks the same way lives here too: a CSV's header read as written
(pandas renames a duplicate ``a`` to ``a.1``), duplicate column names, column types that hold no
single value per record (lists, structs, maps, binary), and where a file stops being UTF-8.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from training.errors import DataError, TooLargeError, shown

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# A chunk of a table read piece by piece (batch jobs, uploads) holds about this many bytes at
# most, however few rows that makes when they are wide or hold long texts.
CHUNK_BYTES = 64 << 20


def table_format(path: str | Path) -> str:
    """'csv' or 'parquet' from the file name, or a :class:`DataError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    return TABLE_SUFFIXES[suffix]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole CSV or Parquet file; empty or unreadable files are :class:`DataError`, and
    so are duplicate column names, nested or binary columns and text that is not UTF-8."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, expected a .csv or .parquet file (a folder "
                        "of series files is for the sequence kinds, seq_ae and seq_vae)")
    fmt = table_format(p)
    try:
        if fmt == "csv":
            with open(p, "rb") as f:
                df = read_csv(f, str(path))
        else:
            schema = pq.read_schema(p)
            check_columns(schema.names, str(path))
            check_types(schema, str(path))
            table = pq.read_table(p)
            decimals = [f.name for f in table.schema if pa.types.is_decimal(f.type)]
            for name in decimals:  # numbers, as batch scoring reads them (pandas: objects)
                i = table.schema.get_field_index(name)
                table = table.set_column(i, name, table.column(name).cast(pa.float64()))
            df = table.to_pandas()
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except UnicodeDecodeError:
        with open(p, "rb") as f:
            raise (not_utf8(f, str(path))
                   or DataError("not UTF-8 text; save the file as UTF-8", source=str(path))
                   ) from None
    except (pd.errors.ParserError, pa.ArrowException, OSError, ValueError, csv.Error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {first}") from None
    if len(df) == 0:
        raise DataError(f"{path}: no rows (only a header?)")
    df.columns = [str(c) for c in df.columns]
    for c in df.columns:  # a Parquet dictionary column: its values, as a CSV would give them
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            categories = df[c].cat.categories.dtype
            df[c] = df[c].astype(object if df[c].isna().any() else categories)
    return df


def labels_of(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    """The label column as 0/1 integers (1 = anomaly); accepts 0/1, booleans, 'true'/'false'."""
    if column not in df.columns:
        raise DataError(
            f"{source}: label column '{column}' not found; columns are {list(df.columns)}"
        )
    col = df[column]
    if col.isna().any():
        row = int(col.isna().to_numpy().nonzero()[0][0])
        raise DataError("missing label", source=source, record=row, column=column)
    if pd.api.types.is_bool_dtype(col):
        return col.astype(int)
    if pd.api.types.is_numeric_dtype(col):
        bad = ~col.isin([0, 1])
    else:
        lowered = col.astype(str).str.strip().str.lower()
        mapped = lowered.map({"0": 0, "1": 1, "false": 0, "true": 1, "normal": 0, "anomaly": 1})
        bad = mapped.isna()
        col = mapped
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"label {shown(df[column].iloc[row])} is not 0/1 (1 = anomaly)",
                        source=source, record=row, column=column)
    return col.astype(int)


def csv_header(f: BinaryIO, source: str, max_bytes: int | None = None) -> list[str]:
    """A CSV's column names as its header writes them, from the current position of ``f``
    (blank lines before the header are skipped, as pandas does).

    Args:
        max_bytes: refuse a header longer than this with :class:`TooLargeError` before
            reading further (None: no limit).

    Raises:
        DataError: an empty file, or a header that is not UTF-8.
    """
    limit = max_bytes if max_bytes is not None else -1
    raw = b""
    while not raw.strip():
        raw = f.readline(limit + 1 if limit >= 0 else -1)
        if not raw:
            raise DataError(f"{source}: file is empty")
    cut = _past_bare_cr(raw)
    if cut is not None:  # old Mac line ends (CR alone): the header is the first line only
        f.seek(f.tell() - len(raw) + cut)
        raw = raw[:cut]
    while raw.count(b'"') % 2 and (limit < 0 or len(raw) <= limit):  # a quoted line break
        more = f.readline(limit + 1 - len(raw) if limit >= 0 else -1)
        if not more:
            break
        raw += more
    if 0 <= limit < len(raw):
        raise TooLargeError(f"{source}: the header is longer than {limit} bytes; send fewer or "
                            "shorter column names")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: the header is not UTF-8 text (byte "
                        f"0x{raw[e.start]:02x}); save the file as UTF-8") from None
    try:
        return next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as e:  # a column name longer than the csv module's field limit
        raise DataError(f"{source}: the header does not read as CSV ({e}); use shorter "
                        "column names") from None


def _past_bare_cr(raw: bytes) -> int | None:
    """Where the first line of ``raw`` ends when its lines end in a carriage return alone (a
    line read up to a newline then holds the whole file): just past that CR, outside quotes,
    leading line breaks skipped; None when the line ends otherwise."""
    body = raw.strip(b"\r\n")
    if b"\r" not in body:  # the usual case, without a byte-by-byte look
        return None
    quoted, start = False, len(raw) - len(raw.lstrip(b"\r\n"))
    for i in range(start, len(raw)):
        if raw[i] == 0x22:  # '"'
            quoted = not quoted
        elif raw[i] == 0x0D and not quoted and raw[i + 1:i + 2] != b"\n":
            return i + 1
    return None


# Where a record's field past the header's last lands (pandas would otherwise read the first
# field of such a file as the row index and shift every value one column to the left).
_PAST_HEADER = "\x00past the header"


def read_csv(f: BinaryIO, source: str, rows: int | None = None,
             text_columns: Iterable[str] = ()) -> pd.DataFrame | Iterator[pd.DataFrame]:
    """A CSV read from the start of ``f`` with pandas, every record checked against the header:
    one empty field past the header's last (a delimiter at the end of the line) is dropped,
    anything more is a :class:`DataError` naming the record; a record with fewer fields has
    its last values missing, as pandas reads it. A column named twice is refused.

    Args:
        rows: read in chunks of this many records (an iterator of frames, numbered on across
            chunks); None: the whole file as one frame.
        text_columns: columns read as text whatever they hold (a category ``007`` stays
            ``007`` in every chunk).

    Raises:
        DataError (at once, or while iterating): as above; pandas' own parse errors are
        left to the caller.
    """
    f.seek(0)
    names = csv_header(f, source)
    check_columns(names, source)
    # an unnamed column gets the name pandas gives it
    names = [name or f"Unnamed: {i}" for i, name in enumerate(names)]
    wanted = set(text_columns)
    options = {"names": [*names, _PAST_HEADER], "header": None, "index_col": False,
               "dtype": {c: str for c in names if c in wanted} or None}
    if rows is None:
        return _fields_checked(_strict(lambda: pd.read_csv(f, **options), len(names), source),
                               len(names), source)
    return _chunks_checked(lambda: pd.read_csv(f, chunksize=rows, **options), len(names), source)


def _chunks_checked(open_reader, n: int, source: str) -> Iterator[pd.DataFrame]:
    reader = _strict(open_reader, n, source)
    while (df := _strict(lambda: next(reader, None), n, source)) is not None:
        yield _fields_checked(df, n, source)


def _strict(call, n: int, source: str):
    """``call()``, with pandas' warning of a record wider than the header an error (pandas
    drops the fields past the names it was given)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return call()
        except pd.errors.ParserWarning:
            raise DataError(f"{source}: a record has more fields than the header's {n} names; "
                            "remove the extra fields or name their columns") from None


def _fields_checked(df: pd.DataFrame, n: int, source: str) -> pd.DataFrame:
    """``df`` without the past-the-header column, or a DataError naming the first record with
    a value there."""
    past = df.pop(_PAST_HEADER).notna().to_numpy()
    if past.any():
        raise DataError(f"more fields than the header's {n} names; remove the extra field or "
                        "name its column", source=source, record=int(df.index[past.argmax()]))
    return df


def check_columns(names: Iterable[str], source: str) -> None:
    """Refuse a table whose header names a column twice, naming the column."""
    seen: set[str] = set()
    for name in map(str, names):
        if name in seen:
            raise DataError("appears more than once in the header; rename or drop the copies",
                            source=source, column=name)
        seen.add(name)


def unusable_type(t: pa.DataType) -> bool:
    """Whether values of this Arrow type are no single number, text or boolean."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t))


def check_types(schema: pa.Schema, source: str, columns: Iterable[str] | None = None) -> None:
    """Refuse a list, struct, map or binary column (of ``columns``, default all), naming it."""
    wanted = None if columns is None else set(columns)
    for field in schema:
        if (wanted is None or field.name in wanted) and unusable_type(field.type):
            raise DataError(f"has type {field.type}; a column takes one number, text or boolean "
                            "per record: flatten it into columns of its own, or drop it",
                            source=source, column=field.name)


def not_utf8(f: BinaryIO, source: str) -> DataError | None:
    """The error for a CSV that is not UTF-8, naming the record of its first bad byte (records
    counted from 0 after the header, one per line), or None when it is all UTF-8. ``f`` is read
    from its start."""
    f.seek(0)
    carry, lines = b"", 0
    while True:
        block = f.read(1 << 20)
        data = carry + block
        carry = b""
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            if block and e.reason == "unexpected end of data":  # a character cut by the block
                lines += data.count(b"\n", 0, e.start)
                carry = data[e.start:]
                continue
            line = lines + data.count(b"\n", 0, e.start)
            byte = f"byte 0x{data[e.start]:02x}"
            if line == 0:
                return DataError(f"the header is not UTF-8 text ({byte}); save the file as "
                                 "UTF-8", source=source)
            return DataError(f"not UTF-8 text ({byte}); save the file as UTF-8", source=source,
                             record=line - 1)
        lines += data.count(b"\n")
        if not block:
            return None


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth Parquet's dictionary encoding: all but the floating-point ones, whose
    values (features, scores) rarely repeat, so that building a dictionary only to drop it
    costs most of the write (1M rows of 38 columns: 2.8 s against 0.6 s without, and a larger
    file); except the p-values (``p_value``, ``p_value_<kind>``), which take at most
    n_calibration + 1 values."""
    return [f.name for f in schema
            if not pa.types.is_floating(f.type) or f.name.startswith("p_value")]
