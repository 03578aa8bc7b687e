"""``anomaly score`` and ``anomaly schedule``: batch scoring, once or on cron schedules."""

from __future__ import annotations

import click

from pipelines.batch.options import DEFAULT_CHUNK_ROWS, DEFAULT_DECODE_WORKERS, ENGINES, ON_ERROR
from pipelines.cli.options import Command, Globals, NameList
from pipelines.cli.text import format_scoring
from training.errors import ConfigError


@click.command(cls=Command)
@click.option("--model", required=True,
              help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a model folder.")
@click.option("--input", "input_", required=True, metavar="PATH",
              help="A .csv/.parquet file or a quoted glob ('drops/*.parquet'); for an image "
              "model a folder of images or a glob of image files ('shots/*.png'), scored into "
              "one output row per image.")
@click.option("--output", required=True, metavar="PATH",
              help="Output .parquet/.csv file; for a glob, a folder or a template with {stem} "
              "(input name), {name}, {date}, {time}, {datetime}.")
@click.option("--keep", type=NameList(), show_default="all",
              help="Comma-separated input columns to carry into the output.")
@click.option("--on-error", type=click.Choice(ON_ERROR), default="fail",
              help="Malformed row: fail naming file and record, or skip it, count it and "
              "write it to <output>.rejects.csv.")
@click.option("--resume", is_flag=True, help="Skip inputs whose output already exists.")
@click.option("--engine", type=click.Choice(ENGINES), default="local",
              help="local: stream in this process; spark: mlflow spark_udf.")
@click.option("--spark-master", metavar="URL", show_default="local[2]",
              help="Spark master URL (engine spark).")
@click.option("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="Rows per chunk.")
@click.option("--maps-dir", metavar="DIR",
              help="Image models: also write each image's anomaly map as a PNG into this "
              "folder (<name>.map.png, sub-folders mirrored).")
@click.option("--decode-workers", type=click.IntRange(min=0), default=DEFAULT_DECODE_WORKERS,
              show_default=True, help="Image models: threads decoding the next chunk of images "
              "while one is scored (0: decode in the scoring thread).")
@click.pass_obj
def score(state: Globals, model: str, input_: str, output: str, keep: list[str] | None,
          on_error: str, resume: bool, engine: str, spark_master: str | None, chunk_rows: int,
          maps_dir: str | None, decode_workers: int) -> int:
    """Score CSV/Parquet files or images in batch with a model.

    Streams the input through the model and writes the input's columns plus every score,
    p-value, is_anomaly, model name and version. The output appears only when the whole input
    is scored. Each job logs a run in the 'batch-scoring' experiment.
    """
    from pipelines.batch.runlog import start_helper
    from pipelines.registry.tracking import default_tracking_uri

    # Before the job's imports: the MLflow helper of a cached graph model imports MLflow
    # on the other core meanwhile.
    helper = start_helper(model, state.tracking_uri or default_tracking_uri(),
                          maps=maps_dir is not None) if engine == "local" else None
    from pipelines.batch.job import run_batch
    from pipelines.batch.options import ScoreOptions

    result = run_batch(ScoreOptions(
        model=model, input=input_, output=output, keep=keep, on_error=on_error, resume=resume,
        engine=engine, spark_master=spark_master, chunk_rows=chunk_rows,
        tracking_uri=state.tracking_uri, maps_dir=maps_dir, decode_workers=decode_workers),
        helper=helper)
    click.echo(format_scoring(result))
    return 0


@click.command(cls=Command)
@click.argument("target", nargs=-1, required=True, metavar="JOBS.yaml | status [JOBS.yaml]")
@click.option("--status-file", metavar="FILE",
              show_default="from the jobs file, or JOBS.status.json beside it",
              help="Status JSON the scheduler writes and status reads.")
@click.option("--duration", type=float, show_default="until interrupted",
              help="Stop after this many seconds.")
@click.pass_obj
def schedule(state: Globals, target: tuple[str, ...], status_file: str | None,
             duration: float | None) -> int:
    """Run scoring jobs on cron schedules, or show their status.

    `anomaly schedule JOBS.yaml` runs every job of the file on its cron expression until
    stopped; `anomaly schedule status [JOBS.yaml]` lists each job's last run, result and next
    run. --tracking-uri overrides the jobs file's tracking_uri.
    """
    from pipelines.batch.schedule import format_status, load_jobs, read_status, run_schedule

    if target[0] == "status":
        if len(target) > 2:
            raise ConfigError("usage: anomaly schedule status [JOBS.yaml] [--status-file F]")
        if status_file is None:
            if len(target) < 2:
                raise ConfigError("anomaly schedule status: name the jobs file or --status-file")
            status_file = load_jobs(target[1]).status_file
        click.echo(format_status(read_status(status_file)))
        return 0
    if len(target) != 1:
        raise ConfigError("usage: anomaly schedule JOBS.yaml (one jobs file)")
    jobs = load_jobs(target[0])
    if status_file:
        jobs.status_file = status_file
    if state.tracking_uri:
        jobs.tracking_uri = state.tracking_uri
    run_schedule(jobs, duration=duration)
    return 0
