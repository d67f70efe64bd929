"""Rapport on Spark: the session from the settings, the lake's tables through Ibis, and
the Spark executions of the batch feature build. The only module that imports pyspark.

The features are the same declaration as on DuckDB (:mod:`features.spec`): the raw
aggregates are :func:`features.batch.raw_expression` compiled by Ibis's PySpark backend,
and :func:`features.batch.finish` (numpy, shared with the online evaluator) turns them
into features inside the executors (``mapInArrow``), so nothing is written twice.
Scoring maps pandas frames through any function (:func:`map_frames`); the job that
applies the champions is :func:`training.scoring.score_on_spark`.

Sessions run in UTC whatever the user sets (``spark.sql.session.timeZone``): features
are instants and the DuckDB path computes them in UTC.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import ibis
import pandas as pd
import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import (
    BooleanType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from features.batch import finish, normalize_raw, raw_expression, to_frame
from features.contract import TABLES
from features.lake import LakeError, features_uri, table_uri
from features.segments import FIT_COLUMNS
from features.spec import FeatureSpec, default_spec
from features.timeutil import as_utc
from rapport.settings import Settings, get_settings

#: settings a user may override (RAPPORT_SPARK_CONF)
DEFAULTS = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}
#: settings the jobs' correctness depends on
FIXED = {"spark.sql.session.timeZone": "UTC"}


class SparkUnavailableError(RuntimeError):
    """Spark cannot start here (no Java); the message says how to install it."""


def session(settings: Settings | None = None, app: str = "rapport") -> SparkSession:
    """The Spark session of the settings: ``RAPPORT_SPARK_MASTER``, :data:`DEFAULTS`
    overridden by ``RAPPORT_SPARK_CONF``, then :data:`FIXED`. An active session with
    another master is reused as it is (Spark allows one per process)."""
    settings = settings or get_settings()
    if shutil.which("java") is None and not _java_home():
        raise SparkUnavailableError(
            "Spark needs Java (17 or 21) and none was found: install it, e.g. "
            "`apt-get install -y openjdk-17-jre-headless`, or set JAVA_HOME"
        )
    builder = SparkSession.builder.master(settings.spark_master).appName(app)
    for key, value in {**DEFAULTS, **settings.spark_options, **FIXED}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _java_home() -> bool:
    import os

    home = os.environ.get("JAVA_HOME")
    return bool(home) and shutil.which("java", path=f"{home}/bin") is not None


def lake_tables(spark: SparkSession, lake: str) -> dict[str, Any]:
    """The lake's validated contract tables as Ibis tables on the PySpark backend."""
    con = ibis.pyspark.connect(spark)
    tables = {}
    for name in TABLES:
        uri = table_uri(lake, name)
        try:
            tables[name] = con.read_parquet(uri, table_name=f"rapport_lake_{name}")
        except AnalysisException as exc:
            condition = getattr(exc, "getCondition", exc.getErrorClass)() or "unreadable"
            raise LakeError(
                f"no table {name!r} in the lake at {uri} ({condition}); "
                "run `RAPPORT_ENGINE=spark rapport ingest DIR` first"
            ) from None
    return tables


def to_spark(expr: Any) -> DataFrame:
    """An Ibis expression on the PySpark backend as a Spark DataFrame (lazy)."""
    con = expr._find_backend()
    return con._session.sql(con.compile(expr))


def feature_schema(spec: FeatureSpec) -> pa.Schema:
    """The lake's feature table: ``customer_id``, ``as_of``, then the spec's features
    (categories as strings, everything else as doubles, as :func:`features.batch.build`)."""
    categories = set(spec.categorical)
    fields = [pa.field("customer_id", pa.string()), pa.field("as_of", pa.timestamp("us", "UTC"))]
    fields += [pa.field(n, pa.string() if n in categories else pa.float64()) for n in spec.names]
    return pa.schema(fields)


