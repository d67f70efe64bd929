"""The same spec, compiled by Ibis for Spark, gives the DuckDB features exactly."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ibis
import pytest
from sample_data import assert_features_equal, cutoff, random_tables

from features.batch import build

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.fail(
            "Java is not installed: the Spark parity test cannot run. "
            "Install it with `apt-get install -y openjdk-17-jre-headless` (.ci/run does)."
        )
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("rapport-parity")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.mark.parametrize("seed", [11, 12])
def test_spark_features_equal_duckdb(spark: Any, tmp_path: Path, seed: int) -> None:
    tables = random_tables(seed, customers=60, events=600)
    duck = ibis.duckdb.connect()
    for name, frame in tables.items():
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path)
        spark.read.parquet(str(path)).createOrReplaceTempView(name)
        duck.read_parquet(path, table_name=name)
    spark_con = ibis.pyspark.connect(spark)
    for days in (200.0, 333.5, 700.0):
        as_of = cutoff(days)
        on_duckdb = build(duck, as_of)
        on_spark = build(spark_con, as_of)
        assert len(on_duckdb) > 10
        assert_features_equal(on_spark, on_duckdb, f"as of {as_of}")
