"""The warehouse tables of monitoring: time series a page can chart and a scheduler reads.

``rapport monitor`` (:mod:`training.monitor`) appends, per monitoring run:

* ``monitor_checks``: one row per check (the interface the scheduled cycle reads alerts
  from): ``run_id``, ``checked_at``, ``kind`` (churn, value, nba, features, skew, policy),
  ``check``, ``subject`` (what was checked: ``all``, ``tier A``, a feature, a score),
  ``value``, ``threshold`` (the alert bound, null for figures shown without one),
  ``level`` (ok, warn, alert) and ``detail`` (the scoring run and context, plain text);
* ``monitor_runs``: one row per monitoring run (as of, scoring runs read, counts, report);
* ``monitor_curves``: the points of calibration curves, PIT histograms and drift bins.

History is never overwritten. Reading needs only a read-only connection.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from features.warehouse import table_names, transaction

CHECKS = "monitor_checks"
RUNS = "monitor_runs"
CURVES = "monitor_curves"

CHECKS_DDL = f"""CREATE TABLE IF NOT EXISTS {CHECKS} (
    run_id VARCHAR, checked_at TIMESTAMPTZ, kind VARCHAR, "check" VARCHAR, subject VARCHAR,
    value DOUBLE, threshold DOUBLE, level VARCHAR, detail VARCHAR
)"""
RUNS_DDL = f"""CREATE TABLE IF NOT EXISTS {RUNS} (
    run_id VARCHAR PRIMARY KEY, checked_at TIMESTAMPTZ, as_of TIMESTAMPTZ,
    scoring_runs VARCHAR, checks BIGINT, warnings BIGINT, alerts BIGINT, seconds DOUBLE,
    report VARCHAR, mlflow_run_id VARCHAR
)"""
CURVES_DDL = f"""CREATE TABLE IF NOT EXISTS {CURVES} (
    run_id VARCHAR, checked_at TIMESTAMPTZ, curve VARCHAR, subject VARCHAR,
    scoring_run VARCHAR, x DOUBLE, y DOUBLE, expected DOUBLE, n BIGINT
)"""
CHECK_COLUMNS = (
    "run_id",
    "checked_at",
    "kind",
    "check",
    "subject",
    "value",
    "threshold",
    "level",
    "detail",
)
CURVE_COLUMNS = (
    "run_id",
    "checked_at",
    "curve",
    "subject",
    "scoring_run",
    "x",
    "y",
    "expected",
    "n",
)


def _append(db: Any, table: str, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    if frame.empty:
        return
    frame = frame[list(columns)]
    stamps = [c for c in columns if isinstance(frame[c].dtype, pd.DatetimeTZDtype)]
    # time zones go to Arrow by hand: pyarrow reads them through a deprecated pandas path
    arrow = pa.Table.from_pandas(frame.drop(columns=stamps), preserve_index=False)
    for name in stamps:
        naive = frame[name].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
        arrow = arrow.append_column(name, pa.array(naive).cast(pa.timestamp("us", tz="UTC")))
    db.register("monitor_rows", arrow)
    try:
        db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM monitor_rows")
    finally:
        db.unregister("monitor_rows")


def record(db: Any, run: dict[str, Any], checks: pd.DataFrame, curves: pd.DataFrame) -> None:
    """Append one monitoring run (its row, checks and curves) in one transaction."""
    with transaction(db):
        for ddl in (CHECKS_DDL, RUNS_DDL, CURVES_DDL):
            db.execute(ddl)
        _append(db, CHECKS, checks, CHECK_COLUMNS)
        _append(db, CURVES, curves, CURVE_COLUMNS)
        db.execute(
            f"INSERT INTO {RUNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run["run_id"],
                run["checked_at"],
                run["as_of"],
                run["scoring_runs"],
                run["checks"],
                run["warnings"],
                run["alerts"],
                run["seconds"],
                run["report"],
                run["mlflow_run_id"],
            ],
        )


def load_checks(db: Any, run_id: str | None = None) -> pd.DataFrame:
    """Every recorded check (or one run's), oldest first; empty before the first run."""
    have = table_names(db)
    if CHECKS not in have:
        return pd.DataFrame(columns=list(CHECK_COLUMNS))
    where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
    query = db.execute(f"SELECT * FROM {CHECKS} {where} ORDER BY checked_at", params)
    return query.to_arrow_table().to_pandas()
