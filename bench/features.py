"""Benchmark the batch feature build against a hand-written DuckDB query, in one run.

    uv run python -m bench.features --customers 1000000     # generates + ingests if needed
    uv run python -m bench.features --warehouse path/to/warehouse.duckdb

Prints wall time, rows/s and peak memory for the full build at one cutoff and at six
monthly cutoffs, then the RFM part (recency, frequency and monetary over 7/30/90/365 days)
as a hand-written SQL query and through the spec, with their ratio.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from features.batch import build, build_many
from features.spec import WINDOWS, Agg, FeatureSpec
from features.warehouse import connect, raw


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rfm_spec() -> FeatureSpec:
    aggs = [Agg("days_since_last_order", "orders", "days_since_last", "order", "ordered_at")]
    for days in WINDOWS:
        aggs.append(Agg(f"orders_{days}d", "orders", "count", "orders", days=days))
        aggs.append(Agg(f"spend_{days}d", "orders", "sum", "spend", "amount", days=days))
    return FeatureSpec(aggs=tuple(aggs), derived=(), attributes=())


def hand_written_rfm(con: object, as_of: datetime) -> pd.DataFrame:
    ts = f"TIMESTAMPTZ '{as_of.isoformat()}'"
    windows = ",\n".join(
        f"count(*) FILTER (WHERE o.ordered_at >= {ts} - INTERVAL {d} DAY) AS orders_{d}d, "
        f"coalesce(sum(o.amount) FILTER (WHERE o.ordered_at >= {ts} - INTERVAL {d} DAY), 0) "
        f"AS spend_{d}d"
        for d in WINDOWS
    )
    sql = f"""
        SELECT c.customer_id,
               (epoch_us({ts}) - epoch_us(max(o.ordered_at))) / 86400e6 AS days_since_last_order,
               {windows}
        FROM customers c LEFT JOIN orders o
          ON o.customer_id = c.customer_id AND o.ordered_at < {ts}
        WHERE c.signup_at < {ts}
        GROUP BY c.customer_id ORDER BY c.customer_id"""
    return raw(con).execute(sql).df()  # type: ignore[arg-type]


def timed(label: str, fn, rows_in: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    print(
        f"{label:<34} {seconds:8.2f} s  {len(out):>10,} customers  "
        f"{rows_in / seconds:>12,.0f} events/s  peak {peak_rss_mb():,.0f} MB"
    )
    return seconds


def prepare(customers: int, seed: int) -> Path:
    from features.ingest import discover_files, ingest
    from rapport.demo_data import generate, write

    folder = Path(tempfile.mkdtemp(prefix="rapport-bench-"))
    data = generate(customers, seed)
    write(data, folder / "data", "parquet")
    con = connect(folder / "warehouse.duckdb")
    ingest(con, discover_files(folder / "data"), now=datetime.now(UTC))
    return folder / "warehouse.duckdb"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, help="existing warehouse (else generated)")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    path = args.warehouse or prepare(args.customers, args.seed)
    con = connect(path, read_only=True)
    db = raw(con)
    counts = {
        t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
        for t in ("customers", "orders", "interactions", "campaign_log")
    }
    events = counts["orders"] + counts["interactions"] + counts["campaign_log"]
    end = db.execute("SELECT max(ordered_at) FROM orders").fetchone()[0]  # type: ignore[index]
    as_of = pd.Timestamp(end).tz_convert("UTC").normalize().to_pydatetime()
    print(f"warehouse {path}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    threads = db.execute("SELECT current_setting('threads')").fetchone()[0]  # type: ignore[index]
    print(f"cutoff {as_of:%Y-%m-%d}; DuckDB threads {threads}")

    timed("full build, 1 cutoff", lambda: build(con, as_of), events)
    cutoffs = [as_of - timedelta(days=30 * i) for i in range(6)]
    timed("full build, 6 monthly cutoffs", lambda: build_many(con, cutoffs), events * 6)
    hand = timed("RFM, hand-written SQL", lambda: hand_written_rfm(con, as_of), counts["orders"])
    spec = timed("RFM, through the spec", lambda: build(con, as_of, rfm_spec()), counts["orders"])
    print(f"spec / hand-written ratio: {spec / hand:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
