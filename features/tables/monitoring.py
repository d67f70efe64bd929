"""The warehouse tables of monitoring: time series a page can chart and a scheduler reads.

``rapport monitor`` (:mod:`training.monitor`) appends, per monitoring run:

* ``monitor_checks``: one row per check (the interface the scheduled cycle reads alerts
  from): ``run_id``, ``checked_at``, ``kind`` (churn, value, nba, features, skew, policy),
  ``check``, ``subject`` (what was checked: ``all``, ``tier A``, a feature, a score),
  ``value``, ``threshold`` (the alert bound, null for figures shown without one),
  ``level`` (ok, warn, alert) and ``detail`` (the scoring run and context, plain text);
* ``monitor_runs``: one row per monitoring run (as of, scoring runs read, counts, report);
* ``monitor_curves``: the points of calibration curves, PIT histograms and drift bins;
* ``monitor_peers``: per region peer check of a partly matured scoring run, what its
  customers did and what same-risk peers predicted (``observed``, ``expected`` and the
  ``variance`` of their difference, counts as positive sizes): the region's own history
  that the next runs' peer checks judge their gap against (:func:`load_peer_history`);
  likewise per first-days check (``active_shortfall``, ``revenue_shortfall``) and subject
  (``group`` = ``all``, ``tier A``, ``segment lost``, ``region north``), what its
  customers did in the elapsed days against what the champion predicted for the horizon,
  which the next runs judge a group's first-days ratio against.

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
PEERS = "monitor_peers"

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
PEERS_DDL = f"""CREATE TABLE IF NOT EXISTS {PEERS} (
    run_id VARCHAR, checked_at TIMESTAMPTZ, scoring_run VARCHAR, scoring_as_of TIMESTAMPTZ,
    days BIGINT, "check" VARCHAR, "group" VARCHAR, rows BIGINT, observed DOUBLE,
    expected DOUBLE, variance DOUBLE
)"""
PEER_COLUMNS = (
    "run_id",
    "checked_at",
    "scoring_run",
    "scoring_as_of",
    "days",
    "check",
    "group",
    "rows",
    "observed",
    "expected",
    "variance",
)
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


def record(
    db: Any,
    run: dict[str, Any],
    checks: pd.DataFrame,
    curves: pd.DataFrame,
    peers: pd.DataFrame | None = None,
) -> None:
    """Append one monitoring run (its row, checks, curves and peer figures) in one
    transaction."""
    with transaction(db):
        for ddl in (CHECKS_DDL, RUNS_DDL, CURVES_DDL, PEERS_DDL):
            db.execute(ddl)
        _append(db, CHECKS, checks, CHECK_COLUMNS)
        _append(db, CURVES, curves, CURVE_COLUMNS)
        if peers is not None:
            _append(db, PEERS, peers, PEER_COLUMNS)
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


def load_peer_history(db: Any, check: str, before: Any, runs: int) -> pd.DataFrame:
    """The figures of ``check`` (``group, scoring_run, scoring_as_of, days, rows,
    observed, expected, variance``) for the latest ``runs`` scoring runs with a cutoff before
    ``before`` (a scoring run judged by several monitoring runs counts once, as last
    judged); empty when none was recorded. Only figures whose elapsed days ended by
    ``before`` count: a monitor run more often than scoring judges an earlier run over
    days that reach into the judged run's own, which would put today's change into the
    history it is compared with."""
    columns = [
        "group",
        "scoring_run",
        "scoring_as_of",
        "days",
        "rows",
        "observed",
        "expected",
        "variance",
    ]
    if runs < 1 or PEERS not in table_names(db):
        return pd.DataFrame(columns=columns)
    query = f"""
        WITH last AS (
            SELECT *, row_number() OVER (
                PARTITION BY scoring_run, "group" ORDER BY checked_at DESC) AS k
            FROM {PEERS} WHERE "check" = ? AND scoring_as_of < ?
                AND scoring_as_of + to_days(CAST(days AS INTEGER)) <= ?
        ), kept AS (
            SELECT DISTINCT scoring_run, scoring_as_of FROM last
            ORDER BY scoring_as_of DESC LIMIT ?
        )
        SELECT {", ".join(f'last."{c}"' for c in columns)} FROM last
        JOIN kept USING (scoring_run) WHERE k = 1 ORDER BY scoring_as_of, "group"
    """
    return db.execute(query, [check, before, before, runs]).to_arrow_table().to_pandas()
