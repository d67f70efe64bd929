"""``rapport score`` on Spark: the same champions and ``Scorer`` in the executors give the
DuckDB path's scores, written to the lake partitioned by run, with the run recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sample_data import trained_home
from sample_data import warehouse_query as query

from features.lake import scores_uri
from features.tables.scores import RUNS, SCORES
from rapport.cli import main
from rapport.settings import reset_settings

pytestmark = [pytest.mark.spark, pytest.mark.slow]  # trains a workspace; Spark ~1 min

home, shared_home = trained_home("spark-scoring-home", customers=800, seed=8)
AS_OF = "2025-03-01"
#: columns that differ between two runs by design
RUN_COLUMNS = ["run_id", "scored_at"]


def assert_scores_equal(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """Same columns and rows; floats to 1e-9 relative; nulls in the same places."""
    assert sorted(left.columns) == sorted(right.columns)
    left = left.sort_values("customer_id", ignore_index=True)
    right = right.sort_values("customer_id", ignore_index=True)[list(left.columns)]
    assert list(left.customer_id) == list(right.customer_id)
    for col in left.columns:
        a, b = left[col], right[col]
        assert (a.isna() == b.isna()).all(), col
        known = a.notna()
        if pd.api.types.is_float_dtype(a):
            assert np.allclose(a[known], b[known], rtol=1e-9, atol=1e-12), col
        else:
            assert (a[known].astype(str) == b[known].astype(str)).all(), col


def test_spark_scores_equal_duckdb_and_land_in_the_lake_by_run(
    spark: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    on_duckdb = runner.invoke(main, ["score", "--as-of", AS_OF])
    assert on_duckdb.exit_code == 0, on_duckdb.output
    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    reset_settings()
    ingest = runner.invoke(main, ["ingest", str(home / "data")])  # idempotent: mirrors the lake
    assert ingest.exit_code == 0, ingest.output
    on_spark = runner.invoke(main, ["score", "--as-of", AS_OF])
    assert on_spark.exit_code == 0, on_spark.output
    runs = query(f"SELECT * FROM {RUNS} ORDER BY scored_at")
    assert len(runs) == 2
    duck_run, spark_run = runs.run_id
    folder = f"{scores_uri(str(home / 'lake'))}/run_id={spark_run}"
    assert f"written to {folder}" in on_spark.output
    assert "scored 800 customers" in on_spark.output or "customers as of" in on_spark.output
    # the same run metadata: rows, models, feature set, catalog, segment model, control
    same = ["as_of", "rows", "churn_version", "value_version", "nba_version", "feature_set"]
    same += ["catalog_version", "segments_version", "control_share", "control_salt"]
    pd.testing.assert_series_equal(
        runs.loc[0, same], runs.loc[1, same], check_names=False, check_dtype=False
    )
    expected = query(f"SELECT * FROM {SCORES} WHERE run_id = ?", [duck_run])
    written = spark.read.parquet(scores_uri(str(home / "lake"))).toPandas()
    assert set(written.run_id) == {spark_run} and len(written) == runs.rows[1] > 100
    for frame in (expected, written):
        frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    assert_scores_equal(written.drop(columns=RUN_COLUMNS), expected.drop(columns=RUN_COLUMNS))
    # a second Spark run appends its own partition; the first stays
    again = runner.invoke(main, ["score", "--as-of", AS_OF])
    assert again.exit_code == 0, again.output
    runs_on_disk = {p.name for p in Path(scores_uri(str(home / "lake"))).glob("run_id=*")}
    assert len(runs_on_disk) == 2 and f"run_id={spark_run}" in runs_on_disk
