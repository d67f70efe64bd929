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

import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import ibis
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
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
from features.contract import CUSTOMER_ATTRIBUTES, CUSTOMERS, TABLES
from features.lake import LakeError, features_uri, scores_uri, table_uri
from features.online.materialize import Loader, Tally, merge_live, records_of_batch
from features.online.record import record_columns
from features.online.store import open_store
from features.segments import FIT_COLUMNS
from features.spec import FeatureSpec, default_spec
from features.tables.lists import HoldsNothing, suppressed_ids
from features.tables.scores import RUNS, NoScoresError, RunInfo, latest_run
from features.timeutil import as_utc
from features.warehouse import raw, table_names
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
    overridden by ``RAPPORT_SPARK_CONF``, then :data:`FIXED`, with Splink's similarity
    jar added to ``spark.jars`` (:func:`splink_jar`). An active session with another
    master is reused as it is (Spark allows one per process)."""
    settings = settings or get_settings()
    if shutil.which("java") is None and not _java_home():
        raise SparkUnavailableError(
            "Spark needs Java (17 or 21) and none was found: install it, e.g. "
            "`apt-get install -y openjdk-17-jre-headless`, or set JAVA_HOME"
        )
    builder = SparkSession.builder.master(settings.spark_master).appName(app)
    for key, value in session_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def session_conf(settings: Settings) -> dict[str, str]:
    """What :func:`session` sets: :data:`DEFAULTS`, ``RAPPORT_SPARK_CONF``, :data:`FIXED`,
    and ``spark.jars``: the user's jars, then :func:`splink_jar`."""
    conf = {**DEFAULTS, **settings.spark_options, **FIXED}
    jars = [j.strip() for j in conf.get("spark.jars", "").split(",") if j.strip()]
    conf["spark.jars"] = ",".join([*jars, splink_jar()])
    return conf


def splink_jar() -> str:
    """The jar of the similarity functions Splink's Spark backend calls (Jaro-Winkler,
    Damerau-Levenshtein, as Scala UDFs), shipped inside the splink package (no
    download); Spark sends it to the executors."""
    from splink.backends.spark import similarity_jar_location

    return str(similarity_jar_location())


def splink_api(spark: SparkSession) -> Any:
    """Splink's Spark backend on ``spark`` (a session of :func:`session`, which carries
    :func:`splink_jar`), for :func:`features.resolve.probabilistic_links`. Intermediate
    tables are persisted (memory, then local disk of the executors): no checkpoint
    folder to configure or clean."""
    from splink.backends.spark import SparkAPI

    return SparkAPI(spark_session=spark, break_lineage_method="persist")


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
            raise _no_table(name, uri, exc) from None
    return tables


def _no_table(name: str, uri: str, exc: AnalysisException) -> LakeError:
    condition = getattr(exc, "getCondition", exc.getErrorClass)() or "unreadable"
    return LakeError(
        f"no table {name!r} in the lake at {uri} ({condition}); "
        "run `RAPPORT_ENGINE=spark rapport ingest DIR` first"
    )


def to_spark(expr: Any) -> DataFrame:
    """An Ibis expression on the PySpark backend as a Spark DataFrame (lazy); its
    in-memory tables (``ibis.memtable``) registered first."""
    con = expr._find_backend()
    con._run_pre_execute_hooks(expr)
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


