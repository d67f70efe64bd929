"""Benchmark ``rapport score`` on local Spark against the DuckDB path (rows per second).

    RAPPORT_HOME=/path/to/workspace uv run python -m bench.spark_scoring \\
        --tracking-uri sqlite:///path/to/mlflow.db --cores 1 2

The workspace needs a warehouse with the contract tables (``rapport ingest``) and a
registry with ``churn@champion`` / ``value@champion`` (models trained on a small demo
score any size). The bench mirrors the warehouse's tables into the lake
(:func:`features.lake.export_tables`, as ``rapport ingest`` on Spark does), then scores the
same customers as of the same cutoff once on DuckDB (:func:`training.scoring.score_all`)
and once per ``--cores`` value on a fresh ``local[N]`` Spark (one process each:
:func:`training.scoring.score_on_spark`), and prints each path's stages and rows/s. Runs
stay in the workspace (``score_runs``, ``scores``, ``<lake>/scores``). Never fails on
timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from features.lake import export_tables
from features.timeutil import as_utc
from features.warehouse import connect, raw
from rapport.settings import get_settings, reset_settings


def _line(engine: str, run: object, seconds: float) -> str:
    rows = run.rows  # type: ignore[attr-defined]
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in run.timings.items())  # type: ignore[attr-defined]
    return (
        f"{engine:<14} {rows:>9,} customers in {seconds:6.1f}s end to end "
        f"({rows / seconds:8,.0f} rows/s); {stages}"
    )


def _one(engine: str, cores: int, as_of: datetime) -> None:
    """One scoring run in this process (the parent starts one process per run)."""
    from training.scoring import score_all, score_on_spark

    settings = get_settings()
    start = time.perf_counter()
    if engine == "duckdb":
        con = connect(settings.warehouse_path)
        run = score_all(con, as_of)
    else:
        from features.spark import session

        spark = session(settings, app="rapport-bench")
        con = connect(settings.warehouse_path)
        run = score_on_spark(con, spark, settings.lake, as_of)
    con.disconnect()
    print(
        _line(
            f"{engine} ({cores} core{'s' if cores > 1 else ''})", run, time.perf_counter() - start
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow store with the champions")
    parser.add_argument("--as-of", default=None, help="Cutoff (default: now)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="local[N] runs")
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "CORES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    reset_settings()
    as_of = as_utc(args.as_of) if args.as_of else datetime.now(UTC)
    if args.one:
        _one(args.one[0], int(args.one[1]), as_of)
        return
    settings = get_settings()
    con = connect(settings.warehouse_path)
    start = time.perf_counter()
    written = export_tables(raw(con), settings.lake)
    con.disconnect()
    print(f"lake export {json.dumps(written)} in {time.perf_counter() - start:.1f}s")
    runs = [("duckdb", os.cpu_count() or 1)] + [("spark", n) for n in args.cores]
    for engine, cores in runs:
        env = {**os.environ, "RAPPORT_ENGINE": engine}
        if engine == "spark":
            env["RAPPORT_SPARK_MASTER"] = f"local[{cores}]"
            env.setdefault("RAPPORT_SPARK_CONF", f"spark.sql.shuffle.partitions={2 * cores}")
        command = [sys.executable, "-m", "bench.spark_scoring", "--one", engine, str(cores)]
        subprocess.run([*command, "--as-of", as_of.isoformat()], env=env, check=True)


if __name__ == "__main__":
    main()
