"""Benchmark ``rapport analytics``: a million customers, two snapshots, under a minute?

    uv run python -m bench.analytics --customers 1000000            # generate and ingest
    uv run python -m bench.analytics --data /tmp/demo1m             # a demo-data folder
    uv run python -m bench.analytics --warehouse w.duckdb           # an ingested warehouse

Analytics reads a scoring run; the benchmark writes one from the demo's ground truth (a
perfect model: churn = the true probability of no order, value = the true expected
spend with a +-50% band) at the truth cutoff, so no model has to be trained at this
size. It then runs :func:`training.analytics.run_analytics` as of the truth cutoff with
``--periods`` monthly periods (1 = two snapshots) and prints the time of the snapshot
feature builds apart from the rest (retention, cohorts, migration, equity, customer
share, segment map), the report and MLflow, and the warehouse writes. Never fails on
timing.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.tables.scores import RUNS, RUNS_DDL, SCORES
from features.warehouse import connect, raw
from rapport.demo_data import generate, write
from rapport.settings import get_settings, reset_settings
from rapport.truth import ingest_demo
from training.analytics import run_analytics


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def truth_scores(db: Any) -> datetime:
    """A scoring run at the truth cutoff from ``truth_customers``; returns the cutoff."""
    (as_of,) = db.execute("SELECT max(as_of) FROM truth_customers").fetchone()
    run_id = "sr-bench-truth"
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {SCORES} AS SELECT customer_id, as_of, "
        "CAST(NULL AS VARCHAR) AS run_id, p_no_order AS churn_probability, "
        "expected_spend AS value_mean, expected_spend AS value_p10, "
        "expected_spend AS value_p90 FROM truth_customers LIMIT 0"
    )
    db.execute(f"DELETE FROM {SCORES} WHERE run_id = ?", [run_id])
    db.execute(
        f"INSERT INTO {SCORES} BY NAME SELECT customer_id, as_of, ? AS run_id, "
        "p_no_order AS churn_probability, expected_spend AS value_mean, "
        "0.5 * expected_spend AS value_p10, 1.5 * expected_spend AS value_p90 "
        "FROM truth_customers",
        [run_id],
    )
    db.execute(RUNS_DDL)
    db.execute(f"DELETE FROM {RUNS} WHERE run_id = ?", [run_id])
    db.execute(
        f"INSERT INTO {RUNS} (run_id, as_of, scored_at) VALUES (?, ?, now())", [run_id, as_of]
    )
    return as_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--customers", type=int, default=1_000_000)
    source.add_argument("--data", type=Path, help="a `rapport demo-data` folder to ingest")
    source.add_argument(
        "--warehouse", type=Path, help="a warehouse with demo data and its truth (ingest_demo)"
    )
    parser.add_argument("--periods", type=int, default=1, help="monthly periods (1: 2 snapshots)")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    os.environ["RAPPORT_HOME"] = str(home)
    if args.warehouse:
        os.environ["RAPPORT_WAREHOUSE_URL"] = str(args.warehouse)
    reset_settings()
    settings = get_settings()
    settings.ensure_home()
    con = connect(settings.warehouse_path)
    if not args.warehouse:
        folder = args.data
        if folder is None:
            start = time.perf_counter()
            data = generate(args.customers, seed=1, end=datetime(2025, 6, 1, tzinfo=UTC))
            folder = home / "data"
            write(data, folder)
            del data
            print(f"demo data: {args.customers:,} customers in {time.perf_counter() - start:.0f}s")
        start = time.perf_counter()
        ingest_demo(con, folder, now=datetime.now(UTC))
        print(f"ingest: {time.perf_counter() - start:.0f}s")
    as_of = truth_scores(raw(con))
    print(f"workspace {home}; scores from the truth as of {as_of:%Y-%m-%d}")

    start = time.perf_counter()
    result = run_analytics(
        con, as_of, "month", periods=args.periods, log_to_mlflow=not args.no_mlflow
    )
    wall = time.perf_counter() - start
    t = result.timings
    beyond = wall - t["features"]
    customers = len(result.results.customers)
    print(f"\n{customers:,} customers, {args.periods + 1} snapshots, as of {as_of:%Y-%m-%d}:")
    print(f"  snapshot feature builds   {t['features']:6.1f}s")
    print(f"  analytics computations    {t['analytics']:6.1f}s")
    print(f"  report + MLflow           {t['report']:6.1f}s")
    print(f"  warehouse writes          {t['writing']:6.1f}s")
    print(f"  reading scores, results   {t['reading']:6.1f}s")
    print(f"  beyond the feature builds {beyond:6.1f}s (wall {wall:.1f}s); peak RSS "
          f"{peak_rss_mb():,.0f} MB")  # fmt: skip
    print("\n" + result.summary())
    con.disconnect()


if __name__ == "__main__":
    main()