# --------------------------------------------------------------------------- target lists
def lake_runs(spark: SparkSession, lake: str) -> set[str]:
    """The scoring runs whose scores are in the lake (``<lake>/scores/run_id=<run>``),
    listed through Hadoop's file system (a folder or an object store alike)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    root = jvm.org.apache.hadoop.fs.Path(scores_uri(lake))
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(root):
        return set()
    names = [status.getPath().getName() for status in fs.listStatus(root)]
    return {n.removeprefix("run_id=") for n in names if n.startswith("run_id=")}


class LakeLists(HoldsNothing):
    """A list's inputs on Spark (:class:`models.targeting.ListSource`): the run from the
    warehouse's ``score_runs`` (the latest whose scores are in the lake, or ``run_id``),
    its scores from the lake joined with the features the list needs, built on Spark as
    of the list's cutoff (lazy: the list's ``select`` reads them), and the warehouse's
    suppressions. ``con`` is the warehouse, open for the whole list (the CLI's)."""

    def __init__(self, spark: SparkSession, lake: str, con: Any) -> None:
        self.spark, self.lake, self.con = spark, lake, con

    def run(self, run_id: str | None = None) -> RunInfo:
        db = raw(self.con)
        in_lake = lake_runs(self.spark, self.lake)
        if run_id is None and RUNS in table_names(db):
            ordered = db.execute(f"SELECT run_id FROM {RUNS} ORDER BY scored_at DESC").fetchall()
            run_id = next((r[0] for r in ordered if r[0] in in_lake), None)
            if run_id is None:
                raise NoScoresError(
                    f"no scores in the lake {scores_uri(self.lake)}: run "
                    "`RAPPORT_ENGINE=spark rapport score`"
                )
        run = latest_run(db, run_id)
        if run.run_id not in in_lake:
            raise NoScoresError(
                f"scoring run {run.run_id!r} has no scores in the lake {scores_uri(self.lake)} "
                "(scored with RAPPORT_ENGINE=duckdb?)"
            )
        return run

    def candidates(
        self, run: RunInfo, spec: FeatureSpec, columns: Sequence[str], as_of: datetime
    ) -> Any:
        """The run's scores left-joined with the feature ``columns`` (a lazy DataFrame)."""
        scores = self.spark.read.parquet(f"{scores_uri(self.lake)}/run_id={run.run_id}")
        if not columns:
            return scores
        features = build_features(self.spark, self.lake, as_of, spec)
        return scores.join(features.select("customer_id", *columns), "customer_id", "left")

    def suppressed(self) -> set[str]:
        return suppressed_ids(raw(self.con))


#: the column that carries each batch's summary in :func:`map_summarized`'s output
SUMMARY = "_rapport_summary"


@dataclass
class Summarized:
    """What :func:`map_summarized` kept: the rows (cached until :meth:`close`) and every
    batch's summary (with ``rows``, the batch's rows, and ``duplicates``, those dropped)."""

    rows: DataFrame
    summaries: list[dict[str, Any]]
    _cached: DataFrame

    def close(self) -> None:
        self._cached.unpersist()


def map_summarized(
    frame: DataFrame,
    fn: Callable[[pd.DataFrame], tuple[pd.DataFrame, dict[str, Any]]],
    example: pd.DataFrame,
    unique: str,
) -> Summarized:
    """``fn`` over every pandas batch in the executors, returning rows and a JSON-able
    summary; the rows stay in Spark (cached), the summaries come to the driver. ``frame``
    is first hash-partitioned by ``unique`` and a value already seen in the partition is
    dropped before ``fn`` (one row per value; which one is arbitrary). ``example`` is
    ``fn``'s rows for no input (it gives the schema, :func:`schema_of`)."""
    schema = StructType([*schema_of(example).fields, StructField(SUMMARY, StringType())])

    def apply(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        seen: set[Any] = set()
        for batch in batches:
            first = ~batch[unique].duplicated(keep="first") & ~batch[unique].isin(seen)
            seen.update(batch[unique].tolist())
            rows, summary = fn(batch[first.to_numpy()].reset_index(drop=True))
            summary = {**summary, "rows": len(batch), "duplicates": int((~first).sum())}
            line = pd.DataFrame({SUMMARY: pd.Series([json.dumps(summary)], dtype=object)})
            out = pd.concat([rows.assign(**{SUMMARY: None}), line], ignore_index=True)
            # Arrow-backed strings (pandas' default) reach Spark as chunked arrays it refuses
            strings = [c for c in out.columns if isinstance(out[c].dtype, pd.StringDtype)]
            yield out.astype(dict.fromkeys(strings, object)) if strings else out

    out = frame.repartition(unique).mapInPandas(apply, schema)
    out = out.persist(StorageLevel.MEMORY_AND_DISK)
    lines = out.filter(F.col(SUMMARY).isNotNull()).select(SUMMARY).collect()
    rows = out.filter(F.col(SUMMARY).isNull()).drop(SUMMARY)
    return Summarized(rows, [json.loads(r[0]) for r in lines], out)


def distinct(frame: DataFrame, column: str) -> list[Any]:
    """The distinct values of one column (few: e.g. the costs of a catalog's actions)."""
    return [r[0] for r in frame.select(column).distinct().collect()]


def _present(frame: DataFrame, column: str) -> Any:
    """Not null, and not NaN for a floating column (pandas reads both as missing)."""
    kind = frame.schema[column].dataType
    if isinstance(kind, DoubleType):
        return F.col(column).isNotNull() & ~F.isnan(column)
    return F.col(column).isNotNull()


def best_per_group(
    frame: DataFrame, group: str, value: str, key: str, room: dict[Any, int | None]
) -> pd.DataFrame:
    """Rows whose ``value`` is > 0, per ``group`` value the ``room[group]`` ones with the
    highest ``value`` (ties by ``key``; None: all of them), on the driver."""
    ranked = frame.filter(_present(frame, value) & (F.col(value) > 0)).withColumn(
        "_rapport_rank",
        F.row_number().over(
            Window.partitionBy(group).orderBy(F.col(value).desc(), F.col(key).asc())
        ),
    )
    keep = F.lit(False)
    for group_value, limit in room.items():
        here = F.col(group) == F.lit(group_value)
        keep = keep | (here if limit is None else here & (F.col("_rapport_rank") <= limit))
    return ranked.filter(keep).drop("_rapport_rank").toPandas()


def first_rows(frame: DataFrame, column: str, ascending: bool, key: str, n: int) -> pd.DataFrame:
    """The first ``n`` rows by ``column`` (missing values last, as pandas sorts) then
    ``key``, on the driver."""
    order = F.col(column).asc() if ascending else F.col(column).desc()
    missing = (~_present(frame, column)).cast("int")
    return frame.orderBy(missing.asc(), order, F.col(key).asc()).limit(n).toPandas()


# --------------------------------------------------------------------------- online store
def _as_record(table: str, column: str) -> Any:
    """A column as a record stores it: timestamps as integer epoch microseconds."""
    if TABLES[table].column(column).type == "timestamp":
        return F.unix_micros(F.col(column)).alias(column)
    return F.col(column)


def records_frame(spark: SparkSession, lake: str, as_of: datetime, spec: FeatureSpec) -> DataFrame:
    """One row per customer who signed up before ``as_of``: the attributes, then per event
    source the list of its events before ``as_of`` (structs of :func:`record_columns`,
    in no particular order) -- the rows of
    :func:`features.online.materialize.records_sql`, from the lake's tables."""
    cutoff = int(pd.Timestamp(as_utc(as_of)).value // 1_000)  # epoch microseconds
    frames = {name: read_lake_table(spark, lake, name) for name in TABLES}
    customers = frames[CUSTOMERS.name].filter(F.unix_micros("signup_at") < cutoff)
    out = customers.select(*[_as_record(CUSTOMERS.name, c) for c in CUSTOMER_ATTRIBUTES])
    for table, columns in record_columns(spec).items():
        time_column = TABLES[table].time_column
        events = frames[table].filter(F.unix_micros(time_column) < cutoff)
        struct = F.struct(*[_as_record(table, c) for c in columns])
        lists = events.groupBy("customer_id").agg(F.collect_list(struct).alias(table))
        out = out.join(lists, "customer_id", "left")
    return out


def read_lake_table(spark: SparkSession, lake: str, name: str) -> DataFrame:
    """A validated contract table from the lake (LakeError says to ingest without it)."""
    uri = table_uri(lake, name)
    try:
        return spark.read.parquet(uri)
    except AnalysisException as exc:
        raise _no_table(name, uri, exc) from None


def check_shared_store(url: str) -> None:
    """Refuse a store the executors cannot share (checked before Spark starts)."""
    if not url.lower().startswith(("redis://", "rediss://")):
        raise ValueError(
            "with RAPPORT_ENGINE=spark, `rapport materialize` writes from the executors into "
            "Redis: set RAPPORT_ONLINE_STORE=redis://host:port/db (a SQLite store is loaded "
            "by RAPPORT_ENGINE=duckdb rapport materialize)"
        )


def record_loader(spark: SparkSession, lake: str, url: str) -> Loader:
    """What ``rapport materialize`` on Spark hands to
    :func:`features.online.materialize.materialize`: every customer's record built from
    the lake in the executors (:func:`records_frame`, cut into records by the DuckDB
    path's :func:`~features.online.materialize.records_of_batch`), merged with the
    acknowledged events, and written by the executors to the store at ``url`` (each task
    its own connection: parallel writers). Only a Redis store is shared by executors."""
    check_shared_store(url)
    schema = StructType(
        [StructField("written", LongType(), False), StructField("replayed", LongType(), False)]
    )

    def load(as_of: datetime, spec: FeatureSpec, live: Any) -> Tally:
        def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            store = open_store(url)
            try:
                for batch in batches:
                    tally = Tally()
                    store.put_many(
                        merge_live(records_of_batch(batch, spec), live, tally, as_of, spec)
                    )
                    yield pa.record_batch(
                        [pa.array([tally.written]), pa.array([tally.replayed])],
                        names=["written", "replayed"],
                    )
            finally:
                store.close()

        done = records_frame(spark, lake, as_of, spec).mapInArrow(write, schema)
        total = done.agg(F.sum("written"), F.sum("replayed")).collect()[0]
        return Tally(int(total[0] or 0), int(total[1] or 0))

    return load
