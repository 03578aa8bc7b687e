"""Streaming table I/O for batch scoring: chunked readers and all-or-nothing writers.

Readers yield fixed-schema chunks of at most ``chunk_rows`` rows, so memory stays flat however
large the file is. Every row carries its record number (0-based, header excluded, malformed CSV
lines included in the count) so an error can name it. A value that cannot be converted to its
column's type, or a non-finite number in a model feature, marks the row as malformed; a CSV line
with the wrong number of fields is malformed too.

Writers write to a hidden temporary file in the output's folder and rename it over the output
only when everything succeeded, so a killed job leaves no half-written output behind.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.data.tables import (
    CHUNK_BYTES,
    check_columns,
    dictionary_columns,
    not_utf8,
    table_format,
)
from training.errors import DataError, OutputError, first_line, shown
from training.preprocessing.tabular import EMPTY_RECORD

_CHUNK_BYTES = CHUNK_BYTES  # a chunk's bytes at most (a module name: tests shrink it)

log = logging.getLogger(__name__)

_CSV_BLOCK_BYTES = 4 << 20
_PARTIAL = ".partial-"
# pandas' default na_values: what training reads as missing, read as missing here too
# (pyarrow's own list lacks 'None' and '<NA>').
NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


@dataclass
class Reject:
    """One malformed input row."""

    record: int
    reason: str  # what is wrong, without the location
    row: str
    column: str | None = None

    @property
    def message(self) -> str:
        """The reason with its column, as the rejects file and logs show it."""
        return f"column '{self.column}': {self.reason}" if self.column else self.reason

    def error(self, source: str, fix: str = "") -> DataError:
        """This reject as the error that fails a job."""
        return DataError(self.reason + fix, source=source, record=self.record, column=self.column)


@dataclass
class Chunk:
    """Up to ``chunk_rows`` converted rows, with their record numbers and the rejects among them.

    ``batch`` holds every well-formed row of the chunk (malformed ones already removed);
    ``records`` (len(batch),) their record numbers; ``rejects`` the malformed rows.
    """

    batch: pa.RecordBatch
    records: np.ndarray
    rejects: list[Reject] = field(default_factory=list)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _csv_error(path: Path, e: Exception, where: str = "") -> DataError:
    """pyarrow's CSV error as the caller's: a record longer than a block named as such."""
    if "straddl" in str(e):  # pyarrow's words for a record that does not fit in a block
        return DataError(f"{path}: a record longer than {_CSV_BLOCK_BYTES / 2**20:g} MiB{where}; "
                         "batch jobs read CSV records up to that size: shorten its long field, "
                         "or convert the file to Parquet")
    return DataError(f"{path}: cannot read as csv: {first_line(e, 1000)}")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _conform(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray | None]:
    """Cast ``arr`` to ``target``; values that do not convert become null and are flagged.

    Returns:
        (array of type ``target``, (n,) bool mask of failed values, or None when all converted).
    """
    if arr.type == target:
        return arr, None
    if pa.types.is_boolean(arr.type) and _is_number(target):  # no number: as the detector
        return pa.nulls(len(arr), target), arr.is_valid().to_numpy(zero_copy_only=False)
    # integers past 2**53 lose digits as float64, as training's pandas reads them
    safe = not (pa.types.is_integer(arr.type) and pa.types.is_floating(target))
    cast = _cast(arr, target, safe)
    if cast is None and _is_text(arr.type) and _is_number(target):
        arr = pc.utf8_trim_whitespace(arr)  # ' 3.363' is a number, as pandas reads it
        cast = _cast(arr, target)
    if cast is not None:
        return cast, None
    # Slow path, only for chunks that hold a bad value: convert one value at a time.
    values, bad = [], np.zeros(len(arr), dtype=bool)
    for i, v in enumerate(arr):
        one = _cast(pa.array([v.as_py()], type=arr.type), target) if v.is_valid else None
        values.append(None if one is None else one[0].as_py())
        bad[i] = v.is_valid and one is None
    return pa.array(values, type=target), bad


def _cast(arr: pa.Array, target: pa.DataType, safe: bool = True) -> pa.Array | None:
    """``arr`` cast to ``target``, or None when a value does not convert."""
    try:
        return pc.cast(arr, target, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


class TableReader:
    """Reads a CSV or Parquet file in chunks of a fixed schema.

    Args:
        path: the input file.
        chunk_rows: most rows per chunk.
        numeric_columns: model features that must be finite numbers (integers widen to float64).
        text_columns: model columns a CSV holds as text whatever they look like (categories:
            ``007`` stays ``007``, in every chunk).
        feature_columns: the columns a table model learns from: a row missing every one of
            them is malformed (nothing to score). Empty: no such check (series).

    The schema is known after construction (``schema``, ``columns``), before any row is read
    beyond the first CSV block, so a mismatch with the model fails early.
    """

    def __init__(self, path: Path, chunk_rows: int, numeric_columns: list[str],
                 text_columns: list[str] = (), feature_columns: list[str] = ()):
        self.path = path
        self.format = table_format(path)
        self.chunk_rows = chunk_rows
        if not path.exists():
            raise DataError(f"{path}: file not found")
        if path.is_dir():
            raise DataError(f"{path}: is a directory, expected a .csv or .parquet file")
        try:
            if self.format == "parquet":
                self._pq = pq.ParquetFile(path)
                source = self._pq.schema_arrow
                self.num_rows: int | None = self._pq.metadata.num_rows
            else:
                source = self._infer_csv_schema()
                self.num_rows = None
        except (pa.ArrowInvalid, OSError) as e:
            if self.format == "csv":
                raise _csv_error(path, e) from None
            raise DataError(f"{path}: cannot read as {self.format}: "
                            f"{first_line(e, 1000)}") from None
        try:
            names = source.names
        except UnicodeDecodeError:  # a CSV header that is not UTF-8
            self._raise_if_not_utf8()
            raise DataError(f"{path}: the header is not UTF-8 text; save the file as UTF-8"
                            ) from None
        check_columns(names, str(path))
        if self.format == "csv" and any(pa.types.is_binary(f.type) for f in source):
            self._raise_if_not_utf8()  # pyarrow reads text that is not UTF-8 as binary
        # An unnamed CSV header field (a frame's index written by to_csv) is named as pandas
        # names it; the file's own names are kept for reading it.
        read_as = [(name or f"Unnamed: {i}") if self.format == "csv" else name
                   for i, name in enumerate(names)]
        check_columns(read_as, str(path))
        self._file_names = dict(zip(read_as, names, strict=True))
        fields = []
        for f, name in zip(source, read_as, strict=True):
            t = f.type
            if pa.types.is_null(t) or pa.types.is_dictionary(t):
                t = pa.string()
            if name in numeric_columns and (_is_number(t) or _is_text(t)
                                            or pa.types.is_boolean(t)):
                t = pa.float64()  # features are read as numbers whatever the file stored
            elif self.format == "csv" and name in text_columns:
                t = pa.string()
            fields.append(pa.field(str(name), t))
        self.schema = pa.schema(fields)
        self.numeric_columns = [c for c in numeric_columns if c in self.schema.names]
        self.feature_columns = set(feature_columns)

    @property
    def columns(self) -> list[str]:
        """Column names in file order."""
        return list(self.schema.names)

    def _raise_if_not_utf8(self) -> None:
        with open(self.path, "rb") as f:
            error = not_utf8(f, str(self.path))
        if error is not None:
            raise error from None

    def _infer_csv_schema(self) -> pa.Schema:
        """Column names and types as pyarrow infers them from the first block."""
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(null_values=NA_VALUES))
        try:
            return reader.schema
        finally:
            reader.close()

    def chunks(self, columns: list[str]) -> Iterator[Chunk]:
        """Yield chunks holding ``columns`` (a subset of :attr:`columns`) in file order."""
        target = pa.schema([self.schema.field(c) for c in columns])
        if self.format == "parquet":
            yield from self._parquet_chunks(target)
        else:
            yield from self._csv_chunks(target)

    def _parquet_chunks(self, target: pa.Schema) -> Iterator[Chunk]:
        start = 0
        rows = _rows_within(self._pq.metadata, set(target.names), self.chunk_rows)
        for batch in self._pq.iter_batches(batch_size=rows, columns=target.names,
                                           use_threads=False):
            records = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            yield self._checked(batch, target, records)

    def _csv_chunks(self, target: pa.Schema) -> Iterator[Chunk]:
        invalid: list[Reject] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            # pyarrow counts lines from 1 with the header on line 1.
            record = (row.number - 2) if row.number is not None else -1
            invalid.append(Reject(record, f"expected {row.expected_columns} fields, got "
                                  f"{row.actual_columns}", row.text))
            return "skip"

        in_file = [self._file_names[n] for n in target.names]
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=in_file,
                column_types={n: pa.string() for n in in_file},
                null_values=NA_VALUES, strings_can_be_null=True),
        )
        known_invalid: list[int] = []  # sorted record numbers of malformed lines seen so far
        good = 0  # well-formed lines read so far
        try:
            for batch in self._rebatched(reader):
                batch = pa.RecordBatch.from_arrays(batch.columns, names=target.names)
                new = list(invalid)
                invalid.clear()
                known_invalid.extend(r.record for r in new)
                known_invalid.sort()
                records = _record_numbers(good, batch.num_rows, known_invalid)
                good += batch.num_rows
                chunk = self._checked(batch, target, records)
                chunk.rejects = sorted(new + chunk.rejects, key=lambda r: r.record)
                yield chunk
            if invalid:  # malformed lines after the last good one
                yield Chunk(pa.RecordBatch.from_pylist([], schema=target),
                            np.zeros(0, dtype=np.int64), list(invalid))
        except pa.ArrowInvalid as e:
            self._raise_if_not_utf8()
            where = f", after its first {good} records" if good else ""
            raise _csv_error(self.path, e, where) from None
        finally:
            reader.close()

    def _rebatched(self, reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
        """CSV blocks are sized in bytes; regroup them into batches of ``chunk_rows`` rows."""
        buf: list[pa.RecordBatch] = []
        rows = size = 0
        for batch in reader:
            buf.append(batch)
            rows += batch.num_rows
            size += batch.nbytes
            while rows >= self.chunk_rows:
                table = pa.Table.from_batches(buf)
                yield table.slice(0, self.chunk_rows).combine_chunks().to_batches()[0]
                rest = table.slice(self.chunk_rows)
                rows = rest.num_rows
                buf = rest.combine_chunks().to_batches() if rows else []
                size = sum(b.nbytes for b in buf)
            if rows and size >= _CHUNK_BYTES:  # wide rows: fewer of them per chunk
                yield pa.Table.from_batches(buf).combine_chunks().to_batches()[0]
                buf, rows, size = [], 0, 0
        if rows:
            yield pa.Table.from_batches(buf).combine_chunks().to_batches()[0]

    def _checked(self, batch: pa.RecordBatch, target: pa.Schema, records: np.ndarray) -> Chunk:
        """Convert to ``target``, drop and report rows with a bad value."""
        arrays, bad_any = [], np.zeros(batch.num_rows, dtype=bool)
        reasons: dict[int, tuple[str | None, str]] = {}
        empty = np.full(batch.num_rows, bool(self.feature_columns))  # no feature value yet
        for f in target:
            raw = batch.column(batch.schema.get_field_index(f.name))
            arr, bad = _conform(raw, f.type)
            if bad is not None:
                for i in np.flatnonzero(bad & ~bad_any):
                    reasons[int(i)] = (f.name, f"expected {f.type}, "
                                       f"got {shown(raw[int(i)].as_py())}")
                bad_any |= bad
            if f.name in self.numeric_columns:
                values = arr.to_numpy(zero_copy_only=False)
                inf = np.isinf(np.asarray(values, dtype=np.float64))
                for i in np.flatnonzero(inf & ~bad_any):
                    reasons[int(i)] = (f.name, f"non-finite number {shown(values[int(i)])}")
                bad_any |= inf
            if f.name in self.feature_columns:
                empty &= pc.is_null(arr, nan_is_null=True).to_numpy(zero_copy_only=False)
            arrays.append(arr)
        for i in np.flatnonzero(empty & ~bad_any):
            reasons[int(i)] = (None, EMPTY_RECORD)
        bad_any |= empty
        converted = pa.RecordBatch.from_arrays(arrays, schema=target)
        if not bad_any.any():
            return Chunk(converted, records)
        rejects = [Reject(int(records[i]), reasons[int(i)][1], _row_text(batch, int(i)),
                          reasons[int(i)][0])
                   for i in np.flatnonzero(bad_any)]
        keep = pa.array(~bad_any)
        return Chunk(converted.filter(keep), records[~bad_any], rejects)


def _rows_within(meta: pq.FileMetaData, names: set[str], most: int) -> int:
    """Rows per chunk of a Parquet file: at most ``most``, and about ``_CHUNK_BYTES`` of the
    columns ``names`` once decoded (by the widest row group's uncompressed sizes)."""
    per_row = 0.0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        size = sum(group.column(i).total_uncompressed_size for i in range(group.num_columns)
                   if group.column(i).path_in_schema.split(".")[0] in names)
        per_row = max(per_row, size / max(group.num_rows, 1))
    return max(1, min(most, int(_CHUNK_BYTES / per_row))) if per_row else most


def _record_numbers(first_good: int, n: int, invalid_sorted: list[int]) -> np.ndarray:
    """Record numbers of well-formed rows ``first_good .. first_good+n-1`` given the sorted
    record numbers of the malformed lines skipped around them."""
    inv = np.asarray(invalid_sorted, dtype=np.int64)
    records = np.arange(first_good, first_good + n, dtype=np.int64)
    # A malformed record before the first candidate shifts every row of the chunk.
    records += int(np.searchsorted(inv, first_good, side="left"))
    for s in inv[inv >= records[0]] if n else []:
        records[records >= s] += 1
    return records


def _row_text(batch: pa.RecordBatch, i: int) -> str:
    """A malformed row as JSON, for the rejects file."""
    return json.dumps(batch.slice(i, 1).to_pylist()[0], default=str)


class AtomicTableWriter:
    """Writes record batches to ``path`` (Parquet or CSV) through a temporary file.

    Use as a context manager: on a clean exit the file is renamed over ``path``; on an error it
    is deleted. A process killed mid-way leaves only a hidden ``.NAME.partial-PID`` file, which
    the next writer of the same output removes.
    """

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.format = table_format(path)
        self.schema = schema
        self.tmp = path.with_name(f".{path.name}{_PARTIAL}{os.getpid()}")

    def __enter__(self) -> AtomicTableWriter:
        remove_stale_partials(self.path)
        try:
            if self.format == "parquet":
                self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="snappy",
                                                use_dictionary=dictionary_columns(self.schema))
            else:
                self._writer = pacsv.CSVWriter(self.tmp, self.schema)
        except PermissionError as e:
            raise OutputError(f"{self.path}: cannot write here ({e.strerror}); choose a "
                              "writable --output") from None
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        """Append one batch (a Parquet row group)."""
        self._writer.write_batch(batch)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.close()
        finally:
            if exc_type is None:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


