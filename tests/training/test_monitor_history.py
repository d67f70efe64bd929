"""A group's first-days history (``monitor_peers``) as the partly matured checks read it."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pandas as pd

from features.tables import monitoring as tables
from features.tables.scores import RUNS, RUNS_DDL, RunInfo
from models.alerts import load_alerts
from training import monitor_partial
from training.monitor_checks import Checks


def _scoring_run(db: duckdb.DuckDBPyConnection, run_id: str, as_of: datetime, churn: str) -> None:
    db.execute(
        f"INSERT INTO {RUNS} (run_id, as_of, scored_at, rows, churn_version, value_version, "
        "feature_set, catalog_json) VALUES (?, ?, ?, 1000, ?, '1', 'fs', '{}')",
        [run_id, as_of, as_of, churn],
    )


def _monitored(
    db: duckdb.DuckDBPyConnection, run_id: str, checked: datetime, peers: pd.DataFrame
) -> None:
    """A monitoring run checked at ``checked`` that recorded ``peers`` (and nothing else)."""
    run = {
        "run_id": run_id,
        "checked_at": checked,
        "as_of": checked,
        "scoring_runs": "",
        "checks": 0,
        "warnings": 0,
        "alerts": 0,
        "seconds": 0.0,
        "report": "",
        "mlflow_run_id": None,
    }
    peers = peers.assign(run_id=run_id, checked_at=pd.Timestamp(checked))
    tables.record(db, run, pd.DataFrame(), pd.DataFrame(), peers)


def test_own_history_keeps_the_same_champion_and_scales_to_the_elapsed_days() -> None:
    db = duckdb.connect()
    db.execute(RUNS_DDL)
    runs = {
        "sr-1": (datetime(2025, 9, 6, tzinfo=UTC), "1", 31),  # another churn champion
        "sr-2": (datetime(2025, 10, 6, tzinfo=UTC), "2", 31),
        "sr-3": (datetime(2025, 11, 6, tzinfo=UTC), "2", 30),
    }
    for run_id, (as_of, churn, _) in runs.items():
        _scoring_run(db, run_id, as_of, churn)
    peers = pd.DataFrame(
        [
            {
                "scoring_run": run_id,
                "scoring_as_of": pd.Timestamp(as_of),
                "days": days,
                "check": "active_shortfall",
                "group": "segment lost",
                "rows": 500,
                "observed": 300.0,
                "expected": 600.0,
                "variance": 90.0,
            }
            for run_id, (as_of, _, days) in runs.items()
        ]
    )
    _monitored(db, "mr-1", datetime(2025, 12, 1, tzinfo=UTC), peers)
    now = RunInfo(
        "sr-4", datetime(2025, 12, 6, tzinfo=UTC), datetime.now(UTC), 1000,
        {"churn": "2", "value": "1"}, "fs", {},
    )  # fmt: skip
    c = Checks(load_alerts())
    found = monitor_partial._own_history(c, db, now, "active_shortfall", 31)
    found = found.set_index("scoring_run")
    # the run of the other churn champion is left out; the 30-day run scaled to 31 days
    assert list(found.index) == ["sr-2", "sr-3"]
    assert found.loc["sr-2", "observed"] == 300.0
    assert abs(found.loc["sr-3", "observed"] - 300.0 * 31 / 30) < 1e-9
    assert abs(found.loc["sr-3", "variance"] - 90.0 * (31 / 30) ** 2) < 1e-9
    assert (found["expected"] == 600.0).all() and (found["rows"] == 500).all()
    # the value champion did not change: its history keeps every run (none recorded here)
    assert monitor_partial._own_history(c, db, now, "revenue_shortfall", 31).empty


def test_history_holds_only_days_that_ended_before_the_judged_run() -> None:
    """Monitored daily, the 10-06 run is judged over 31 days on 11-06 and over 58 on 12-03;
    judging the 11-06 run, only the 31-day figure is history: the 58 days reach into the
    judged run's own days (its change would be in its history too)."""
    db = duckdb.connect()
    figures = {11: 31, 12: 58}  # checked in month -> elapsed days of the 10-06 run
    for month, days in figures.items():
        checked = datetime(2025, month, 3 if month == 12 else 6, tzinfo=UTC)
        peers = pd.DataFrame(
            [
                {
                    "scoring_run": "sr-10",
                    "scoring_as_of": pd.Timestamp(datetime(2025, 10, 6, tzinfo=UTC)),
                    "days": days,
                    "check": "complaints_vs_peers",
                    "group": "north",
                    "rows": 500,
                    "observed": float(days),
                    "expected": 10.0,
                    "variance": 1.0,
                }
            ]
        )
        _monitored(db, f"mr-{month}", checked, peers)
    judged = datetime(2025, 11, 6, tzinfo=UTC)
    found = tables.load_peer_history(db, "complaints_vs_peers", judged, 3)
    assert list(found["days"]) == [31] and list(found["observed"]) == [31.0]
    # judging a later run, the latest figure of the 10-06 run is the one kept
    later = tables.load_peer_history(db, "complaints_vs_peers", datetime(2026, 1, 6, tzinfo=UTC), 3)
    assert list(later["days"]) == [58]
