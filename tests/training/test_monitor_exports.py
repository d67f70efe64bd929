"""``complaints_vs_past`` on exports shaped like real ones: interactions that begin after
the windows it compares with, and no complaints at all (the simulator always has both)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from contract_rows import interaction
from sample_data import load_tables

from models.alerts import load_alerts
from training.monitor_checks import Checks
from training.monitor_partial import _complaints_vs_past

CUT = datetime(2025, 10, 6, tzinfo=UTC)
DAYS = 30
STARTS = [CUT - timedelta(days=DAYS * k) for k in (1, 2, 3)]
CUSTOMERS = [f"C{i:04d}" for i in range(600)]
#: every 10th customer complains once in each window before the cutoff and once since it
COMPLAINERS = CUSTOMERS[::10]


@pytest.fixture
def con(tmp_path: Path) -> Iterator[object]:
    from features.warehouse import connect

    con = connect(tmp_path / "warehouse.duckdb")
    yield con
    con.disconnect()


def _complaints(
    starts: list[datetime], kind: str = "complaint", since: datetime = CUT - timedelta(days=400)
) -> pd.DataFrame:
    """``kind`` interactions of the complainers 3 days into each window from ``starts``,
    in an export whose first interaction (a visit) is at ``since``."""
    rows = [interaction("first", CUSTOMERS[1], since, "web", "visit")]
    rows += [
        interaction(f"I{k}-{c}", c, start + timedelta(days=3), "call", kind)
        for k, start in enumerate(starts)
        for c in COMPLAINERS
    ]
    return pd.DataFrame(rows)


def _check(con: object, interactions: pd.DataFrame) -> dict[str, object]:
    load_tables(con, {"interactions": interactions})
    lab = pd.DataFrame(
        [
            {"customer_id": c, "as_of": pd.Timestamp(start), "active": True}
            for start in STARTS
            for c in CUSTOMERS
        ]
    )
    now = pd.DataFrame(
        {
            "customer_id": CUSTOMERS,
            "complaints": [
                float(c in COMPLAINERS) if "complaint" in set(interactions["kind"]) else 0.0
                for c in CUSTOMERS
            ],
        }
    )
    checks = Checks(load_alerts())
    _complaints_vs_past(checks, con, lab, STARTS, DAYS, now, "run")
    (row,) = checks.rows
    return row


def test_a_steady_complaint_rate_is_not_a_rise(con: object) -> None:
    row = _check(con, _complaints([*STARTS, CUT]))
    assert row["value"] == 0.0 and row["level"] == "ok"
    assert "in the 3 windows of 30 days before" in str(row["detail"])


def test_windows_before_the_first_recorded_interaction_are_left_out(con: object) -> None:
    """The export's interactions begin 35 days before the cutoff: the two earlier windows
    hold no complaints because nothing was recorded, not because nobody complained.
    Counted as quiet they made the same rate a rise (a third of it before)."""
    row = _check(con, _complaints([STARTS[0], CUT], since=CUT - timedelta(days=35)))
    assert row["value"] == 0.0 and row["level"] == "ok", row["detail"]
    detail = str(row["detail"])
    assert "in the 1 windows of 30 days before" in detail
    assert "2 window(s) before the first recorded interaction left out" in detail


def test_an_export_without_complaints_is_not_judged(con: object) -> None:
    row = _check(con, _complaints([*STARTS, CUT], kind="service"))
    assert math.isnan(float(row["value"])) and math.isnan(float(row["threshold"]))
    assert row["level"] == "ok" and "no complaints recorded" in str(row["detail"])
