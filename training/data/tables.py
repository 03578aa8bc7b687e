"""Reading tables from CSV or Parquet with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from training.errors import DataError, shown

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: str | Path) -> str:
    """'csv' or 'parquet' from the file name, or a :class:`DataError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    return TABLE_SUFFIXES[suffix]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole CSV or Parquet file; empty or unreadable files are :class:`DataError`."""
    p = Path(path)
    fmt = table_format(p)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, expected a .csv or .parquet file")
    try:
        df = pd.read_csv(p) if fmt == "csv" else pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {first}") from None
    if len(df) == 0:
        raise DataError(f"{path}: no rows (only a header?)")
    df.columns = [str(c) for c in df.columns]
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
