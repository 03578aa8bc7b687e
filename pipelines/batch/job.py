"""Batch scoring: stream CSV/Parquet files (or images) through a registered model into scored files.

One job = one model and one input path or glob. Every input and output is checked (files exist,
columns match the model, outputs writable) before any row is scored; then each input is read in
chunks, scored, and written to a temporary file renamed over the output at the end. The job
logs one MLflow run in the ``batch-scoring`` experiment.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import mlflow

from pipelines.batch.engines import images as batch_images
from pipelines.batch.engines.tables import _prepare, score_file
from pipelines.batch.model import BatchModel, load_batch_model
from pipelines.batch.options import ScoreOptions
from pipelines.batch.plan import is_image_input, plan
from pipelines.batch.results import EXPERIMENT, BatchResult, InputResult, ScoreSample, log_metrics
from pipelines.registry.tracking import ensure_experiment, use_tracking_uri
from training.errors import ConfigError

log = logging.getLogger(__name__)


# -- the job -----------------------------------------------------------------------------------
def run_batch(opts: ScoreOptions) -> BatchResult:
    """Run one scoring job end to end and log it to MLflow."""
    opts.check()
    if opts.engine == "spark" and is_image_input(opts.input):
        raise ConfigError(f"{opts.input}: --engine spark scores tables; score images with "
                          "--engine local")
    if opts.engine == "spark":
        from pipelines.batch.engines.spark import run_spark

        return run_spark(opts)
    pairs = plan(opts)
    tracking_uri = use_tracking_uri(opts.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="anomaly-score-") as tmp:
        model = load_batch_model(opts.model, Path(tmp), tracking_uri=tracking_uri,
                                 cache_dir=opts.cache_dir)
        todo, done = [], []
        for src, out in pairs:
            if opts.resume and out.exists():
                log.info("%s: already scored into %s, skipping (--resume)", src, out)
                done.append(InputResult(str(src), str(out), skipped=True))
            else:
                prepare = batch_images.prepare if model.is_image else _prepare
                todo.append(prepare(model, src, out, opts))  # every check before any scoring
        result = BatchResult(None, model.name, model.version, inputs=done).promised_by(model)
        ensure_experiment(EXPERIMENT)
        start = time.perf_counter()
        sample = ScoreSample()
        # Tags go with the run's creation: each separate call is one more database commit.
        tags = {"model_name": model.name, "model_version": model.version, "engine": opts.engine}
        with mlflow.start_run(run_name=f"score-{model.name.rsplit('/', 1)[-1]}",
                              tags=tags) as run:
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
    mlflow.log_params({
        "model_uri": opts.model, "model_name": model.name, "model_version": model.version,
        "input": opts.input[:500], "output": opts.output[:500], "n_inputs": len(pairs),
        "on_error": opts.on_error, "engine": opts.engine, "chunk_rows": opts.chunk_rows,
        "keep": ",".join(opts.keep or [])[:500], "resume": opts.resume,
        **({"decode_workers": opts.decode_workers, "maps_dir": (opts.maps_dir or "")[:500]}
           if model.is_image else {}),
    })
    mlflow.log_text("\n".join(str(src) for src, _ in pairs), "inputs.txt")

