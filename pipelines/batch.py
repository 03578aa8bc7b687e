"""Batch scoring: stream CSV/Parquet files through a registered model into scored files.

One job = one model and one input path or glob. Every input and output is checked (files exist,
columns match the model, outputs writable) before any row is scored; then each input is read in
chunks, scored, and written to a temporary file renamed over the output at the end. The job
logs one MLflow run in the ``batch-scoring`` experiment.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa

from pipelines import batch_images
from pipelines.batch_images import is_image_input
from pipelines.batch_io import AtomicTableWriter, OutputError, RejectsWriter, TableReader
from pipelines.batch_model import BatchModel, load_batch_model, result_arrays
from pipelines.batch_options import ScoreOptions
from pipelines.data import table_format
from pipelines.tracking import ensure_experiment, use_tracking_uri
from training.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EXPERIMENT = "batch-scoring"
QUANTILES = (0.5, 0.9, 0.99)
_SAMPLE = 100_000
_LOG_EVERY_S = 10.0


@dataclass
class InputResult:
    """What scoring one input produced."""

    input: str
    output: str
    rows: int = 0
    rejected: int = 0
    anomalies: int = 0
    seconds: float = 0.0
    skipped: bool = False
    rejects_file: str | None = None


@dataclass
class BatchResult:
    """What a scoring job produced, over every input."""

    run_id: str | None
    model_name: str
    model_version: str
    inputs: list[InputResult] = field(default_factory=list)
    seconds: float = 0.0
    quantiles: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Rows scored and written."""
        return sum(r.rows for r in self.inputs)

    @property
    def anomalies(self) -> int:
        """Rows flagged ``is_anomaly``."""
        return sum(r.anomalies for r in self.inputs)

    @property
    def rejected(self) -> int:
        """Malformed rows skipped."""
        return sum(r.rejected for r in self.inputs)


class ScoreSample:
    """A fixed-size uniform sample of scores (seeded), for quantiles in flat memory."""

    def __init__(self, size: int = _SAMPLE, seed: int = 0):
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._keys = np.zeros(0)
        self._values = np.zeros(0)

    def add(self, values: np.ndarray) -> None:
        """Offer a chunk of scores."""
        keys = np.concatenate([self._keys, self._rng.random(len(values))])
        vals = np.concatenate([self._values, np.asarray(values, dtype=np.float64)])
        if len(keys) > self.size:
            top = np.argpartition(keys, self.size)[: self.size]
            keys, vals = keys[top], vals[top]
        self._keys, self._values = keys, vals

    def quantiles(self, qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
        """``{"score_p50": ..., "score_max": ...}``; exact up to ``size`` scores."""
        if not len(self._values):
            return {}
        out = {f"score_p{round(q * 100)}": float(np.quantile(self._values, q)) for q in qs}
        out["score_max"] = float(self._values.max())
        return out


# -- planning ----------------------------------------------------------------------------------
def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def expand_inputs(pattern: str) -> list[Path]:
    """The files a path or glob names, sorted; :class:`DataError` when there are none."""
    if not _is_glob(pattern):
        return [Path(pattern)]
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise DataError(f"{pattern}: no files match")
    return paths


def output_for(template: str, source: Path, when: datetime, many: bool) -> Path:
    """Where the scores of ``source`` go.

    ``template`` may hold ``{stem}`` (input name without suffix), ``{name}``, ``{date}``
    (YYYY-MM-DD), ``{time}`` (HHMMSS) and ``{datetime}``. Without ``{stem}``/``{name}``, several
    inputs (or a template ending in ``/`` or naming a folder) write ``FOLDER/<stem>.parquet``.
    """
    fields = {"stem": source.stem, "name": source.name, "date": when.strftime("%Y-%m-%d"),
              "time": when.strftime("%H%M%S"), "datetime": when.strftime("%Y-%m-%dT%H%M%S")}
    try:
        text = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"output {template!r}: unknown placeholder {e}; use {{stem}}, "
                          "{name}, {date}, {time} or {datetime}") from None
    per_input = "{stem}" in template or "{name}" in template
    if not per_input and (many or template.endswith(("/", "\\")) or Path(text).is_dir()):
        return Path(text) / f"{source.stem}.parquet"
    return Path(text)


