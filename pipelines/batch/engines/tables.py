"""The local engine for tables: stream a CSV/Parquet file through the detector in chunks.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipelines.batch.io import AtomicTableWriter, Reject, RejectsWriter, TableReader
from pipelines.batch.model import BatchModel, result_arrays
from pipelines.batch.options import ScoreOptions
from pipelines.batch.plan import _prepare_output
from pipelines.batch.results import InputResult, ScoreSample
from training.data.tables import check_types
from training.detector.scores import scored_primary
from training.errors import DataError

if TYPE_CHECKING:
    from training.detector.series import SeriesStream

log = logging.getLogger(__name__)


_LOG_EVERY_S = 10.0


# -- scoring -----------------------------------------------------------------------------------
@dataclass
class _Prepared:
    src: Path
    out: Path
    reader: TableReader
    keep: list[str]
    schema: pa.Schema


def _prepare(model: BatchModel, src: Path, out: Path, opts: ScoreOptions) -> _Prepared:
    """Open ``src``, check its columns against the model and ``--keep``, check ``out``."""
    reader = TableReader(src, opts.chunk_rows, model.numeric_columns, model.text_columns,
                         model.feature_columns)
    missing = [c for c in model.input_columns if c not in reader.columns]
    if missing:
        raise DataError(f"{src}: missing column(s) {missing}; the model expects "
                        f"{model.input_columns}; the file has {reader.columns}")
    check_types(reader.schema, str(src), model.input_columns)
    keep = reader.columns if opts.keep is None else list(opts.keep)
    unknown = [c for c in keep if c not in reader.columns]
    if unknown:
        raise DataError(f"{src}: --keep column(s) {unknown} not in the file; "
                        f"its columns are {reader.columns}")
    scores = model.output_schema()
    clash = [c for c in keep if c in scores.names]
    if clash:
        raise DataError(f"{src}: column(s) {clash} clash with the score columns; choose the "
                        "columns to carry with --keep")
    out = _prepare_output(out)
    schema = pa.schema([reader.schema.field(c) for c in keep] + list(scores))
    return _Prepared(src, out, reader, keep, schema)


def _progress(total: int | None, desc: str):
    """A tqdm bar with rows/s on an interactive terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False)


def score_file(model: BatchModel, job: _Prepared, on_error: str, sample: ScoreSample,
               before_commit: Callable[[], object] | None = None) -> InputResult:
    """Score one prepared input into its output; all or nothing.

    ``before_commit`` runs once every row is scored, before the output and its rejects file
    are renamed into place; what it raises leaves neither.
    """
    res = InputResult(str(job.src), str(job.out))
    read_cols = list(dict.fromkeys(job.keep + model.input_columns))
    n_keep = len(job.keep)
    start = last_log = time.perf_counter()
    rejects = RejectsWriter(job.out)
    bar = _progress(job.reader.num_rows, job.src.name)
    # A series carries its last window - 1 rows from chunk to chunk: one pass's scores.
    stream = model.detector.stream() if model.is_sequence else None
    try:
        with AtomicTableWriter(job.out, job.schema) as writer:
            for chunk in job.reader.chunks(read_cols):
                if chunk.rejects:
                    if on_error == "fail":
                        raise chunk.rejects[0].error(
                            str(job.src), "; fix the row or rerun with --on-error skip")
                    rejects.write(chunk.rejects)
                    log.warning("%s: skipped %d malformed row(s), first: record %d: %s",
                                job.src, len(chunk.rejects), chunk.rejects[0].record,
                                chunk.rejects[0].message)
                if chunk.batch.num_rows:
                    writer.write(_scored_skipping(model, chunk, job, n_keep, sample, res,
                                                  stream, on_error, rejects))
                if bar is not None:
                    bar.update(chunk.batch.num_rows + len(chunk.rejects))
                elif time.perf_counter() - last_log > _LOG_EVERY_S:
                    last_log = time.perf_counter()
                    log.info("%s: %d rows scored (%.0f rows/s)", job.src, res.rows,
                             res.rows / (last_log - start))
            if before_commit is not None:
                before_commit()
            rejects.commit()
    except BaseException:
        rejects.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    res.rejected = rejects.count
    res.rejects_file = str(rejects.path) if rejects.count else None
    res.seconds = time.perf_counter() - start
    log.info("%s -> %s: %d rows in %.1fs (%.0f rows/s), %d anomalies%s", job.src, job.out,
             res.rows, res.seconds, res.rows / max(res.seconds, 1e-9), res.anomalies,
             f", {res.rejected} malformed rows in {res.rejects_file}" if res.rejected else "")
    return res


# Rows of one chunk a job skips for values the model cannot score (they overflow its
# arithmetic), each found by one more pass over the chunk: past this many, the job fails.
_MAX_SKIPPED_PER_CHUNK = 100


def _scored_skipping(model: BatchModel, chunk, job: _Prepared, n_keep: int,
                     sample: ScoreSample, res: InputResult, stream: SeriesStream | None,
                     on_error: str, rejects: RejectsWriter) -> pa.RecordBatch:
    """:func:`_scored_batch` of a chunk's rows; with ``on_error="skip"``, a table row whose
    values the model cannot score is written to the rejects and the rest scored without it
    (a series' row cannot be left out of its windows: that fails the job either way)."""
    batch, records = chunk.batch, chunk.records
    for _ in range(_MAX_SKIPPED_PER_CHUNK + 1):
        try:
            return _scored_batch(model, batch, job, n_keep, sample, res, stream, records)
        except DataError as e:
            if on_error != "skip" or stream is not None or e.record is None:
                raise
            i = int(np.flatnonzero(records == e.record)[0])
            row = ",".join(map(str, batch.slice(i, 1).to_pylist()[0].values()))
            rejects.write([Reject(record=e.record, reason=e.reason, row=row, column=e.column)])
            log.warning("%s: skipped record %d: %s", job.src, e.record, e.reason)
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[i] = False
            batch, records = batch.filter(pa.array(keep)), records[keep]
            if not batch.num_rows:  # every row of the chunk skipped
                return pa.RecordBatch.from_pylist([], schema=job.schema)
    raise DataError(f"more than {_MAX_SKIPPED_PER_CHUNK} records of one chunk cannot be "
                    "scored; check the input's units", source=str(job.src))


def _scored_batch(model: BatchModel, batch: pa.RecordBatch, job: _Prepared, n_keep: int,
                  sample: ScoreSample, res: InputResult, stream: SeriesStream | None = None,
                  records: np.ndarray | None = None) -> pa.RecordBatch:
    """Input columns to keep + the detector's scores + model name and version. ``records``:
    the rows' record numbers in the file (errors name those)."""
    frame = batch.select(model.input_columns).to_pandas()
    try:
        scores = (model.detector.score(frame, source=str(job.src)) if stream is None else
                  stream.push(frame, str(job.src))).reset_index(drop=True)
    except DataError as e:  # its record counted in the chunk: count it in the file
        if e.record is None or records is None or not 0 <= e.record < len(records):
            raise
        raise e.located(offset=int(records[e.record]) - e.record) from None
    n = batch.num_rows
    arrays = [batch.column(batch.schema.get_field_index(c)) for c in job.keep]
    arrays += result_arrays(model, list(job.schema)[n_keep:], scores)
    res.rows += n
    res.anomalies += int(scores["is_anomaly"].sum())
    sample.add(scored_primary(scores))
    return pa.RecordBatch.from_arrays(arrays, schema=job.schema)