class RejectsWriter:
    """Streams malformed rows to ``<output stem>.rejects.csv`` (record, reason, row).

    Nothing is written when there are no rejects; a rejects file left from an earlier run of
    the same output is replaced or removed.
    """

    def __init__(self, output: Path):
        self.path = output.with_name(output.name.rsplit(".", 1)[0] + ".rejects.csv")
        self.tmp = self.path.with_name(f".{self.path.name}{_PARTIAL}{os.getpid()}")
        self.count = 0
        self._file = None

    def write(self, rejects: list[Reject]) -> None:
        """Append rejects."""
        if not rejects:
            return
        if self._file is None:
            self._file = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._csv = csv.writer(self._file)
            self._csv.writerow(["record", "reason", "row"])
        for r in rejects:
            self._csv.writerow([r.record, r.message, r.row])
        self.count += len(rejects)

    def commit(self) -> None:
        """Publish the rejects file (or remove a stale one when there were none)."""
        if self._file is None:
            self.path.unlink(missing_ok=True)
            return
        self._file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop what was written."""
        if self._file is not None:
            self._file.close()
            self.tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: Path) -> None:
    """Delete temporary files of ``path`` left by killed writers (whose process is gone)."""
    prefix = f".{path.name}{_PARTIAL}"
    if not path.parent.is_dir():
        return
    for p in path.parent.glob(f"{prefix}*"):
        pid = p.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            log.info("removing %s left by an interrupted job", p)
            p.unlink(missing_ok=True)
