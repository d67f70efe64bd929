"""The matured run's gaps per tier and segment warn at most, while the base's page: on a
stable world a segment's gap moves with the season (bench.monitor_alarms at 40,000 paged
on a segment's rate gap), so only the base's gap is a page."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from features.tables.scores import RunInfo
from models.alerts import load_alerts
from training import monitor
from training.monitor_checks import Checks

RUN = RunInfo("sr-test", datetime(2026, 1, 1, tzinfo=UTC), datetime.now(UTC), 0, {}, "", {})


def _scored(off_segment: str, rows: int = 4000) -> pd.DataFrame:
    """Scored customers with outcomes: churn probability 0.3 and p10-p90 intervals that
    hold ~80% of the spend, except in ``off_segment`` (a quarter of the rows), where
    everyone churned and no interval holds the spend; ``off_segment="none"``: nowhere."""
    rng = np.random.default_rng(7)
    segment = np.where(np.arange(rows) % 4 == 0, "at_risk", "champions")
    p = np.full(rows, 0.3)
    churned = (rng.random(rows) < p).astype("float64")
    spend = rng.gamma(2.0, 50.0, rows)
    p10, p90 = np.quantile(spend, 0.1), np.quantile(spend, 0.9)
    off = segment == off_segment
    churned[off] = 1.0
    spend[off] = p90 * 3
    return pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(rows)],
            "churned": churned,
            "churn_probability": p,
            "spend": spend,
            "value_mean": np.full(rows, spend.mean()),
            "value_p10": p10,
            "value_p50": np.median(spend),
            "value_p90": p90,
            "abc_tier": "A",
            "rfm_segment": segment,
        }
    )


def _levels(frame: pd.DataFrame) -> dict[tuple[str, str], tuple[float, str, str]]:
    c = Checks(load_alerts())
    monitor._churn_realised(c, RUN, frame, 0.8)
    monitor._value_realised(c, RUN, frame, 0.5)
    return {
        (r["check"], r["subject"]): (r["value"], r["level"], r["detail"])
        for r in c.rows
        if r["check"] in {"rate_gap", "coverage_gap"}
    }


def test_a_segments_gap_warns_at_most_while_the_bases_pages() -> None:
    alerts = load_alerts()
    levels = _levels(_scored("at_risk"))
    for check in ("rate_gap", "coverage_gap"):
        value, level, detail = levels[(check, "segment at_risk")]
        # far beyond the alert threshold, yet a warn, saying why
        assert value > alerts.threshold("churn" if check == "rate_gap" else "value", check).alert
        assert level == "warn", (check, value, detail)
        assert "warns at most" in detail
        # the base, where the same customers are a quarter, pages
        value, level, detail = levels[(check, "all")]
        assert level == "alert", (check, value, detail)
        assert "warns at most" not in detail
    # the calibrated segment stays ok
    assert levels[("rate_gap", "segment champions")][1] == "ok"


def test_without_a_change_no_gap_is_raised() -> None:
    levels = _levels(_scored("none"))
    assert {level for _, level, _ in levels.values()} == {"ok"}, levels
