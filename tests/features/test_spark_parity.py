"""The same spec, compiled by Ibis for Spark, gives the DuckDB features exactly: as an
Ibis build on Spark tables, and as the lake job (``rapport features`` on Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ibis
import pandas as pd
import pytest
from sample_data import assert_features_equal, cutoff, random_tables, write_lake

from features.batch import build
from features.lake import features_uri, table_uri

pytestmark = pytest.mark.spark


@pytest.mark.parametrize("seed", [11, 12])
def test_spark_features_equal_duckdb(spark: Any, tmp_path: Path, seed: int) -> None:
    tables = random_tables(seed, customers=60, events=600)
    duck = write_lake(tables, tmp_path)
    for name in tables:
        spark.read.parquet(table_uri(str(tmp_path), name)).createOrReplaceTempView(name)
    spark_con = ibis.pyspark.connect(spark)
    for days in (200.0, 333.5, 700.0):
        as_of = cutoff(days)
        on_duckdb = build(duck, as_of)
        on_spark = build(spark_con, as_of)
        assert len(on_duckdb) > 10
        assert_features_equal(on_spark, on_duckdb, f"as of {as_of}")


@pytest.mark.slow  # ~25 s on two shared cores
def test_the_lake_job_writes_the_duckdb_features(spark: Any, tmp_path: Path) -> None:
    from features.spark import build_features, write_features

    lake = tmp_path / "lake"
    duck = write_lake(random_tables(13, customers=80, events=800), lake)
    for days in (150.0, 600.0):
        as_of = cutoff(days)
        uri = write_features(build_features(spark, str(lake), as_of), str(lake), as_of)
        assert uri == features_uri(str(lake), as_of)
        written = spark.read.parquet(uri).toPandas()
        assert (pd.to_datetime(written.pop("as_of"), utc=True) == pd.Timestamp(as_of)).all()
        written = written.sort_values("customer_id", ignore_index=True)
        expected = build(duck, as_of)
        assert len(expected) > 10
        assert_features_equal(written, expected, f"as of {as_of}")


def test_a_lake_without_tables_says_to_ingest(spark: Any, tmp_path: Path) -> None:
    from features.lake import LakeError
    from features.spark import build_features

    with pytest.raises(LakeError, match=r"no table 'customers' in the lake.*rapport ingest"):
        build_features(spark, str(tmp_path / "empty"), cutoff(10.0))


@pytest.mark.slow  # ~30 s on two shared cores
def test_rapport_features_on_spark_equals_duckdb(
    spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    from click.testing import CliRunner

    from rapport.cli import main
    from rapport.settings import reset_settings

    folder = tmp_path / "in"
    folder.mkdir()
    for name, frame in random_tables(14, customers=80, events=800).items():
        frame.to_parquet(folder / f"{name}.parquet")
    as_of = cutoff(400.0)
    runner = CliRunner()
    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    assert runner.invoke(main, ["ingest", str(folder)]).exit_code == 0
    on_spark = runner.invoke(main, ["features", "--as-of", as_of.isoformat()])
    assert on_spark.exit_code == 0, on_spark.output
    uri = features_uri(str(workspace / "lake"), as_of)
    assert f"written to {uri}" in on_spark.output
    refused = runner.invoke(main, ["features", "--out", str(tmp_path / "f.parquet")])
    assert refused.exit_code == 2 and "written to the lake" in refused.output
    monkeypatch.setenv("RAPPORT_ENGINE", "duckdb")
    reset_settings()
    out = tmp_path / "duck.parquet"
    on_duckdb = runner.invoke(main, ["features", "--as-of", as_of.isoformat(), "--out", str(out)])
    assert on_duckdb.exit_code == 0, on_duckdb.output
    # the same snapshot fits the same segment model: one version, stored by both runs
    stored = [line for line in on_duckdb.output.splitlines() if line.startswith("stored")]
    assert stored and stored[0] in on_spark.output
    from features.spec import default_spec

    expected = pd.read_parquet(out)[["customer_id", "as_of", *default_spec().names]]
    written = spark.read.parquet(uri).toPandas().sort_values("customer_id", ignore_index=True)
    written["as_of"] = pd.to_datetime(written["as_of"], utc=True)
    assert len(written) == len(expected) > 10
    assert_features_equal(written, expected.astype({"customer_id": object}), f"as of {as_of}")