def build_features(
    spark: SparkSession, lake: str, as_of: datetime | str, spec: FeatureSpec | None = None
) -> DataFrame:
    """Features of every customer who signed up before ``as_of`` (lazy Spark DataFrame),
    from the lake's tables: the same raw-aggregate query and the same :func:`finish`
    as :func:`features.batch.build`, in no particular order (no global sort)."""
    spec = spec or default_spec()
    cutoff = as_utc(as_of)
    raw = to_spark(raw_expression(lake_tables(spark, lake), cutoff, spec, ordered=False))
    schema = feature_schema(spec)

    def finish_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            values = normalize_raw(pa.Table.from_batches([batch]), spec)
            frame = to_frame(values["customer_id"], finish(values, cutoff, spec), spec)
            frame.insert(1, "as_of", pd.Timestamp(cutoff))
            yield from pa.Table.from_pandas(frame, schema=schema, preserve_index=False).to_batches()

    return raw.mapInArrow(finish_batches, from_arrow_schema(schema))


def write_features(frame: DataFrame, lake: str, as_of: datetime) -> str:
    """One snapshot into ``<lake>/features/as_of=<cutoff>/`` (replacing that cutoff's)."""
    uri = features_uri(lake, as_of)
    frame.write.mode("overwrite").parquet(uri)
    return uri


def collect(frame: DataFrame, columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """A few columns of every row on the driver (what an exact fit needs, nothing more)."""
    return frame.select(*columns).toPandas()


def map_frames(
    frame: DataFrame, fn: Callable[[pd.DataFrame], pd.DataFrame], example: pd.DataFrame
) -> DataFrame:
    """``fn`` applied to every partition's pandas batches in the executors
    (``mapInPandas``); ``example`` (``fn`` of a few rows, on the driver) gives the schema
    (:func:`schema_of`)."""
    schema = schema_of(example)

    def apply(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield fn(batch)

    return frame.mapInPandas(apply, schema)


def schema_of(frame: pd.DataFrame) -> StructType:
    """A Spark schema from a frame's dtypes (not its values, so a column that happens to
    be all null in the example is still typed): timestamps, doubles, longs, booleans,
    and strings for everything else."""
    fields = []
    for name, dtype in frame.dtypes.items():
        if pd.api.types.is_datetime64_any_dtype(dtype):
            kind: Any = TimestampType()
        elif pd.api.types.is_bool_dtype(dtype):
            kind = BooleanType()
        elif pd.api.types.is_float_dtype(dtype):
            kind = DoubleType()
        elif pd.api.types.is_integer_dtype(dtype):
            kind = LongType()
        else:
            kind = StringType()
        fields.append(StructField(str(name), kind, nullable=True))
    return StructType(fields)


def read_parquet(spark: SparkSession, uri: str) -> DataFrame:
    return spark.read.parquet(uri)


def counts(frame: DataFrame, column: str) -> dict[str, int]:
    """Rows per value of one column (small results: a few categories)."""
    return {str(r[0]): int(r[1]) for r in frame.groupBy(column).count().collect()}


@dataclass(frozen=True)
class FeatureSnapshot:
    """What ``rapport features`` on Spark wrote: where, how many customers, and the few
    columns an exact segment fit needs (:data:`features.segments.FIT_COLUMNS`)."""

    uri: str
    rows: int
    fit: pd.DataFrame


def snapshot_features(
    spark: SparkSession, lake: str, as_of: datetime | str, spec: FeatureSpec | None = None
) -> FeatureSnapshot:
    """Build the features of ``as_of`` on Spark, write them to the lake, and read back
    what the segment fit needs (the written files, not a second build)."""
    cutoff = as_utc(as_of)
    uri = write_features(build_features(spark, lake, cutoff, spec), lake, cutoff)
    written = spark.read.parquet(uri)
    fit = collect(written, list(FIT_COLUMNS))
    return FeatureSnapshot(uri, len(fit), fit)
