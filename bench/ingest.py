"""Benchmark the validated ingest: seconds and rows/s per table, fresh load and re-run.

    uv run python -m bench.ingest --data /tmp/demo1m        # a folder of contract files
    uv run python -m bench.ingest --customers 100000        # generates the folder first

Loads the folder into a fresh warehouse in a temporary folder, one table at a time in the
load order (customers first, so each table's figure is its own), then ingests the whole
folder again in one call, which must change nothing (idempotent re-run: every row
already present). Prints seconds, rows/s and peak memory; never fails on timing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from features.ingest import LOAD_ORDER, IngestReport, discover_files, ingest
from features.warehouse import connect, raw
from rapport.truth import TRUTH_TABLES


def peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def generated(customers: int, seed: int, folder: Path) -> Path:
    from rapport.demo_data import generate, write

    write(generate(customers, seed), folder, "parquet")
    return folder


def line(label: str, rows: int, seconds: float, note: str = "") -> None:
    print(
        f"{label:<16} {rows:>12,} rows {seconds:8.2f} s {rows / seconds:>13,.0f} rows/s"
        f"  peak {peak_rss_mb():,.0f} MB  {note}",
        flush=True,
    )


def check(report: IngestReport) -> str:
    """A word on the outcome (the bench reports, it does not assert)."""
    bad = report.quarantined
    return f"{bad:,} quarantined" if bad else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder of <table>.parquet|csv files")
    parser.add_argument("--customers", type=int, default=100_000, help="generate (no --data)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rapport-bench-ingest-") as tmp:
        folder = args.data or generated(args.customers, args.seed, Path(tmp) / "data")
        files = discover_files(folder, as_is=TRUTH_TABLES)  # the demo's load: truth included
        con = connect(Path(tmp) / "warehouse.duckdb")
        db = raw(con)
        threads = db.execute("SELECT current_setting('threads')").fetchone()[0]  # type: ignore[index]
        print(f"data {folder}; DuckDB threads {threads}\n")
        print("fresh warehouse, one table per call:")
        total_rows, total_s = 0, 0.0
        names = [n for n in LOAD_ORDER if n in files] + [n for n in files if n not in LOAD_ORDER]
        for name in names:
            start = time.perf_counter()
            report = ingest(con, {name: files[name]}, datetime.now(UTC), TRUTH_TABLES)
            seconds = time.perf_counter() - start
            rows = report.tables[name].read
            total_rows, total_s = total_rows + rows, total_s + seconds
            line(name, rows, seconds, check(report))
        line("all tables", total_rows, total_s)

        print("\nre-run on the loaded warehouse, all files in one call (changes nothing):")
        start = time.perf_counter()
        report = ingest(con, files, datetime.now(UTC), TRUTH_TABLES)
        seconds = time.perf_counter() - start
        inserted = sum(t.inserted for t in report.tables.values() if not t.replaced)
        line("re-ingest", sum(t.read for t in report.tables.values()), seconds, check(report))
        print(f"rows inserted by the re-run: {inserted:,} (idempotent: 0 expected)")
        con.disconnect()
        size = (Path(tmp) / "warehouse.duckdb").stat().st_size
        print(f"warehouse file {size / 1e6:,.0f} MB")


if __name__ == "__main__":
    main()
