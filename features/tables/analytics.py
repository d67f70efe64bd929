"""The warehouse tables of customer-base analytics, written by ``rapport analytics``.

Every run of :func:`training.analytics.run_analytics` appends one row to
``analytics_runs`` and its results, stamped with the same ``run_id``, to the tables of
:data:`TABLES` in one transaction (a failed run leaves nothing; history is never
overwritten). Readers -- the job itself for the previous run, the marketers' web page --
use :func:`latest_run` and :func:`load_run`, which need only a read-only connection and
import nothing from ``models`` or ``training``.

Each table's columns are declared once below with their meaning; the README's analytics
section explains how to read them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa

from features.timeutil import as_utc
from features.warehouse import table_names, transaction

RUNS = "analytics_runs"

#: column -> (DuckDB type, meaning), per table; ``run_id`` comes first everywhere
Columns = dict[str, tuple[str, str]]

RUN_COLUMNS: Columns = {
    "run_id": ("VARCHAR", "this run (ar-<UTC time>-<hex>)"),
    "as_of": ("TIMESTAMPTZ", "the instant the run describes (end of the latest period)"),
    "period": ("VARCHAR", "month or quarter"),
    "periods": ("BIGINT", "periods of history measured"),
    "created_at": ("TIMESTAMPTZ", "when the run was made"),
    "scores_run_id": ("VARCHAR", "the scoring run whose predictions were used"),
    "scores_as_of": ("TIMESTAMPTZ", "that scoring run's as-of"),
    "previous_run_id": ("VARCHAR", "the latest earlier run (by as-of) compared with, if any"),
    "customers": ("BIGINT", "customers known at as_of"),
    "active_customers": ("BIGINT", "customers with an order in the 365 days before as_of"),
    "seconds": ("DOUBLE", "run time beyond the feature builds"),
    "feature_seconds": ("DOUBLE", "time of the snapshot feature builds"),
    "settings": ("VARCHAR", "JSON: the wallet estimate's quantile and groups, projection steps"),
    "metrics": ("VARCHAR", "JSON: the headline figures (also logged to MLflow)"),
    "report_path": ("VARCHAR", "the HTML report written under the workspace"),
    "mlflow_run_id": ("VARCHAR", "the MLflow run holding the report and tables"),
}

RETENTION_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "dimension": ("VARCHAR", "overall, abc_tier, region or acquisition_channel"),
    "grp": ("VARCHAR", "the group within the dimension (all for overall)"),
    "period_start": ("TIMESTAMPTZ", "start of the period (inclusive)"),
    "period_end": ("TIMESTAMPTZ", "end of the period (exclusive)"),
    "active_previous": ("BIGINT", "customers with an order in the previous period"),
    "active": ("BIGINT", "customers with an order in this period"),
    "retained": ("BIGINT", "active in both periods"),
    "churned": ("BIGINT", "active in the previous period, not in this one"),
    "reactivated": ("BIGINT", "active now, not in the previous period, ordered before it"),
    "new": ("BIGINT", "first order in this period"),
    "retention_rate": ("DOUBLE", "retained / active_previous (repeat-purchase retention)"),
    "retention_low": ("DOUBLE", "95% Wilson interval of the retention rate, low"),
    "retention_high": ("DOUBLE", "95% Wilson interval of the retention rate, high"),
    "survival_rate": (
        "DOUBLE",
        "estimated share of the previous period's active customers still customers at the "
        "end of this one (mean MBG/NBD P(alive))",
    ),
}

COHORT_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "cohort_start": ("TIMESTAMPTZ", "start of the period the cohort signed up in"),
    "period_start": ("TIMESTAMPTZ", "start of the period measured"),
    "periods_since": ("BIGINT", "periods since the cohort's own (0 = the signup period)"),
    "cohort_customers": ("BIGINT", "customers who signed up in the cohort period"),
    "active": ("BIGINT", "of them, customers with an order in this period"),
    "active_rate": ("DOUBLE", "active / cohort_customers (the triangle's cells)"),
    "active_previous": ("BIGINT", "of them, customers with an order in the previous period"),
    "retained": ("BIGINT", "active in this and the previous period"),
    "retention_rate": ("DOUBLE", "retained / active_previous"),
}

EQUITY_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "as_of": ("TIMESTAMPTZ", ""),
    "horizon_days": ("BIGINT", "the value model's horizon: equity is value over it"),
    "customers": ("BIGINT", "active customers counted"),
    "unscored": ("BIGINT", "active customers without a score (signed up after the scoring)"),
    "equity": ("DOUBLE", "sum of predicted value (value_mean) over the active customers"),
    "equity_low": ("DOUBLE", "80% interval of the realised total, low (independent customers)"),
    "equity_high": ("DOUBLE", "80% interval of the realised total, high"),
    "previous_run_id": ("VARCHAR", "the run compared with (null for the first run)"),
    "previous_as_of": ("TIMESTAMPTZ", ""),
    "previous_equity": ("DOUBLE", "the previous run's equity"),
    "retained": ("DOUBLE", "previous value of customers active in both runs"),
    "lost": ("DOUBLE", "previous value of customers active then, not now"),
    "value_change": ("DOUBLE", "change in value of the customers active in both runs"),
    "reactivated": ("DOUBLE", "value of customers back after a lapse"),
    "new": ("DOUBLE", "value of customers whose first order came after the previous run"),
    "retained_customers": ("BIGINT", ""),
    "lost_customers": ("BIGINT", ""),
    "reactivated_customers": ("BIGINT", ""),
    "new_customers": ("BIGINT", ""),
}

SHARE_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "dimension": ("VARCHAR", "overall, rfm_segment, abc_tier or region"),
    "grp": ("VARCHAR", ""),
    "customers": ("BIGINT", "active customers with positive spend"),
    "spend": ("DOUBLE", "their yearly spend with us (last 365 days, annualised)"),
    "potential": ("DOUBLE", "their estimated yearly spending potential (wallet)"),
    "share": ("DOUBLE", "spend / potential: the share of wallet captured"),
    "median_share": ("DOUBLE", "median of the customers' own shares"),
    "headroom": ("DOUBLE", "potential - spend: what is spent elsewhere"),
}

MIGRATION_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "kind": ("VARCHAR", "rfm_segment or abc_tier"),
    "customer_group": ("VARCHAR", "all (treated / control once the control group exists)"),
    "from_as_of": ("TIMESTAMPTZ", "the earlier snapshot"),
    "to_as_of": ("TIMESTAMPTZ", "the later snapshot"),
    "from_state": ("VARCHAR", ""),
    "to_state": ("VARCHAR", ""),
    "customers": ("BIGINT", "customers who moved from from_state to to_state"),
    "probability": ("DOUBLE", "customers / customers in from_state"),
    "probability_low": ("DOUBLE", "95% Wilson interval, low"),
    "probability_high": ("DOUBLE", "95% Wilson interval, high"),
    "value_from": ("DOUBLE", "their 365-day net spend at the earlier snapshot"),
    "value_to": ("DOUBLE", "their 365-day net spend at the later snapshot"),
}

MIX_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "kind": ("VARCHAR", "rfm_segment or abc_tier"),
    "basis": (
        "VARCHAR",
        "current, projected (steps ahead), long_run (the chain's limit from the current mix)",
    ),
    "steps": ("BIGINT", "periods ahead (0 for current, null for long_run)"),
    "state": ("VARCHAR", ""),
    "share": ("DOUBLE", "share of the customers known at as_of"),
    "customers": ("DOUBLE", "share x those customers"),
}

BACKTEST_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "kind": ("VARCHAR", "rfm_segment or abc_tier"),
    "fitted_from": ("TIMESTAMPTZ", "the chain is fitted on fitted_from -> start"),
    "start": ("TIMESTAMPTZ", "projected from the mix here ..."),
    "target": ("TIMESTAMPTZ", "... to here, and compared with the realised mix"),
    "customers": ("BIGINT", "customers known at start"),
    "markov_error": ("DOUBLE", "total variation distance, Markov projection vs realised"),
    "naive_error": ("DOUBLE", "the same for the naive forecast (the mix stays as at start)"),
}

MAP_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "segment": ("VARCHAR", "RFM segment"),
    "customers": ("BIGINT", "customers in the segment (point size)"),
    "customer_share": ("DOUBLE", "share of the customers known at as_of"),
    "loyalty": ("DOUBLE", "x: mean loyalty index 0..100 (relationship strength)"),
    "value": ("DOUBLE", "y: mean predicted value per customer over the horizon"),
    "churn_risk": ("DOUBLE", "colour: mean churn probability"),
    "equity": ("DOUBLE", "sum of predicted value"),
    "quadrant": ("VARCHAR", "plain-language reading of the point's quadrant"),
    "previous_customers": ("BIGINT", "the same in the previous run (movement), else null"),
    "previous_loyalty": ("DOUBLE", ""),
    "previous_value": ("DOUBLE", ""),
    "previous_churn_risk": ("DOUBLE", ""),
}

CUSTOMER_COLUMNS: Columns = {
    "run_id": ("VARCHAR", ""),
    "customer_id": ("VARCHAR", ""),
    "region": ("VARCHAR", ""),
    "acquisition_channel": ("VARCHAR", ""),
    "active": ("BOOLEAN", "an order in the 365 days before as_of"),
    "rfm_segment": ("VARCHAR", ""),
    "abc_tier": ("VARCHAR", ""),
    "loyalty_index": ("DOUBLE", "0..100, see the README"),
    "p_alive": ("DOUBLE", "MBG/NBD probability of still being a customer"),
    "spend_365d": ("DOUBLE", "net spend in the 365 days before as_of"),
    "annual_spend": ("DOUBLE", "spend_365d per year of tenure"),
    "potential": ("DOUBLE", "estimated yearly spending potential (null unless spending)"),
    "wallet_share": ("DOUBLE", "annual_spend / potential"),
    "churn_probability": ("DOUBLE", "from the scoring run"),
    "value_mean": ("DOUBLE", "from the scoring run"),
    "value_p10": ("DOUBLE", ""),
    "value_p90": ("DOUBLE", ""),
}

#: result table -> its columns, in write order
TABLES: dict[str, Columns] = {
    "analytics_retention": RETENTION_COLUMNS,
    "analytics_cohorts": COHORT_COLUMNS,
    "analytics_equity": EQUITY_COLUMNS,
    "analytics_share": SHARE_COLUMNS,
    "analytics_migration": MIGRATION_COLUMNS,
    "analytics_mix": MIX_COLUMNS,
    "analytics_backtest": BACKTEST_COLUMNS,
    "analytics_segment_map": MAP_COLUMNS,
    "analytics_customers": CUSTOMER_COLUMNS,
}


class NoAnalyticsError(LookupError):
    """No analytics run in the warehouse yet (the message says what to run)."""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ddl(table: str, columns: Columns) -> str:
    cols = ", ".join(f"{_quoted(c)} {t}" for c, (t, _) in columns.items())
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"


def write_run(db: Any, run: Mapping[str, Any], results: Mapping[str, pd.DataFrame]) -> None:
    """Append one run (a row of ``analytics_runs``) and its result tables (every table of
    :data:`TABLES`, without ``run_id``: it is added) in one transaction of a raw DuckDB
    connection. Columns are cast to the declared types; a missing column is an error."""
    unknown = sorted(set(results) - set(TABLES))
    missing = sorted(set(TABLES) - set(results))
    if unknown or missing:
        raise ValueError(f"analytics tables: unknown {unknown}, missing {missing}")
    with transaction(db):
        db.execute(ddl(RUNS, RUN_COLUMNS))
        _insert(db, RUNS, RUN_COLUMNS, pd.DataFrame([{c: run.get(c) for c in RUN_COLUMNS}]))
        for table, columns in TABLES.items():
            frame = results[table].reset_index(drop=True)
            absent = [c for c in columns if c != "run_id" and c not in frame.columns]
            if absent:
                raise ValueError(f"{table}: missing column(s) {absent}")
            frame = frame.assign(run_id=run["run_id"])
            db.execute(ddl(table, columns))
            _insert(db, table, columns, frame)


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """Column by column (DuckDB scans Arrow strings ~10x faster than pandas objects);
    zoned timestamps go through their UTC values, which pyarrow's own path reads with a
    pandas call that is deprecated."""
    arrays = {}
    for name, column in frame.items():
        if isinstance(column.dtype, pd.DatetimeTZDtype):
            utc = column.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
            arrays[str(name)] = pa.array(utc, type=pa.timestamp("us", tz="UTC"))
        else:
            arrays[str(name)] = pa.Array.from_pandas(column)
    return pa.table(arrays)


def _insert(db: Any, table: str, columns: Columns, frame: pd.DataFrame) -> None:
    db.register("_rapport_analytics", _arrow(frame[list(columns)]))
    try:
        select = ", ".join(f"CAST({_quoted(c)} AS {t})" for c, (t, _) in columns.items())
        db.execute(f"INSERT INTO {table} SELECT {select} FROM _rapport_analytics")
    finally:
        db.unregister("_rapport_analytics")


@dataclass(frozen=True)
class AnalyticsRunInfo:
    """One analytics run as recorded in ``analytics_runs``."""

    run_id: str
    as_of: datetime
    period: str
    periods: int
    created_at: datetime
    scores_run_id: str
    previous_run_id: str | None
    metrics: dict[str, float]
    settings: dict[str, Any]
    report_path: str | None


def latest_run(
    db: Any, before: datetime | None = None, run_id: str | None = None
) -> AnalyticsRunInfo:
    """The analytics run ``run_id``, else the latest one (by as-of, then creation) with an
    as-of strictly before ``before`` when given; NoAnalyticsError when there is none."""
    if RUNS not in table_names(db):
        raise NoAnalyticsError("no analytics in the warehouse yet: run `rapport analytics`")
    params: list[Any] = []
    if run_id is not None:
        where, params = "WHERE run_id = ?", [run_id]
    elif before is not None:
        where, params = "WHERE as_of < ?", [as_utc(before)]
    else:
        where = ""
    row = db.execute(
        "SELECT run_id, as_of, period, periods, created_at, scores_run_id, previous_run_id, "
        f"metrics, settings, report_path FROM {RUNS} {where} "
        "ORDER BY as_of DESC, created_at DESC LIMIT 1",
        params,
    ).fetchone()
    if row is None:
        raise NoAnalyticsError(
            f"no analytics run {run_id!r}" if run_id else "no analytics run before that as-of"
        )
    return AnalyticsRunInfo(
        run_id=row[0],
        as_of=as_utc(row[1]),
        period=row[2],
        periods=int(row[3]),
        created_at=as_utc(row[4]),
        scores_run_id=row[5],
        previous_run_id=row[6],
        metrics=json.loads(row[7] or "{}"),
        settings=json.loads(row[8] or "{}"),
        report_path=row[9],
    )


@dataclass
class AnalyticsTables:
    """One run's results, one frame per table (columns as declared above, minus run_id).

    ``retention``: retention and flows per period and group; ``cohorts``: the cohort
    triangle; ``equity``: one row, equity and its change; ``share``: customer share by
    group; ``migration``: transition counts and probabilities (RFM and ABC);
    ``mix``: current, projected and long-run mixes; ``backtest``: projection errors;
    ``segment_map``: one point per segment; ``customers``: per-customer results.
    """

    run: AnalyticsRunInfo
    retention: pd.DataFrame
    cohorts: pd.DataFrame
    equity: pd.DataFrame
    share: pd.DataFrame
    migration: pd.DataFrame
    mix: pd.DataFrame
    backtest: pd.DataFrame
    segment_map: pd.DataFrame
    customers: pd.DataFrame


def load_run(db: Any, run_id: str | None = None, customers: bool = True) -> AnalyticsTables:
    """The tables of run ``run_id`` (default: the latest); ``customers=False`` skips the
    per-customer table (one row per customer: large)."""
    run = latest_run(db, run_id=run_id)
    frames: dict[str, pd.DataFrame] = {}
    for table, columns in TABLES.items():
        name = table.removeprefix("analytics_")
        if name == "customers" and not customers:
            frames[name] = pd.DataFrame(columns=[c for c in columns if c != "run_id"])
            continue
        cols = ", ".join(_quoted(c) for c in columns if c != "run_id")
        frames[name] = (
            db.execute(f"SELECT {cols} FROM {table} WHERE run_id = ?", [run.run_id])
            .to_arrow_table()
            .to_pandas()
        )
    return AnalyticsTables(run=run, **frames)
