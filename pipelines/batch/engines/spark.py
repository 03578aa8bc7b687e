"""Batch scoring on Spark: ``mlflow.pyfunc.spark_udf`` over a DataFrame, written as Parquet.

The input (a Parquet/CSV file, folder or glob) is read into one DataFrame and scored by the
registered pyfunc on the executors, so a cluster needs nothing but the model; the output is one
Parquet dataset (a folder), written to a temporary path and renamed through the Hadoop file
system at the end. Local mode (``local[2]``) by default; ``--spark-master`` for a cluster.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from pipelines.batch.io import NA_VALUES
from pipelines.batch.model import (
    MODEL_NAME_COLUMN,
    MODEL_VERSION_COLUMN,
    BatchModel,
    load_batch_model,
)
from pipelines.batch.options import ScoreOptions
from pipelines.batch.results import EXPERIMENT, QUANTILES, BatchResult, InputResult, log_metrics
from pipelines.registry.tracking import ensure_experiment, use_tracking_uri
from training.data.tables import table_format
from training.errors import ConfigError, DataError, first_line, shown
from training.preprocessing.tabular import EMPTY_RECORD

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[2]"
_SCORES = "_scores"


def spark_session(master: str | None = None):
    """A light Spark session: no UI, few shuffle partitions, driver on the loopback address
    in local mode."""
    from pyspark.sql import SparkSession

    master = master or DEFAULT_MASTER
    builder = (SparkSession.builder.master(master).appName("anomaly-score")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true"))
    if master.startswith("local"):
        # Workers run this interpreter, so they import the same packages (torch, this one);
        # pyspark reads PYSPARK_PYTHON when the context starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.pyspark.python", sys.executable)
                   .config("spark.pyspark.driver.python", sys.executable))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _spark_type(dtype: str):
    from pyspark.sql import types as T

    if dtype == "bool":
        return T.BooleanType()
    if dtype.startswith("int"):
        return T.LongType()
    if dtype.startswith("float"):
        return T.DoubleType()
    return T.StringType()


def result_type(model: BatchModel):
    """The struct the pyfunc returns per row, from the detector's own output columns."""
    from pyspark.sql import types as T

    probe = model.output_probe()
    return T.StructType([T.StructField(str(c), _spark_type(str(probe[c].dtype)))
                         for c in probe.columns])


