"""Policy health in ``rapport monitor`` on synthetic warehouses whose decisions carry a
known effect: a policy that helps is ok, one that hurts alerts, collapsed exploration
alerts, and no grouped decision is "no data", never an alert."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from policy_world import ACTIONS, decisions
from sample_data import use_home

from features.warehouse import connect, ensure_contract_tables, raw
from models.alerts import load_alerts
from training import policy_health
from training.monitor_checks import Checks
from training.monitor_report import policy_value_figure

AS_OF = datetime(2026, 11, 15, tzinfo=UTC)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from use_home(tmp_path, monkeypatch)


def checks(home: Path, frame: pd.DataFrame | None) -> pd.DataFrame:
    """The policy checks of a warehouse holding ``frame`` as its campaign log (None: no
    campaign log table at all)."""
    con = connect(home / "warehouse.duckdb")
    try:
        db = raw(con)
        if frame is not None:
            ensure_contract_tables(con)
            db.register("d", frame)
            db.execute("INSERT INTO campaign_log BY NAME SELECT * FROM d")
            db.unregister("d")
        c = Checks(load_alerts())
        policy_health.check(c, db, AS_OF)
    finally:
        con.disconnect()
    return pd.DataFrame(c.rows)


def level(found: pd.DataFrame, check: str, subject: str) -> str:
    row = found[(found["check"] == check) & (found["subject"] == subject)]
    assert len(row) == 1, (check, subject, found[["check", "subject"]])
    return str(row["level"].iloc[0])


def test_a_policy_that_helps_is_ok_and_charted(home: Path) -> None:
    found = checks(home, decisions(0, effect=40.0))
    assert set(found["level"]) == {"ok"}, found[found["level"] != "ok"]
    value = found[(found["check"] == "incremental_value") & (found["subject"] == "all")]
    lo = found[(found["check"] == "incremental_value_lo") & (found["subject"] == "all")]
    assert float(value["value"].iloc[0]) > 0 and float(lo["value"].iloc[0]) > 0
    assert {"period 2026-09", "period 2026-10"} <= set(found["subject"])
    assert level(found, "value_shortfall", "period 2026-10") == "ok"
    # earlier periods are charted, not judged again
    assert not len(
        found[(found["check"] == "value_shortfall") & (found["subject"] == "period 2026-09")]
    )
    assert {"ess_shortfall", "max_weight", "top_action_share", "action_mix_js"} <= set(
        found["check"]
    )
    assert set(found[found["check"] == "uplift_gap"]["subject"]) >= {f"{ACTIONS[0]} revenue"}
    fig = policy_value_figure(found.assign(run_id="r"))
    assert fig is not None and len(fig.axes[0].get_xticklabels()) == 2


def test_a_policy_that_hurts_alerts(home: Path) -> None:
    found = checks(home, decisions(1, effect=-30.0))
    assert level(found, "value_shortfall", "all") == "alert"
    assert level(found, "value_shortfall", "period 2026-10") == "alert"
    hi = found[(found["check"] == "incremental_value_hi") & (found["subject"] == "all")]
    assert float(hi["value"].iloc[0]) < 0
    # exploration itself is healthy: only the value alerts
    explore = found[found["check"].isin(["ess_shortfall", "max_weight", "action_mix_js"])]
    assert set(explore["level"]) == {"ok"}


def test_exploration_collapse_alerts(home: Path) -> None:
    found = checks(home, decisions(2, effect=40.0, collapse=True))
    subject = "period 2026-10"
    assert level(found, "top_action_share", subject) == "alert"
    assert level(found, "ess_shortfall", subject) == "alert"
    assert level(found, "action_mix_js", subject) == "alert"
    assert level(found, "value_shortfall", "all") == "ok"


@pytest.mark.parametrize("what", ["no campaign log", "ungrouped", "control only"])
def test_no_data_is_said_not_alerted(home: Path, what: str) -> None:
    frame = {
        "no campaign log": None,
        "ungrouped": decisions(3, effect=-30.0, n=300).assign(group=None),
        "control only": decisions(3, effect=-30.0, n=300).query("group == 'control'"),
    }[what]
    found = checks(home, frame)
    assert list(found["check"]) == ["no_data"] and set(found["level"]) == {"ok"}
    assert "treated and control" in found["detail"].iloc[0]