def plan(opts: ScoreOptions) -> list[tuple[Path, Path]]:
    """Pairs (input, output) of a job; two inputs never share an output."""
    when = opts.run_time or datetime.now()
    if is_image_input(opts.input):  # images: the folder or glob is one input, one output table
        src = Path(opts.input)
        out = output_for(opts.output, src, when, False)
        table_format(out)
        return [(src, out)]
    inputs = expand_inputs(opts.input)
    many = _is_glob(opts.input)
    pairs = [(src, output_for(opts.output, src, when, many)) for src in inputs]
    seen: dict[Path, Path] = {}
    for src, out in pairs:
        table_format(out)
        if out.resolve() in seen:
            raise ConfigError(f"output {opts.output!r}: {seen[out.resolve()]} and {src} would "
                              f"both write {out}; give each input its own output with "
                              "{stem} or {name}")
        if out.resolve() == src.resolve():
            raise ConfigError(f"{out}: the output would overwrite its own input")
        seen[out.resolve()] = src
    return pairs


def _prepare_output(out: Path) -> None:
    """Create the output's folder and check it is writable, before anything is scored."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.probe-"):
            pass
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            raise  # the environment's fault, not the caller's
        raise OutputError(f"{out}: cannot write to {out.parent} "
                          f"({e.strerror or type(e).__name__}); choose a writable --output"
                          ) from None
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name ending .parquet or .csv")


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
    reader = TableReader(src, opts.chunk_rows, model.numeric_columns)
    missing = [c for c in model.input_columns if c not in reader.columns]
    if missing:
        raise DataError(f"{src}: missing column(s) {missing}; the model expects "
                        f"{model.input_columns}; the file has {reader.columns}")
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
    _prepare_output(out)
    schema = pa.schema([reader.schema.field(c) for c in keep] + list(scores))
    return _Prepared(src, out, reader, keep, schema)


def _progress(total: int | None, desc: str):
    """A tqdm bar with rows/s on an interactive terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False)


def score_file(model: BatchModel, job: _Prepared, on_error: str, sample: ScoreSample
               ) -> InputResult:
    """Score one prepared input into its output; all or nothing."""
    res = InputResult(str(job.src), str(job.out))
    read_cols = list(dict.fromkeys(job.keep + model.input_columns))
    n_keep = len(job.keep)
    start = last_log = time.perf_counter()
    rejects = RejectsWriter(job.out)
    bar = _progress(job.reader.num_rows, job.src.name)
    try:
        with AtomicTableWriter(job.out, job.schema) as writer:
            for chunk in job.reader.chunks(read_cols):
                if chunk.rejects:
                    if on_error == "fail":
                        r = chunk.rejects[0]
                        raise DataError(f"{job.src}: record {r.record}: {r.reason}; fix the row "
                                        "or rerun with --on-error skip")
                    rejects.write(chunk.rejects)
                    log.warning("%s: skipped %d malformed row(s), first: record %d: %s",
                                job.src, len(chunk.rejects), chunk.rejects[0].record,
                                chunk.rejects[0].reason)
                if chunk.batch.num_rows:
                    writer.write(_scored_batch(model, chunk.batch, job, n_keep, sample, res))
                if bar is not None:
                    bar.update(chunk.batch.num_rows + len(chunk.rejects))
                elif time.perf_counter() - last_log > _LOG_EVERY_S:
                    last_log = time.perf_counter()
                    log.info("%s: %d rows scored (%.0f rows/s)", job.src, res.rows,
                             res.rows / (last_log - start))
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


