"""Scoring uploaded CSV and Parquet files a chunk at a time.

The upload arrives spooled to a temporary file (never whole in memory); it is read
``chunk_rows`` rows at a time, each chunk scored in one pass and appended to a temporary output
file in the same format, which is then streamed back. A bad value anywhere fails the whole file
with an error naming its record (counted from 0 over the whole file) and column, before any
byte of the answer is sent.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from service.model import ServedModel
from training.errors import DataError, UnsupportedMediaError

QUANTILE_NAMES = ["min", "p50", "p90", "p99", "max"]
MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_CONTENT_TYPES = {"text/csv": "csv", "application/csv": "csv",
                  "application/vnd.apache.parquet": "parquet",
                  "application/x-parquet": "parquet", "application/parquet": "parquet"}


def file_format(filename: str | None, content_type: str | None, head: bytes) -> str:
    """'csv' or 'parquet', from the name, then the content type, then the first bytes."""
    suffix = Path(filename or "").suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in _CONTENT_TYPES:
        return _CONTENT_TYPES[ctype]
    if head.startswith(b"PAR1"):
        return "parquet"
    raise UnsupportedMediaError(f"{filename or 'upload'}: cannot tell its format; upload a "
                                ".csv or .parquet file (or set its content type to text/csv "
                                "or application/vnd.apache.parquet)")


def _csv_chunks(f: BinaryIO, rows: int, name: str) -> Iterator[pd.DataFrame]:
    try:
        yield from pd.read_csv(f, chunksize=rows)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{name}: cannot read as CSV: {_first_line(e)}") from None


def _parquet_chunks(f: BinaryIO, rows: int, name: str) -> Iterator[pd.DataFrame]:
    try:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=rows):
            yield batch.to_pandas()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{name}: cannot read as Parquet: {_first_line(e)}") from None


@dataclass
class FileResult:
    """What scoring a file produced: the output path (None for a summary) and counts."""

    path: Path | None
    n_records: int = 0
    n_anomalies: int = 0
    primary: list[np.ndarray] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self, model: ServedModel, filename: str) -> dict[str, Any]:
        """The JSON summary (see ``schemas.FileSummary``)."""
        s = np.concatenate(self.primary) if self.primary else np.zeros(0)
        qs = np.quantile(s, [0.0, 0.5, 0.9, 0.99, 1.0]).tolist() if s.size else [0.0] * 5
        return {"model": model.metadata(), "filename": filename, "n_records": self.n_records,
                "n_anomalies": self.n_anomalies,
                "anomaly_rate": self.n_anomalies / self.n_records if self.n_records else 0.0,
                "score_quantiles": dict(zip(QUANTILE_NAMES, qs, strict=True)),
                "ignored_columns": self.ignored}


class _Writer:
    """Appends scored chunks to a temporary file in the input's format."""

    def __init__(self, fmt: str, folder: str | None):
        fd, name = tempfile.mkstemp(prefix="scored-", suffix=f".{fmt}", dir=folder)
        os.close(fd)
        self.path, self.fmt = Path(name), fmt
        self._parquet: pq.ParquetWriter | None = None
        self._first = True

    def write(self, df: pd.DataFrame, name: str) -> None:
        if self.fmt == "csv":
            df.to_csv(self.path, mode="w" if self._first else "a", header=self._first,
                      index=False)
        else:
            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            elif table.schema != self._parquet.schema:
                try:
                    table = table.cast(self._parquet.schema)
                except (pa.ArrowException, ValueError) as e:
                    raise DataError(f"{name}: a column changes type between row groups: "
                                     f"{_first_line(e)}") from None
            self._parquet.write_table(table)
        self._first = False

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()


def score_file(model: ServedModel, f: BinaryIO, filename: str, fmt: str, chunk_rows: int,
               summary: bool = False, out_dir: str | None = None,
               on_chunk: Any = None) -> FileResult:
    """Score an uploaded table chunk by chunk.

    Args:
        model: the served model.
        f: the upload, seekable.
        filename: its name, for messages.
        fmt: 'csv' or 'parquet'.
        chunk_rows: rows read and scored at a time.
        summary: count only; write no output file.
        out_dir: folder for the output file (default: the system's temporary folder).
        on_chunk: called with (scores (n,), n_flagged) after each chunk (metrics).

    Returns:
        the output file (input columns, then the score columns) and counts. The caller
        deletes the file once sent.
    """
    chunks = _csv_chunks(f, chunk_rows, filename) if fmt == "csv" else \
        _parquet_chunks(f, chunk_rows, filename)
    writer = None if summary else _Writer(fmt, out_dir)
    result = FileResult(path=writer.path if writer else None)
    columns = model.inputs.columns
    try:
        for chunk in chunks:
            chunk.columns = [str(c) for c in chunk.columns]
            ignored = sorted(set(chunk.columns) - set(columns))
            try:
                scores = model.detector.score(chunk, source=filename)
            except DataError as e:  # records counted over the whole file, not the chunk
                raise e.located(offset=result.n_records) from None
            clash = sorted(set(chunk.columns) & set(scores.columns))
            if clash and writer:
                raise DataError("has the name of an output column; rename it",
                                source=filename, column=clash[0])
            flags = scores["is_anomaly"].to_numpy()
            result.primary.append(scores["score"].to_numpy())
            result.n_records += len(chunk)
            result.n_anomalies += int(flags.sum())
            result.ignored = sorted(set(result.ignored) | set(ignored))
            if on_chunk:
                on_chunk(result.primary[-1], int(flags.sum()))
            if writer:
                writer.write(pd.concat([chunk.reset_index(drop=True), scores], axis=1), filename)
        if result.n_records == 0:
            raise DataError(f"{filename}: no rows (only a header?)")
    except BaseException:
        if writer:
            writer.close()
            writer.path.unlink(missing_ok=True)
        raise
    if writer:
        writer.close()
    return result


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
