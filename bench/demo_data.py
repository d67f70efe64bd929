"""Benchmark the demo data simulator: rows per table, throughput, wall time, peak memory.

uv run python -m bench.demo_data --customers 100000
uv run python -m bench.demo_data --customers 1000000
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rapport.demo_data import generate, write


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--end", default="2025-06-01", help="last day of history (UTC)")
    args = parser.parse_args(argv)
    end = datetime.fromisoformat(args.end).replace(tzinfo=UTC)

    started = time.perf_counter()
    stage = [started]

    def progress(message: str) -> None:
        now = time.perf_counter()
        print(f"  [{now - started:7.1f}s] {message}", flush=True)
        stage[0] = now

    data = generate(args.customers, args.seed, end=end, progress=progress)
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write(data, Path(tmp), "parquet")
        written = time.perf_counter()
        sizes = {name: path.stat().st_size for name, path in paths.items()}

    total_rows = 0
    print(f"\n{'table':>16} {'rows':>12} {'parquet MB':>11}")
    for name, frame in data.tables().items():
        total_rows += len(frame)
        print(f"{name:>16} {len(frame):>12,} {sizes[name] / 1e6:>11.1f}")
    gen_s, write_s = generated - started, written - generated
    print(f"\ncustomers        {args.customers:,}")
    print(f"generate         {gen_s:.1f} s ({total_rows / gen_s:,.0f} rows/s)")
    print(f"write parquet    {write_s:.1f} s ({total_rows / write_s:,.0f} rows/s)")
    print(f"wall time        {written - started:.1f} s")
    print(f"peak memory      {_peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