def _read(spark, opts: ScoreOptions):
    path = opts.input
    fmt = table_format(path.rstrip("*/") if not path.endswith(("*", "/")) else "x.parquet")
    local = "://" not in path
    if local and not any(ch in path for ch in "*?[") and not Path(path).exists():
        raise DataError(f"{path}: file not found")
    from pyspark.errors import AnalysisException

    try:
        if fmt == "parquet":
            return spark.read.parquet(path)
        mode = "FAILFAST" if opts.on_error == "fail" else "DROPMALFORMED"
        df = (spark.read.option("header", True).option("inferSchema", True)
              .option("mode", mode).csv(path))
        return _as_pandas_reads(spark, df, path)
    except AnalysisException as e:
        raise DataError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def _quoted(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _as_pandas_reads(spark, df, path: str):
    """A CSV's columns as training's pandas (and the local engine) read them.

    An unnamed header field (the index ``df.to_csv()`` writes), which Spark names ``_c<i>``, is
    ``Unnamed: <i>``; pandas' missing-value tokens (``NA_VALUES``: 'None', '<NA>', 'NULL'...),
    which Spark reads as text, are nulls. A number column holding such a token was inferred
    as text: :func:`_conform_numbers` makes a model feature a number again (Spark's cast, as
    its inference, reads ' 3.363' as 3.363).
    """
    from pyspark.sql import functions as F

    generated = [i for i, c in enumerate(df.columns) if c == f"_c{i}"]
    if generated:  # or a field really named '_c<i>': the header line tells
        header = spark.read.option("header", False).option("inferSchema", False).csv(path)
        first = header.first()
        unnamed = {f"_c{i}": f"Unnamed: {i}" for i in generated
                   if first is not None and i < len(first) and first[i] in (None, "")}
        if unnamed:
            df = df.withColumnsRenamed(unnamed)
    text = [c for c, t in df.dtypes if t == "string"]
    if not text:
        return df
    return df.withColumns({c: F.when(~_quoted(c).isin(NA_VALUES), _quoted(c)) for c in text})


def _hadoop_path(spark, path: str):
    jvm = spark.sparkContext._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    return p, p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def score_dataframe(spark, df, model: BatchModel, keep: list[str] | None,
                    source: str = "input"):
    """``df``'s kept columns + every score column + model name and version."""
    from pyspark.sql import functions as F

    if not df.columns:
        raise DataError(f"{source}: file is empty")
    missing = [c for c in model.input_columns if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the model expects "
                        f"{model.input_columns}; the input has {df.columns}")
    keep = df.columns if keep is None else keep
    unknown = [c for c in keep if c not in df.columns]
    if unknown:
        raise DataError(f"--keep column(s) {unknown} not in the input; its columns are "
                        f"{df.columns}")
    udf = mlflow.pyfunc.spark_udf(spark, str(model.path), result_type=result_type(model),
                                  env_manager="local")
    scored = df.withColumn(_SCORES, udf(F.struct(*[F.col(c) for c in model.input_columns])))
    return scored.select(*[F.col(c) for c in keep], f"{_SCORES}.*",
                         F.lit(model.name).alias(MODEL_NAME_COLUMN),
                         F.lit(model.version).alias(MODEL_VERSION_COLUMN))


def _boolean_columns(model: BatchModel) -> list[str]:
    """Input columns the model's signature types boolean (a CSV's true/false in training)."""
    from mlflow.models import Model
    from mlflow.types import DataType

    signature = Model.load(str(model.path)).signature
    if signature is None or signature.inputs is None:
        return []
    return [s.name for s in signature.inputs.inputs
            if getattr(s, "type", None) == DataType.boolean and s.name is not None]


def _conform_numbers(df, model: BatchModel, opts: ScoreOptions):
    """The model's numeric columns as doubles, and its boolean ones as booleans. A column Spark
    read as text holds a value that is no number (or no true/false; one holding a missing
    value, 'None', is text too): the job fails naming it, or with ``--on-error skip`` its rows
    are dropped (and counted as rejected)."""
    from pyspark.sql import functions as F

    types = dict(df.dtypes)
    text = [c for c in model.numeric_columns if types.get(c) == "string"]
    casts = {c: F.col(c).try_cast("double") for c in text}
    expected = dict.fromkeys(text, "a number")
    for c in _boolean_columns(model):
        if types.get(c) == "string":  # true/false in any case, as the local engine reads it
            lower = F.lower(F.col(c))
            casts[c] = F.when(lower == "true", True).when(lower == "false", False)
            expected[c] = "true or false"
    text = list(casts)
    if not text:
        return df
    bad = None
    for c in text:
        cond = F.col(c).isNotNull() & casts[c].isNull()
        bad = cond if bad is None else bad | cond
    if opts.on_error == "fail":
        row = df.filter(bad).select(*text, *[casts[c].alias(f"__{c}") for c in text]).first()
        if row is not None:
            c = next(c for c in text if row[c] is not None and row[f"__{c}"] is None)
            raise DataError(f"{opts.input}: column '{c}': expected {expected[c]}, got "
                            f"{shown(row[c])}; fix the row or rerun with --on-error skip")
    else:
        df = df.filter(~bad)
    return df.select(*[casts[c].alias(c) if c in casts else F.col(c) for c in df.columns])


def _malformed_rows(df, model: BatchModel, opts: ScoreOptions):
    """Rows with an infinite feature, or without a single feature value (imputed, such a
    record would be the typical normal one), are malformed: with ``--on-error skip`` they are
    dropped (counted as rejected). Otherwise a row without a value fails the job as it is
    scored (no pass over the data of its own); an infinite value fails it in the detector."""
    from pyspark.sql import functions as F

    types = dict(df.dtypes)
    empty = None
    for c in model.feature_columns:
        gone = F.col(c).isNull()
        if types.get(c) in ("double", "float"):
            gone = gone | F.isnan(F.col(c))
        empty = gone if empty is None else empty & gone
    if opts.on_error != "skip":
        if empty is None:
            return df
        return df.filter(F.when(empty, F.raise_error(F.lit(
            f"DataError: {opts.input}: {EMPTY_RECORD}"))).otherwise(F.lit(True)))
    cond = None if empty is None else ~empty
    for c in model.numeric_columns:
        ok = F.col(c).isNull() | ~F.abs(F.col(c).cast("double")).eqNullSafe(float("inf"))
        cond = ok if cond is None else cond & ok
    return df if cond is None else df.filter(cond)


def run_spark(opts: ScoreOptions) -> BatchResult:
    """Score ``opts.input`` with Spark into the Parquet dataset ``opts.output``."""
    tracking_uri = use_tracking_uri(opts.tracking_uri)
    out = opts.output
    with tempfile.TemporaryDirectory(prefix="anomaly-spark-") as tmp:
        # Resolved once on the driver: the executors score the pinned version's files.
        model = load_batch_model(opts.model, Path(tmp), tracking_uri=tracking_uri,
                                 cache_dir=opts.cache_dir)
        if model.is_sequence:  # a UDF sees partitions in no order: windows would break
            raise ConfigError(f"{opts.model}: a sequence model scores series in time order; "
                              "use the local engine (--engine local), which streams them")
        spark = spark_session(opts.spark_master)
        out_path, fs = _hadoop_path(spark, out)
        if opts.resume and fs.exists(out_path):
            log.info("%s exists, skipping (--resume)", out)
            return BatchResult(None, model.name, model.version,
                               inputs=[InputResult(opts.input, out, skipped=True)])
        df = _read(spark, opts)
        total = None
        if opts.on_error == "skip":
            total = df.count()
        if df.columns and all(c in df.columns for c in model.input_columns):
            df = _conform_numbers(df, model, opts)  # else score_dataframe names what is missing
            df = _malformed_rows(df, model, opts)
        scored = score_dataframe(spark, df, model, opts.keep, opts.input)
        ensure_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"score-spark-{model.name.rsplit('/', 1)[-1]}") as run:
            mlflow.set_tags({"model_name": model.name, "model_version": model.version,
                             "engine": "spark"})
            mlflow.log_params({"model_uri": opts.model, "input": opts.input[:500],
                               "output": out[:500], "engine": "spark",
                               "spark_master": opts.spark_master or DEFAULT_MASTER,
                               "on_error": opts.on_error})
            start = time.perf_counter()
            tmp_out = f"{out.rstrip('/')}._partial"
            tmp_path, _ = _hadoop_path(spark, tmp_out)
            try:
                scored.write.mode("overwrite").parquet(tmp_out)
                if fs.exists(out_path):
                    fs.delete(out_path, True)
                if not fs.rename(tmp_path, out_path):
                    raise OSError(f"could not rename {tmp_out} to {out}")
            except BaseException as e:
                fs.delete(tmp_path, True)
                mlflow.set_tag("error", first_line(e, 500))
                raise _as_data_error(e) from None
            res = _summarise(spark, out, opts, total)
            result = BatchResult(run.info.run_id, model.name, model.version, inputs=[res],
                                 seconds=time.perf_counter() - start).promised_by(model)
            result.quantiles = _quantiles(spark, out)
            log_metrics(result)
    log.info("%s -> %s: %d rows in %.1fs with Spark, %d anomalies", opts.input, out, res.rows,
             result.seconds, res.anomalies)
    return result


