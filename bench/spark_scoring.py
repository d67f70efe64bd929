"""Benchmark ``rapport score`` on local Spark against the DuckDB path (rows per second).

    RAPPORT_HOME=/path/to/workspace uv run python -m bench.spark_scoring \\
        --tracking-uri sqlite:///path/to/mlflow.db --cores 1 2

The workspace needs a warehouse with the contract tables (``rapport ingest``) and a
registry with ``churn@champion`` / ``value@champion`` (models trained on a small demo
score any size). The bench mirrors the warehouse's tables into the lake
(:func:`features.lake.export_tables`, as ``rapport ingest`` on Spark does), then scores the
same customers as of the same cutoff, for each ``--cores`` value N, on DuckDB
(:func:`training.scoring.score_all`) and on a fresh ``local[N]`` Spark, each pinned to N
CPUs (one process each:
:func:`training.scoring.score_on_spark`), and prints each path's stages and rows/s. Runs
stay in the workspace (``score_runs``, ``scores``, ``<lake>/scores``). Never fails on
timing.

``--replicate K`` scores a copy of the workspace with every customer K times (their
orders, interactions and campaign history copied with ids suffixed ``-1`` ...; the
champions stay those of the workspace; the copies share their originals' order,
interaction and decision ids, which scoring never reads as keys): a million customers
from the 20k demo in a minute instead of an hour of generating and ingesting. The copy is
removed at the end unless ``--keep``::

    RAPPORT_HOME=/tmp/ws20k uv run python -m bench.spark_scoring \\
        --tracking-uri sqlite:////tmp/ws20k/mlruns/mlflow.db --replicate 50 --cores 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from features.lake import export_tables
from features.timeutil import as_utc
from features.warehouse import connect, raw
from rapport.settings import get_settings, parse_spark_conf, reset_settings


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
        raw(con).execute(f"SET threads = {cores}")
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


def _conf(user: str, cores: int) -> str:
    """The user's RAPPORT_SPARK_CONF (``k=v`` pairs) with the bench's defaults for the
    keys it leaves out: two shuffle partitions a core, a driver heap that holds a
    million customers' features (``local[N]`` runs the executors in the driver), and
    8 MB file splits: the bench's lake holds each table as one file (54 MB of orders for
    a million customers), which Spark's default 128 MB splits would scan in one task,
    whatever the cores; a real lake of that size has many files."""
    conf = {
        "spark.sql.shuffle.partitions": str(2 * cores),
        "spark.driver.memory": "8g",
        "spark.sql.files.maxPartitionBytes": "8m",
    }
    conf.update(parse_spark_conf(user) if user else {})
    return ",".join(f"{k}={v}" for k, v in conf.items())


def _on_cores(cores: int) -> Callable[[], None] | None:
    """Pins the run (the JVM and its Python workers) to ``cores`` CPUs where the OS
    allows: ``local[1]`` alone still runs the JVM's garbage collector and compiler, and
    the Python workers, on the other CPUs, which is not one core's throughput."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))  # the CPUs this process may use, not 0..N-1
    if cores >= len(allowed):
        return None
    return lambda: os.sched_setaffinity(0, allowed[:cores])


def _replicated(home: Path, times: int) -> Path:
    """A copy of the workspace ``home`` (without its lake) with every customer ``times``
    times in the contract tables scoring reads."""
    import duckdb

    from bench.ui import copy_customers

    copy = Path(tempfile.mkdtemp(prefix=f"bench-spark-x{times}-"))
    shutil.copytree(home, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("lake"))
    start = time.perf_counter()
    db = duckdb.connect(str(copy / "warehouse.duckdb"))
    try:
        copy_customers(db, ("customers", "orders", "interactions", "campaign_log"), times)
        db.execute("CHECKPOINT")
        customers = db.execute("SELECT count(*) FROM customers").fetchone()[0]  # type: ignore[index]
    finally:
        db.close()
    print(f"{customers:,} customers in {copy} ({time.perf_counter() - start:.0f} s)")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow store with the champions")
    parser.add_argument("--as-of", default=None, help="Cutoff (default: now)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="local[N] runs")
    parser.add_argument("--replicate", type=int, default=1, metavar="K")
    parser.add_argument(
        "--keep", action="store_true", help="keep the --replicate copy (default: removed)"
    )
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "CORES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    reset_settings()
    as_of = as_utc(args.as_of) if args.as_of else datetime.now(UTC)
    if args.one:
        _one(args.one[0], int(args.one[1]), as_of)
        return
    copy = _replicated(get_settings().home, args.replicate) if args.replicate > 1 else None
    try:
        if copy is not None:
            os.environ["RAPPORT_HOME"] = str(copy)
            reset_settings()
        _compare(args.cores, as_of)
    finally:
        if copy is not None and not args.keep:
            shutil.rmtree(copy, ignore_errors=True)
        elif copy is not None:
            print(f"kept {copy}")


def _compare(cores_runs: list[int], as_of: datetime) -> None:
    """The lake export, then one process per engine and CPU count."""
    settings = get_settings()
    con = connect(settings.warehouse_path)
    start = time.perf_counter()
    written = export_tables(raw(con), settings.lake)
    con.disconnect()
    print(f"lake export {json.dumps(written)} in {time.perf_counter() - start:.1f}s")
    runs = [(engine, n) for engine in ("duckdb", "spark") for n in cores_runs]
    for engine, cores in runs:
        env = {**os.environ, "RAPPORT_ENGINE": engine, "OMP_NUM_THREADS": str(cores)}
        if engine == "spark":
            env["RAPPORT_SPARK_MASTER"] = f"local[{cores}]"
            env["RAPPORT_SPARK_CONF"] = _conf(env.get("RAPPORT_SPARK_CONF", ""), cores)
        command = [sys.executable, "-m", "bench.spark_scoring", "--one", engine, str(cores)]
        subprocess.run(
            [*command, "--as-of", as_of.isoformat()],
            env=env,
            check=True,
            preexec_fn=_on_cores(cores),
        )


if __name__ == "__main__":
    main()