def _scored_batch(model: BatchModel, batch: pa.RecordBatch, job: _Prepared, n_keep: int,
                  sample: ScoreSample, res: InputResult) -> pa.RecordBatch:
    """Input columns to keep + the detector's scores + model name and version."""
    frame = batch.select(model.input_columns).to_pandas()
    scores = model.detector.score(frame, source=str(job.src))
    n = batch.num_rows
    arrays = [batch.column(batch.schema.get_field_index(c)) for c in job.keep]
    arrays += result_arrays(model, list(job.schema)[n_keep:], scores)
    res.rows += n
    res.anomalies += int(scores["is_anomaly"].sum())
    sample.add(scores["score"].to_numpy())
    return pa.RecordBatch.from_arrays(arrays, schema=job.schema)


# -- the job -----------------------------------------------------------------------------------
def run_batch(opts: ScoreOptions) -> BatchResult:
    """Run one scoring job end to end and log it to MLflow."""
    opts.check()
    if opts.engine == "spark" and is_image_input(opts.input):
        raise ConfigError(f"{opts.input}: --engine spark scores tables; score images with "
                          "--engine local")
    if opts.engine == "spark":
        from pipelines.spark_batch import run_spark

        return run_spark(opts)
    pairs = plan(opts)
    use_tracking_uri(opts.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="anomaly-score-") as tmp:
        model = load_batch_model(opts.model, Path(tmp))
        todo, done = [], []
        for src, out in pairs:
            if opts.resume and out.exists():
                log.info("%s: already scored into %s, skipping (--resume)", src, out)
                done.append(InputResult(str(src), str(out), skipped=True))
            else:
                prepare = batch_images.prepare if model.is_image else _prepare
                todo.append(prepare(model, src, out, opts))  # every check before any scoring
        result = BatchResult(None, model.name, model.version, inputs=done)
        ensure_experiment(EXPERIMENT)
        start = time.perf_counter()
        sample = ScoreSample()
        with mlflow.start_run(run_name=f"score-{model.name.rsplit('/', 1)[-1]}") as run:
            result.run_id = run.info.run_id
            _log_params(opts, model, pairs)
            try:
                score = batch_images.score_images if model.is_image else score_file
                for job in todo:
                    result.inputs.append(score(model, job, opts.on_error, sample))
            except BaseException as e:
                mlflow.set_tag("error", str(e).splitlines()[0][:500] if str(e) else repr(e))
                raise
            result.seconds = time.perf_counter() - start
            result.quantiles = sample.quantiles()
            log_metrics(result)
    return result


def _log_params(opts: ScoreOptions, model: BatchModel, pairs: list[tuple[Path, Path]]) -> None:
    mlflow.set_tags({"model_name": model.name, "model_version": model.version,
                     "engine": opts.engine})
    mlflow.log_params({
        "model_uri": opts.model, "model_name": model.name, "model_version": model.version,
        "input": opts.input[:500], "output": opts.output[:500], "n_inputs": len(pairs),
        "on_error": opts.on_error, "engine": opts.engine, "chunk_rows": opts.chunk_rows,
        "keep": ",".join(opts.keep or [])[:500], "resume": opts.resume,
    })
    mlflow.log_text("\n".join(str(src) for src, _ in pairs), "inputs.txt")


def log_metrics(result: BatchResult) -> None:
    """Rows, anomalies, anomaly rate, score quantiles, seconds and rows/s of a finished job."""
    scored = [r for r in result.inputs if not r.skipped]
    metrics = {
        "rows": result.rows, "anomalies": result.anomalies, "rows_rejected": result.rejected,
        "anomaly_rate": result.anomalies / result.rows if result.rows else 0.0,
        "inputs_scored": len(scored), "inputs_skipped": len(result.inputs) - len(scored),
        "seconds": result.seconds,
        "rows_per_second": result.rows / result.seconds if result.seconds > 0 else 0.0,
        **result.quantiles,
    }
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_text(json.dumps([r.__dict__ for r in result.inputs], indent=1), "summary.json")
