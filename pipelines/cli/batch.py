"""The ``anomaly score`` and ``anomaly schedule`` subcommands."""

from __future__ import annotations

import argparse

from pipelines.batch.options import DEFAULT_CHUNK_ROWS, ENGINES, ON_ERROR


def add_batch_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``score`` and ``schedule`` on the ``anomaly`` parser."""
    _add_score(sub)
    _add_schedule(sub)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="score CSV/Parquet files in batch with a registered model",
        description="Stream CSV or Parquet input through a model and write the input's columns "
        "plus every score, p-value, is_anomaly, model name and version. The output appears only "
        "when the whole input is scored. Each job logs a run in the 'batch-scoring' experiment.")
    p.add_argument("--model", required=True,
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a model folder")
    p.add_argument("--input", required=True,
                   help="a .csv/.parquet file or a quoted glob ('drops/*.parquet'); for an "
                   "image model a folder of images or a glob of image files ('shots/*.png'), "
                   "scored into one output row per image")
    p.add_argument("--output", required=True,
                   help="output .parquet/.csv file; for a glob, a folder or a template with "
                   "{stem} (input name), {name}, {date}, {time}, {datetime}")
    p.add_argument("--keep", type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
                   help="comma-separated input columns to carry into the output (default: all)")
    p.add_argument("--on-error", choices=ON_ERROR, default="fail",
                   help="malformed row: fail naming file and record (default), or skip it, "
                   "count it and write it to <output>.rejects.csv")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose output already exists")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: stream in this process (default); spark: mlflow spark_udf")
    p.add_argument("--spark-master", help="Spark master URL (default: local[2])")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                   help=f"rows per chunk (default: {DEFAULT_CHUNK_ROWS})")
    p.add_argument("--maps-dir", help="image models: also write each image's anomaly map as "
                   "a PNG into this folder (<name>.map.png, sub-folders mirrored)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from pipelines.batch.job import run_batch
    from pipelines.batch.options import ScoreOptions

    result = run_batch(ScoreOptions(
        model=args.model, input=args.input, output=args.output, keep=args.keep,
        on_error=args.on_error, resume=args.resume, engine=args.engine,
        spark_master=args.spark_master, chunk_rows=args.chunk_rows,
        tracking_uri=args.tracking_uri, maps_dir=args.maps_dir))
    version = f" version {result.model_version}" if result.model_version else ""
    for r in result.inputs:
        if r.skipped:
            print(f"{r.input}: skipped, {r.output} exists (--resume)")
        else:
            extra = f", {r.rejected} malformed rows -> {r.rejects_file}" if r.rejected else ""
            print(f"{r.input} -> {r.output}: {r.rows} rows, {r.anomalies} anomalies{extra}")
    rate = result.anomalies / result.rows if result.rows else 0.0
    speed = result.rows / result.seconds if result.seconds > 0 else 0.0
    print(f"scored {result.rows} rows with {result.model_name}{version} in "
          f"{result.seconds:.1f}s ({speed:.0f} rows/s); anomaly rate {rate:.2%}; "
          f"MLflow run {result.run_id}")
    return 0


def _add_schedule(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule", help="run scoring jobs on cron schedules, or show their status",
        description="`anomaly schedule JOBS.yaml` runs every job of the file on its cron "
        "expression until stopped; `anomaly schedule status [JOBS.yaml]` lists each job's last "
        "run, result and next run.")
    p.add_argument("target", nargs="+", metavar="JOBS.yaml | status [JOBS.yaml]")
    p.add_argument("--status-file", help="status JSON (default: from the jobs file, or "
                   "JOBS.status.json beside it)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: run until interrupted)")
    p.set_defaults(func=_cmd_schedule)


def _cmd_schedule(args: argparse.Namespace) -> int:
    from pipelines.batch.schedule import format_status, load_jobs, read_status, run_schedule
    from training.errors import ConfigError

    target = list(args.target)
    if target[0] == "status":
        if len(target) > 2:
            raise ConfigError("usage: anomaly schedule status [JOBS.yaml] [--status-file F]")
        status_file = args.status_file
        if status_file is None:
            if len(target) < 2:
                raise ConfigError("anomaly schedule status: name the jobs file or --status-file")
            status_file = load_jobs(target[1]).status_file
        print(format_status(read_status(status_file)))
        return 0
    if len(target) != 1:
        raise ConfigError("usage: anomaly schedule JOBS.yaml (one jobs file)")
    schedule = load_jobs(target[0])
    if args.status_file:
        schedule.status_file = args.status_file
    run_schedule(schedule, duration=args.duration)
    return 0
