"""Reading multivariate series: one CSV/Parquet file, or a folder of them (one series a file).

CSV files may use ``,`` or ``;`` between fields (sensor logs often use ``;``). In a folder,
every ``.csv``/``.parquet`` file is one series: the files are read in name order and stacked,
each row keyed by its file's name in the series column.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from training.data.tables import TABLE_SUFFIXES, read_table
from training.errors import DataError

DEFAULT_SERIES_COLUMN = "series"


def read_series_file(path: str | Path) -> pd.DataFrame:
    """One table; a CSV whose header holds ``;`` but no ``,`` is read with ``;``."""
    df = read_table(path)
    if str(path).lower().endswith(".csv") and len(df.columns) == 1 and ";" in df.columns[0]:
        df = pd.read_csv(path, sep=";")
        df.columns = [str(c) for c in df.columns]
    return df


def read_series(path: str | Path, series_column: str | None = None
                ) -> tuple[pd.DataFrame, str | None]:
    """A file as it is, or a folder's files stacked with their names as the series key (a
    file that has the series column already keeps its own keys).

    Returns:
        ``(frame, series_column)``: for a folder, the series column is ``series_column`` or
        :data:`DEFAULT_SERIES_COLUMN`, filled with the file names.
    """
    p = Path(path)
    if not p.is_dir():
        return read_series_file(p), series_column
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no .csv or .parquet files in the folder")
    column = series_column or DEFAULT_SERIES_COLUMN
    parts = []
    for f in files:
        df = read_series_file(f)
        # A file that names its own series keeps them; otherwise the file is the series.
        part = df if column in df.columns else df.assign(**{column: f.name})
        if parts and set(part.columns) != set(parts[0].columns):
            raise DataError(f"{f}: columns {sorted(set(part.columns) - {column})} differ from "
                            f"those of {files[0].name} "
                            f"{sorted(set(parts[0].columns) - {column})}; every file of the "
                            "folder is one series of the same sensors")
        parts.append(part)
    return pd.concat(parts, ignore_index=True), column
