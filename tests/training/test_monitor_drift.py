"""The monitor's drift checks on frames in memory: which drift alerts and which warns."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from features.spec import default_spec
from features.tables.scores import RunInfo
from models.alerts import load_alerts
from training import monitor_drift
from training.monitor_checks import Checks


def _levels(calendar: set[str]) -> dict[tuple[str, str], str]:
    rng = np.random.default_rng(0)
    n = 5000
    reference = pd.DataFrame(
        {"tenure_days": rng.gamma(2, 200, n), "orders_90d": rng.gamma(2, 2, n)}
    )
    # a year later: every tenure is 365 days longer; orders fell by half
    current = pd.DataFrame(
        {
            "tenure_days": reference["tenure_days"] + 365,
            "orders_90d": reference["orders_90d"] * 0.3,
        }
    )
    run = RunInfo("sr-test", datetime(2026, 1, 1, tzinfo=UTC), datetime.now(UTC), n, {}, "", {})
    c = Checks(load_alerts())
    importance = {"tenure_days": 0.2, "orders_90d": 0.2}
    monitor_drift.check_drift(c, run, current, reference, set(), importance, (), calendar)
    return {(r["check"], r["subject"]): r["level"] for r in c.rows}


def test_tenure_drift_warns_at_most_while_other_drift_alerts() -> None:
    calendar = monitor_drift.calendar_features(default_spec())
    assert calendar == {"tenure_days", "days_since_first_order"}
    levels = _levels({"tenure_days"})
    assert levels[("psi", "tenure_days")] == "warn"
    assert levels[("psi", "orders_90d")] == "alert"
    # without the calendar cap the same tenure shift alerts
    assert _levels(set())[("psi", "tenure_days")] == "alert"


def test_value_scores_join_the_churn_reference_by_customer_and_cutoff() -> None:
    """The churn and value references are sampled apart: rows are matched, not aligned."""
    at = [pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-02-01", tz="UTC")]
    churn = pd.DataFrame({"customer_id": ["a", "b", "c"], "as_of": [at[0], at[0], at[1]]})
    value = pd.DataFrame(
        {
            "customer_id": ["c", "a", "a", "z"],
            "as_of": [at[1], at[0], at[0], at[0]],  # "a" twice: sampled with replacement
            "value_mean": [30.0, 10.0, 10.0, 99.0],
        }
    )
    joined = monitor_drift.with_value(churn, value)
    assert joined["customer_id"].tolist() == ["a", "b", "c"]
    assert joined["value_mean"].tolist()[0] == 10.0 and joined["value_mean"].tolist()[2] == 30.0
    assert np.isnan(joined["value_mean"].tolist()[1])  # "b" has no value score
