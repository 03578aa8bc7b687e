"""Batch scoring: stream CSV/Parquet files (or images) through a registered model into scored files.

One job = one model and one input path or glob. Every input and output is checked (files exist,
columns match the model, outputs writable) before any row is scored; then each input is read in
chunks, scored, and written to a temporary file renamed over the output at the end. The job
logs one MLflow run in the ``batch-scoring`` experiment.

A registered model already in the model cache with its ONNX graph (written by the scoring
service, or in the background after a job that scored it with torch) is scored through the
graph (an image model's job unless it writes anomaly maps, which need the networks), and the
job leaves MLflow to a helper process (:mod:`pipelines.batch.runlog`) that
confirms the cached version with the registry and keeps the run: the job itself imports neither
torch nor MLflow, and starts scoring in about a second. ``ANOMALY_GRAPH_RUNTIME=false`` turns
both off (every job resolves the model first and scores with torch).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pipelines.batch.engines import images as batch_images
from pipelines.batch.engines.tables import _prepare, score_file
from pipelines.batch.model import BatchModel, load_batch_model
from pipelines.batch.options import ScoreOptions
from pipelines.batch.plan import is_image_input, plan
from pipelines.batch.restlog import RestRunLog
from pipelines.batch.results import (
    EXPERIMENT,
    BatchResult,
    InputResult,
    ScoreSample,
    job_metrics,
    job_summary,
)
from pipelines.batch.runlog import (
    ModelMoved,
    RunLog,
    RunRequest,
    cached_with_graph,
    graph_enabled,
    rest_eligible,
    start_helper,
)
from pipelines.registry.download import DETECTOR_DIR
from pipelines.registry.tracking import default_tracking_uri
from pipelines.registry.uri import REGISTERED, parse_model_uri
from training.detector.graph_files import GRAPH_DIR, graph_export_command, graph_ready
from training.errors import ConfigError, first_line

log = logging.getLogger(__name__)

# -- the job -----------------------------------------------------------------------------------
def run_batch(opts: ScoreOptions, helper: RunLog | None = None) -> BatchResult:
    """Run one scoring job end to end and log it to MLflow.

    Args:
        opts: the job.
        helper: the MLflow helper :func:`~pipelines.batch.runlog.start_helper` started for
            this job before its imports (default: started here when the job needs one).
    """
    try:
        opts.check()
    except BaseException:
        if helper is not None:
            helper.close()
        raise
    if opts.engine == "spark" and helper is not None:
        helper.close()
        helper = None
    if opts.engine == "spark" and is_image_input(opts.input):
        raise ConfigError(f"{opts.input}: --engine spark scores tables; score images with "
                          "--engine local")
    if opts.engine == "spark":
        from pipelines.batch.engines.spark import run_spark

        return run_spark(opts)
    tracking_uri = opts.tracking_uri or default_tracking_uri()
    if helper is None:  # first: importing MLflow is the longest part of a small job
        helper = start_helper(opts.model, tracking_uri, opts.cache_dir, opts.maps_dir is not None)
    try:
        pairs = plan(opts)
        cached = cached_graph_model(opts.model, tracking_uri, opts.cache_dir,
                                    opts.maps_dir is not None) \
            if helper is not None or rest_eligible(tracking_uri) else None
        if cached is not None and torch_pays(cached.kind, lambda: _rows_about(pairs, cached)):
            cached = _with_torch(cached)
    except BaseException:
        if helper is not None:
            helper.close()
        raise
    if cached is not None:
        try:
            request = RunRequest(tracking_uri=tracking_uri, model_uri=opts.model,
                                 version=cached.version, model_run_id=cached.run_id,
                                 experiment=EXPERIMENT, **_run_fields(opts, cached, pairs))
            return _score_all(opts, pairs, cached, lambda: helper.start(request)
                              if helper is not None else RestRunLog(tracking_uri).start(request))
        except ModelMoved as e:
            log.info("%s: %s, not the cached version %s: scoring with it", opts.model, e,
                     cached.version)
        finally:
            if helper is not None:
                helper.close()  # stopped at once when the inputs failed their checks
    elif helper is not None:
        helper.close()
    from pipelines.registry.tracking import use_tracking_uri

    use_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="anomaly-score-") as tmp:
        model = load_batch_model(opts.model, Path(tmp), tracking_uri=tracking_uri,
                                 cache_dir=opts.cache_dir)
        result = _score_all(opts, pairs, model,
                            lambda: _InProcessRun(**_run_fields(opts, model, pairs)))
    export_graph_after(opts.model, model)
    return result


def _score_all(opts: ScoreOptions, pairs: list[tuple[Path, Path]], model: BatchModel,
               open_run: Callable[[], RunLog | RestRunLog | _InProcessRun]) -> BatchResult:
    """Check every input, open the job's run (``open_run``: none for a job whose input fails
    its checks), then score the inputs into their outputs."""
    todo, done = [], []
    for src, out in pairs:
        if opts.resume and out.exists():
            log.info("%s: already scored into %s, skipping (--resume)", src, out)
            done.append(InputResult(str(src), str(out), skipped=True))
        else:
            prepare = batch_images.prepare if model.is_image else _prepare
            todo.append(prepare(model, src, out, opts))  # every check before any scoring
    run = open_run()
    try:
        result = BatchResult(None, model.name, model.version, inputs=done).promised_by(model)
        start = time.perf_counter()
        sample = ScoreSample()
        log.info("%s version %s: scoring %d input(s) with %s", model.name, model.version,
                 len(todo), getattr(model.detector, "runtime", "torch"))
        for job in todo:
            if model.is_image:
                result.inputs.append(batch_images.score_images(model, job, opts.on_error,
                                                               sample))
            else:
                result.inputs.append(score_file(model, job, opts.on_error, sample,
                                                before_commit=run.confirm))
        result.run_id = run.confirm()  # every input was skipped: still the registry's word
        # The job's own time: not the wait for the registry's word on a small job.
        result.seconds = time.perf_counter() - start - run.waited
        result.quantiles = sample.quantiles()
    except BaseException as e:
        if not isinstance(e, ModelMoved):
            run.finish(error=first_line(e, 500))
        raise
    run.finish(job_metrics(result), job_summary(result))
    return result


# A graph saves a fixed cost (torch's import, about 1.7 s); torch then scores a default table
# VAE's rows about a fifth faster (benchmarks/batch.py, 1M rows: 140k against 110k rows/s in
# the job), which repays that cost past about a million rows. For an AE the per-row gap is
# small beside reading and writing; its break-even lies past 10M rows. An image job's images
# cost the same either way (benchmarks/images.py, 10,000 MNIST PNGs, conv_ae: 1.75 s through
# the graph against 1.95 s with torch, less start-up; decoding in a thread takes the cores
# torch's own threads would use): it always takes the graph.
TORCH_FROM_ROWS = {"vae": 1_000_000}
_CSV_BYTES_PER_VALUE = 10  # a rough guess of a CSV's bytes per field, for a size estimate


def torch_pays(kind: str, rows: int | Callable[[], int]) -> bool:
    """Whether a job of about ``rows`` rows (or a function counting them, called only for a
    kind with a limit) of a ``kind`` model scores sooner with torch than through its graph
    (the same scores to float32 rounding either way)."""
    limit = TORCH_FROM_ROWS.get(kind)
    return limit is not None and (rows() if callable(rows) else rows) > limit


def _rows_about(pairs: list[tuple[Path, Path]], model: BatchModel) -> int:
    """The inputs' rows: exact for Parquet (its footer), estimated from a CSV's size."""
    import pyarrow.parquet as pq

    total = 0
    width = max(1, len(model.input_columns))
    for src, _ in pairs:
        try:
            if src.suffix.lower() == ".parquet":
                total += pq.ParquetFile(src).metadata.num_rows
            else:
                total += src.stat().st_size // (_CSV_BYTES_PER_VALUE * width)
        except (OSError, ValueError):
            continue  # the input's own checks report it
    return total


def _with_torch(model: BatchModel) -> BatchModel:
    """The same cached version with its torch detector instead of its graph."""
    from training.detector.persistence import load_detector

    log.info("%s version %s: a large job: scoring with torch", model.name, model.version)
    return replace(model, detector=load_detector(model.path / DETECTOR_DIR))


def _run_fields(opts: ScoreOptions, model: BatchModel, pairs: list[tuple[Path, Path]]
                ) -> dict:
    """The run's name, tags (set with its creation: each separate call is one more database
    commit), parameters and list of inputs."""
    return {
        "run_name": f"score-{model.name.rsplit('/', 1)[-1]}",
        "tags": {"model_name": model.name, "model_version": model.version,
                 "engine": opts.engine},
        "params": {
            "model_uri": opts.model, "model_name": model.name, "model_version": model.version,
            "input": opts.input[:500], "output": opts.output[:500], "n_inputs": len(pairs),
            "on_error": opts.on_error, "engine": opts.engine, "chunk_rows": opts.chunk_rows,
            "keep": ",".join(opts.keep or [])[:500], "resume": opts.resume,
            **({"decode_workers": opts.decode_workers,
                "maps_dir": (opts.maps_dir or "")[:500]} if model.is_image else {}),
        },
        "inputs_text": "\n".join(str(src) for src, _ in pairs),
    }


class _InProcessRun:
    """The job's run kept in this process (MLflow imported): opened before any scoring."""

    waited = 0.0  # the version was resolved before the job: it never waits in confirm()

    def __init__(self, run_name: str, tags: dict[str, str], params: dict, inputs_text: str):
        import mlflow

        from pipelines.registry.tracking import ensure_experiment

        ensure_experiment(EXPERIMENT)
        self.run = mlflow.start_run(run_name=run_name, tags=tags)
        mlflow.log_params(params)
        mlflow.log_text(inputs_text, "inputs.txt")

    def confirm(self) -> str:
        """The run id (the version was resolved before the job began)."""
        return self.run.info.run_id

    def finish(self, metrics: dict[str, float] | None = None, summary: str = "",
               error: str | None = None) -> None:
        """Log the metrics and summary, or the error, and end the run."""
        import mlflow

        if error is not None:
            mlflow.set_tag("error", error)
            mlflow.end_run("FAILED")
            return
        try:
            mlflow.log_metrics(metrics or {})
            mlflow.log_text(summary, "summary.json")
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run()


