"""``rapport resolve`` with Splink on Spark (``RAPPORT_ENGINE=spark``): on the demo's
identities, the same links, weights and clusters as Splink on DuckDB, and the linkage
judged against the simulator's truth at the DuckDB test's floors
(``tests/features/test_resolve.py``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from features.resolve import resolve
from features.warehouse import connect, raw
from rapport.demo_data import generate, write
from rapport.truth import compare_identity, ingest_demo

pytestmark = [pytest.mark.spark, pytest.mark.slow]

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


def test_splink_on_spark_links_as_on_duckdb(spark: object, tmp_path: object) -> None:
    from features.spark import splink_api

    data = generate(RECORDS, seed=11, end=END, years=1.0)
    files = write(data, tmp_path / "files")["customers"].parent  # type: ignore[operator]
    con = connect(tmp_path / "warehouse.duckdb")  # type: ignore[operator]
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
        pd.testing.assert_series_equal(again[column], links[column], rtol=0, atol=TOLERANCE)
    # the linkage against the truth: the DuckDB test's floors
    assert figures["f1"] >= 0.97
    assert figures["precision"] >= 0.97 and figures["recall"] >= 0.96
