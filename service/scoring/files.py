"""Scoring uploaded CSV and Parquet files a chunk at a time.

The upload arrives spooled to a temporary file (never whole in memory); it is read
``chunk_rows`` rows at a time, each chunk scored in one pass and appended to a temporary output
file in the same format, which is then streamed back. A bad value anywhere fails the whole file
with an error naming its record (counted from 0 over the whole file) and column, before any
byte of the answer is sent.

What parsing will cost is bounded before parsing starts: the CSV header is read on its own
(at most ``max_header_bytes``), and so is a Parquet file's footer, so a file with too many
columns (beyond the model's own, ``max_file_columns``) is refused with a 413 in milliseconds;
a column named twice, or a model column of a list/struct/map/binary type, is a 422 naming it.
"""

from __future__ import annotations

import os
import re
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
from training.data.tables import (
    CHUNK_BYTES,
    check_columns,
    check_types,
    csv_header,
    dictionary_columns,
    not_utf8,
    read_csv,
)
from training.detector.scores import scored_primary
from training.errors import DataError, TooLargeError, UnsupportedMediaError

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


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may hold before it is parsed (see :class:`service.settings.Settings`)."""

    max_file_columns: int = 1_000  # besides the model's own columns
    max_header_bytes: int = 2**20

    @classmethod
    def of(cls, settings: Any) -> UploadLimits:
        return cls(settings.max_file_columns, settings.max_header_bytes)


def check_upload(model: ServedModel, f: BinaryIO, name: str, fmt: str,
                 limits: UploadLimits, output: bool = False,
                 keep: list[str] | None = None) -> None:
    """Refuse an upload from its header alone: too long a header or footer, too many columns
    (413), a column named twice or a model column of a nested type (422); with ``output`` (the
    upload is written back with its scores) also a ``keep`` column (default: every column)
    that is not in the file or of a type the output cannot hold. ``f`` is left at 0."""
    columns = model.inputs.columns
    most = len(columns) + limits.max_file_columns
    f.seek(0)
    if fmt == "csv":
        names = csv_header(f, name, limits.max_header_bytes)
    else:
        schema = _parquet_schema(f, name, limits.max_header_bytes)
        names = schema.names
    f.seek(0)
    if len(names) > most:
        raise TooLargeError(f"{name}: {len(names)} columns; at most {most} (the model's "
                            f"{len(columns)} and {limits.max_file_columns} more, "
                            "ANOMALY_MAX_FILE_COLUMNS)")
    check_columns(names, name)
    if output and keep is not None:
        unknown = [c for c in keep if c not in names]
        if unknown:
            raise DataError(f"{name}: keep column(s) {unknown} not in the file; it has "
                            f"{names[:20]}")
    if fmt == "parquet":
        check_types(schema, name, columns)
        if output:  # the other columns are written back as they came
            for f_ in schema:
                if (keep is None or f_.name in keep) and _holds_map(f_.type):
                    raise DataError(f"has type {f_.type}, which the scored file cannot hold: "
                                    "drop the column, or ask for a summary (?summary=true)",
                                    source=name, column=f_.name)


def _holds_map(t: pa.DataType) -> bool:
    """Whether an Arrow type is or holds a map (which pandas gives back as lists of pairs
    that Arrow cannot write as the map again)."""
    if pa.types.is_map(t):
        return True
    if pa.types.is_dictionary(t):
        return _holds_map(t.value_type)
    if pa.types.is_struct(t):
        return any(_holds_map(t.field(i).type) for i in range(t.num_fields))
    value = getattr(t, "value_type", None)
    return value is not None and _holds_map(value)


def _parquet_schema(f: BinaryIO, name: str, max_footer_bytes: int) -> pa.Schema:
    """The schema of a Parquet upload, its footer's length checked before it is parsed."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(size - 8, 0))
    tail = f.read(8)
    if size < 12 or tail[4:] != b"PAR1":
        raise DataError(f"{name}: cannot read as Parquet: not a Parquet file (no footer)")
    footer = int.from_bytes(tail[:4], "little")
    if footer > size - 12:  # a real footer lies between the leading and trailing "PAR1"
        raise DataError(f"{name}: cannot read as Parquet: not a Parquet file (its footer "
                        f"length, {footer} bytes, is past the file's {size} bytes)")
    if footer > max_footer_bytes:
        raise TooLargeError(f"{name}: a Parquet schema of {footer} bytes; at most "
                            f"{max_footer_bytes} (ANOMALY_MAX_HEADER_BYTES): send fewer columns")
    f.seek(0)
    try:
        return pq.ParquetFile(f).schema_arrow
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"{name}: cannot read as Parquet: {_first_line(e)}") from None


