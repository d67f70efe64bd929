"""``rapport score`` on Spark: the same champions and ``Scorer`` in the executors give the
DuckDB path's scores, written to the lake partitioned by run, with the run recorded; and
``rapport targets`` on Spark makes the DuckDB path's lists from them."""

from __future__ import annotations

import json
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def scored(home: Path, spark: Any) -> Iterator[tuple[str, str]]:
    """One run scored on DuckDB, then one on Spark (after an ingest that mirrors the
    lake): their run ids; the module's tests run with the Spark engine."""
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        reset_settings()
        on_duckdb = runner.invoke(main, ["score", "--as-of", AS_OF])
        assert on_duckdb.exit_code == 0, on_duckdb.output
        patch.setenv("RAPPORT_ENGINE", "spark")
        reset_settings()
        ingest = runner.invoke(main, ["ingest", str(home / "data")])  # mirrors the lake
        assert ingest.exit_code == 0, ingest.output
        on_spark = runner.invoke(main, ["score", "--as-of", AS_OF])
        assert on_spark.exit_code == 0, on_spark.output
        runs = query(f"SELECT run_id FROM {RUNS} ORDER BY scored_at")
        duck_run, spark_run = runs.run_id
        assert f"written to {scores_uri(str(home / 'lake'))}/run_id={spark_run}" in on_spark.output
        yield duck_run, spark_run
    reset_settings()


@pytest.fixture
def on_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_ENGINE", "spark")
    reset_settings()


def test_spark_scores_equal_duckdb_and_land_in_the_lake_by_run(
    spark: Any, home: Path, scored: tuple[str, str], on_spark: None
) -> None:
    runner = CliRunner()
    runs = query(f"SELECT * FROM {RUNS} ORDER BY scored_at").head(2)
    duck_run, spark_run = scored
    assert list(runs.run_id) == [duck_run, spark_run]
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


#: lists of every kind: a budget over the best actions (several costs; with opt-outs),
#: one action for a filter with top N, a saved list reading fresh features (filter,
#: budget, profitable only), everyone past a filter on a fresh feature in a chosen order
LISTS = {
    "budget": ["--budget", "300"],
    "action_top": ["--filter", "churn_probability > 0.3", "--action", "cross_sell", "--top", "25"],
    "saved": ["--list", "at_risk_high_value", "--budget", "800"],
    "everyone": ["--filter", "days_since_last_order >= 30", "--sort", "churn_probability:asc"],
}


def make_list(runner: CliRunner, args: list[str], run_id: str, out: Path) -> tuple[Any, Any]:
    """``rapport targets`` on the run: its members (the file) and its recorded stats."""
    done = runner.invoke(main, ["targets", *args, "--run", run_id, "--as-of", AS_OF, "--out", out])
    assert done.exit_code == 0, done.output
    (list_id,) = [w for w in done.output.split() if w.startswith("tl-")][:1]
    stats = query("SELECT stats FROM target_lists WHERE list_id = ?", [list_id]).stats[0]
    return pd.read_parquet(out), json.loads(stats)


def test_spark_target_lists_equal_duckdb(
    home: Path, scored: tuple[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    duck_run, spark_run = scored
    runner = CliRunner()
    ids = query(f"SELECT customer_id FROM {SCORES} WHERE run_id = ? ORDER BY 1", [duck_run])
    opted_out = tmp_path / "opted_out.txt"
    opted_out.write_text("\n".join(ids.customer_id[::7]))  # a seventh of the customers
    sizes = []
    for name, args in LISTS.items():
        args = [*args, "--suppress", str(opted_out)] if name == "budget" else args
        monkeypatch.setenv("RAPPORT_ENGINE", "duckdb")
        reset_settings()
        expected, expected_stats = make_list(runner, args, duck_run, tmp_path / f"{name}-d.parquet")
        monkeypatch.setenv("RAPPORT_ENGINE", "spark")
        reset_settings()
        got, got_stats = make_list(runner, args, spark_run, tmp_path / f"{name}-s.parquet")
        assert list(got.customer_id) == list(expected.customer_id), name
        assert list(got.action) == list(expected.action) and list(got["rank"]) == list(
            expected["rank"]
        ), name
        assert_scores_equal(got, expected)
        for key in ("count", "considered", "removed", "basis", "budget_method", "reach"):
            assert got_stats[key] == expected_stats[key], (name, key)
        assert got_stats["consent"] == expected_stats["consent"], name
        assert name != "budget" or got_stats["removed"]["suppressed"] > 0
        sizes.append(len(got))
    assert min(sizes) > 0 and sizes[1] == 25, sizes  # every list chooses someone; top cut
    # a run scored on DuckDB has no scores in the lake: the Spark engine says so
    refused = runner.invoke(main, ["targets", "--run", duck_run, "--as-of", AS_OF])
    assert refused.exit_code == 1 and "no scores in the lake" in refused.output