# -- the graph fast path -----------------------------------------------------------------------
def cached_graph_model(uri: str, tracking_uri: str, cache_dir: Path | str | None = None,
                       maps: bool = False) -> BatchModel | None:
    """The version of ``uri`` last cached, scored through its ONNX graph, when it is a
    registered model whose cached folder holds a complete graph (not an image model when the
    job writes anomaly maps: ``maps``); else None.

    Its version is the one the cache recorded: the caller confirms it with the registry
    before it commits any output (:class:`~pipelines.batch.runlog.RunLog`).
    """
    found = cached_with_graph(uri, tracking_uri, cache_dir, maps)
    if found is None:
        return None
    fetched, graph_dir = found
    from training.detector.graph import graph_scorer

    try:
        scorer = graph_scorer(fetched.detector_dir, graph_dir, _threads())
    except Exception as e:  # noqa: BLE001 - a stale or broken graph: score with torch
        log.warning("%s: its graph does not load (%s); scoring with torch", graph_dir,
                    first_line(e))
        return None
    src = fetched.source
    return BatchModel(uri=src.uri, name=src.name, version=src.version, path=fetched.path,
                      detector=scorer, run_id=src.run_id)


def _threads() -> int:
    """onnxruntime's intra-op threads for a job: ``OMP_NUM_THREADS`` when set, as torch reads
    it; else 0, onnxruntime's default (one per physical core, as torch's)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _export_running(graph_dir: Path, fresh_s: float = 600.0) -> bool:
    """Whether another export of ``graph_dir`` began less than ``fresh_s`` ago (its temporary
    folder, ``.graph-*`` beside it, is there)."""
    now = time.time()
    for tmp in graph_dir.parent.glob(f".{graph_dir.name}-*"):
        try:
            if now - tmp.stat().st_mtime < fresh_s:
                return True
        except OSError:
            continue
    return False


def export_graph_after(uri: str, model: BatchModel) -> bool:
    """After a job that scored a cached registered model with torch, write its graph beside
    it in a detached, niced process, so that the next job scores without torch.

    Returns:
        whether an export was started.
    """
    graph_dir = model.path / GRAPH_DIR
    if (not graph_enabled() or graph_ready(graph_dir)
            or parse_model_uri(uri).kind != REGISTERED or _export_running(graph_dir)):
        return False
    try:
        subprocess.Popen(graph_export_command(model.path / DETECTOR_DIR, graph_dir),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        log.warning("%s: the graph export did not start (%s); jobs keep scoring with torch",
                    graph_dir, e)
        return False
    log.info("%s: writing its ONNX graph in the background for the next job", graph_dir)
    return True
