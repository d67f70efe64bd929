"""``rapport resolve`` with Splink on Spark (``RAPPORT_ENGINE=spark``): on the demo's
identities, the same links, weights and clusters as Splink on DuckDB, and the linkage
judged against the simulator's truth at the DuckDB test's floors
(``tests/features/test_resolve.py``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from features.resolve import resolve
from features.warehouse import connect, raw
from rapport.cli import main
from rapport.demo_data import generate, write
from rapport.settings import Settings, reset_settings
from rapport.truth import compare_identity, ingest_demo

END = datetime(2025, 1, 1, tzinfo=UTC)
#: records: at most 632, so that Splink's u sampling (2e5 pairs) takes every record on
#: both backends (a sample drawn by DuckDB's and Spark's random generators would differ)
RECORDS = 600
#: match weights are sums of logs of the same probabilities computed in another order
#: (Spark's and DuckDB's aggregates): equal to far below a displayed tenth of a bit
TOLERANCE = 1e-9


def _links(con: object) -> pd.DataFrame:
    return (
        raw(con)
        .execute("SELECT * EXCLUDE (resolved_at) FROM identity_links")
        .df()
        .sort_values(["customer_id", "other_customer_id"])
        .reset_index(drop=True)
    )


def _clusters(con: object) -> pd.Series:
    frame = raw(con).execute("SELECT customer_id, cluster_id FROM identity_clusters").df()
    return frame.set_index("customer_id")["cluster_id"].sort_index()


@pytest.mark.spark
def test_every_session_carries_splink_jar_after_the_users(spark: Any) -> None:
    from features.spark import session_conf, splink_jar

    jar = Path(splink_jar())
    assert jar.is_file() and jar.name.endswith("_spark4.x.jar")
    conf = session_conf(Settings(spark_conf='{"spark.jars": "/opt/a.jar, /opt/b.jar"}'))
    assert conf["spark.jars"] == f"/opt/a.jar,/opt/b.jar,{jar}"
    assert session_conf(Settings())["spark.jars"] == str(jar)
    assert str(jar) in spark.conf.get("spark.jars")  # type: ignore[attr-defined]


@pytest.mark.spark
@pytest.mark.slow
def test_splink_on_spark_links_as_on_duckdb(spark: object, tmp_path: Path) -> None:
    from features.spark import splink_api

    data = generate(RECORDS, seed=11, end=END, years=1.0)
    files = write(data, tmp_path / "files")["customers"].parent
    con = connect(tmp_path / "warehouse.duckdb")
    ingest_demo(con, files, now=END)

    started = time.perf_counter()
    on_duckdb = resolve(con, END)
    duckdb_seconds = time.perf_counter() - started
    links, clusters = _links(con), _clusters(con)

    started = time.perf_counter()
    on_spark = resolve(con, END + timedelta(days=1), splink_api=splink_api(spark))
    spark_seconds = time.perf_counter() - started
    figures = compare_identity(con)
    assert figures is not None
    print(
        f"\nresolve of {RECORDS} demo records (seed 11): DuckDB {duckdb_seconds:.1f} s, "
        f"Spark {spark_seconds:.1f} s; on Spark precision {figures['precision']:.3f}, "
        f"recall {figures['recall']:.3f}, F1 {figures['f1']:.3f}"
    )

    assert on_duckdb.probabilistic_links > 0
    assert on_spark.probabilistic_links == on_duckdb.probabilistic_links
    # the same clusters: the second resolution (on Spark) recorded no change
    assert (on_spark.merges, on_spark.splits) == (0, 0)
    assert on_spark.clusters == on_duckdb.clusters
    pd.testing.assert_series_equal(_clusters(con), clusters)
    # the same links, rules and evidence (partial weights to a tenth of a bit) ...
    again = _links(con)
    same = ["customer_id", "other_customer_id", "rule", "evidence"]
    pd.testing.assert_frame_equal(again[same], links[same])
    # ... and Splink's match weights and probabilities
    for column in ("match_weight", "match_probability"):
        gap = (again[column] - links[column]).abs().max()
        print(f"{column}: largest difference between the backends {gap:.2e}")
        pd.testing.assert_series_equal(again[column], links[column], rtol=0, atol=TOLERANCE)
    # the linkage against the truth: the DuckDB test's floors
    assert figures["f1"] >= 0.97
    assert figures["precision"] >= 0.97 and figures["recall"] >= 0.96


@pytest.mark.spark
@pytest.mark.slow
def test_cli_resolve_on_the_spark_engine(
    spark: object, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RAPPORT_ENGINE=spark rapport resolve`` runs Splink on Spark (the tests' session,
    reused) and reports as on DuckDB, without identifiers."""
    data = generate(300, seed=5, end=END, years=0.5)
    files = write(data, tmp_path / "files")["customers"].parent
    con = connect(workspace / "warehouse.duckdb")
    ingest_demo(con, files, now=END)
    con.disconnect()
    outputs = {}
    for engine in ("duckdb", "spark"):
        monkeypatch.setenv("RAPPORT_ENGINE", engine)
        reset_settings()
        result = CliRunner().invoke(main, ["resolve", "--compare-truth"])
        assert result.exit_code == 0, result.output
        outputs[engine] = result.output
    assert "customers 300" in outputs["spark"] and "precision" in outputs["spark"]
    # the second run found the same persons: nothing merged or split
    assert "changes recorded: 0 merged, 0 split" in outputs["spark"]
    assert outputs["spark"].splitlines()[:2] == outputs["duckdb"].splitlines()[:2]
    for email in data.customers["email"].dropna():
        assert email.strip().lower() not in outputs["spark"].lower()