def scored_name(filename: str, fmt: str) -> str:
    """The answer's file name: the upload's own name without folders or unusual characters,
    then ``-scored``."""
    base = re.split(r"[\\/]", filename)[-1]
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", base.rsplit(".", 1)[0]).strip(" .") or "upload"
    return f"{stem[:100]}-scored.{fmt}"


def _csv_chunks(f: BinaryIO, rows: int, name: str, text_columns: list[str]
                ) -> Iterator[pd.DataFrame]:
    try:
        yield from read_csv(f, name, rows, text_columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty") from None
    except UnicodeDecodeError:
        raise (not_utf8(f, name) or DataError(f"{name}: not UTF-8 text; save the file as "
                                              "UTF-8")) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{name}: cannot read as CSV: {_first_line(e)}") from None


# A Parquet upload is decoded this many rows at a time, and they are gathered into a chunk of
# at most ``chunk_rows`` rows and about ``CHUNK_BYTES`` decoded: a few kilobytes of file can
# hold a long text repeated on every row (one dictionary entry), which only decoding reveals.
_PARQUET_BATCH_ROWS = 1024


def _parquet_chunks(f: BinaryIO, rows: int, name: str) -> Iterator[pd.DataFrame]:
    try:
        pf = pq.ParquetFile(f)
        batches: list[pa.RecordBatch] = []
        n = size = 0
        for batch in pf.iter_batches(batch_size=min(rows, _PARQUET_BATCH_ROWS)):
            batches.append(batch)
            n, size = n + batch.num_rows, size + batch.nbytes
            if n >= rows or size >= CHUNK_BYTES:
                yield pa.Table.from_batches(batches).to_pandas()
                batches, n, size = [], 0, 0
        if batches:
            yield pa.Table.from_batches(batches).to_pandas()
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
                self._parquet = pq.ParquetWriter(
                    self.path, table.schema, use_dictionary=dictionary_columns(table.schema))
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
               on_chunk: Any = None, limits: UploadLimits | None = None,
               keep: list[str] | None = None) -> FileResult:
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
        limits: what the header may hold, checked before parsing (default: the defaults of
            :class:`UploadLimits`).
        keep: the upload's columns written back beside the scores, in this order (default:
            every column).

    Returns:
        the output file (input columns, then the score columns) and counts. The caller
        deletes the file once sent.
    """
    check_upload(model, f, filename, fmt, limits or UploadLimits(), output=not summary,
                 keep=keep)
    if fmt == "csv":
        chunks = _csv_chunks(f, chunk_rows, filename, model.inputs.text_columns)
    else:
        chunks = _parquet_chunks(f, chunk_rows, filename)
    writer = None if summary else _Writer(fmt, out_dir)
    result = FileResult(path=writer.path if writer else None)
    columns = model.inputs.columns
    # A sequence model carries each series' last window - 1 rows from chunk to chunk.
    stream = model.detector.stream() if model.data_kind == "sequences" else None
    try:
        for chunk in chunks:
            chunk.columns = [str(c) for c in chunk.columns]
            ignored = sorted(set(chunk.columns) - set(columns))
            try:
                scores = (model.scorer.score(chunk, source=filename) if stream is None else
                          stream.push(chunk, filename)).reset_index(drop=True)
            except DataError as e:  # records counted over the whole file, not the chunk
                raise e.located(offset=result.n_records) from None
            carried = chunk if keep is None else chunk[keep]
            clash = sorted(set(carried.columns) & set(scores.columns))
            if clash and writer:
                raise DataError("has the name of an output column; rename it, or leave it out "
                                "of the columns carried back (keep=)", source=filename,
                                column=clash[0])
            flags = scores["is_anomaly"].to_numpy()
            result.primary.append(scored_primary(scores))
            result.n_records += len(chunk)
            result.n_anomalies += int(flags.sum())
            result.ignored = sorted(set(result.ignored) | set(ignored))
            if on_chunk:
                on_chunk(result.primary[-1], int(flags.sum()))
            if writer:
                writer.write(pd.concat([carried.reset_index(drop=True), scores], axis=1),
                             filename)
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