def _summarise(spark, out: str, opts: ScoreOptions, total: int | None) -> InputResult:
    from pyspark.sql import functions as F

    row = spark.read.parquet(out).agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("is_anomaly").cast("long")).alias("anomalies")).collect()[0]
    rows = int(row["rows"])
    return InputResult(opts.input, out, rows=rows, anomalies=int(row["anomalies"] or 0),
                       rejected=(total - rows) if total is not None else 0)


def _quantiles(spark, out: str) -> dict[str, float]:
    df = spark.read.parquet(out)
    values = df.approxQuantile("score", [*QUANTILES, 1.0], 0.001)
    if not values:
        return {}
    keys = [f"score_p{round(q * 100)}" for q in QUANTILES] + ["score_max"]
    return dict(zip(keys, values, strict=True))


def _as_data_error(e: BaseException) -> BaseException:
    """A failure caused by the input (a malformed row, a bad value) as a one-line DataError."""
    text = str(e)
    for marker in ("DataError: ", "Malformed records are detected", "CSV parse error",
                   "[CAST_INVALID_INPUT]"):
        if marker in text:
            line = next(x for x in text.splitlines() if marker in x)
            line = line.split(" SQLSTATE:", 1)[0]  # raised by the job's own check
            return DataError(f"{line.split(marker, 1)[-1].strip() or line.strip()}; fix the "
                             "row or rerun with --on-error skip")
    return e
