"""Realised impact statistics on synthetic customers whose true incremental value is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.impact import cuped, impact_rows, per_action, per_customer, welch

#: the true incremental value per treated customer of every synthetic world below
TRUE_EFFECT = 4.0


def world(seed: int, n: int = 10_000, share: float = 0.05) -> pd.DataFrame:
    """Customers with skewed, zero-inflated value, a pre-period revenue that predicts it,
    a random control group, and the policy adding TRUE_EFFECT on average to the treated."""
    rng = np.random.default_rng(seed)
    pre = rng.gamma(0.8, 60.0, n)
    base = 0.6 * pre + rng.gamma(0.5, 40.0, n) * (rng.random(n) < 0.5)
    control = rng.random(n) < share
    lift = rng.exponential(TRUE_EFFECT, n)  # heterogeneous, mean TRUE_EFFECT
    value = base + np.where(control, 0.0, lift)
    return pd.DataFrame(
        {
            "group": np.where(control, "control", "treated"),
            "value": value,
            "pre_revenue": pre,
        }
    )


def test_welch_and_cuped_intervals_cover_the_true_effect_about_95_percent() -> None:
    # 500 control customers; with 200 (n=4,000) the skewed values left CUPED at 0.91
    seeds = range(300)
    hits = {"welch": 0, "cuped": 0}
    widths: dict[str, list[float]] = {"welch": [], "cuped": []}
    for seed in seeds:
        w = world(seed)
        t, c = w[w.group == "treated"], w[w.group == "control"]
        for est in (
            welch(t.value.to_numpy(), c.value.to_numpy()),
            cuped(t.value.to_numpy(), c.value.to_numpy(), t.pre_revenue, c.pre_revenue),
        ):
            hits[est.method] += est.lo <= TRUE_EFFECT <= est.hi
            widths[est.method].append(est.hi - est.lo)
    coverage = {k: v / len(seeds) for k, v in hits.items()}
    mean_width = {k: round(float(np.mean(v)), 2) for k, v in widths.items()}
    print(f"coverage over {len(seeds)} seeds: {coverage}; mean width {mean_width}")
    # 300 seeds: a 95% interval covers 0.95 +- 0.025 (2 sd); wider tolerance for skew
    assert 0.91 <= coverage["welch"] <= 0.99
    assert 0.91 <= coverage["cuped"] <= 0.99
    assert np.mean(widths["cuped"]) < 0.85 * np.mean(widths["welch"])


def test_an_interval_excludes_a_wrong_effect_when_the_data_are_large() -> None:
    w = world(1, n=60_000, share=0.1)
    t, c = w[w.group == "treated"], w[w.group == "control"]
    est = cuped(t.value.to_numpy(), c.value.to_numpy(), t.pre_revenue, c.pre_revenue)
    assert est.lo > 0 and est.lo <= TRUE_EFFECT <= est.hi
    assert est.variance_reduction > 0.3


def test_too_few_customers_give_no_interval_rather_than_a_wrong_one() -> None:
    est = welch(np.array([1.0, 2.0, 3.0]), np.array([1.0]))
    assert np.isnan(est.lo) and est.n_control == 1


def decisions() -> pd.DataFrame:
    at = pd.Timestamp("2026-11-03", tz="UTC")
    rows = [
        # customer, days, action, group, outcome, revenue
        ("A", 0, "email", "treated", True, 100.0),
        ("A", 40, "call", "explore", False, 0.0),  # December: a second period
        ("A", 1, "call", "treated", False, None),  # November again: summed with the first
        ("B", 2, "no_action", "control", True, 50.0),
        ("C", 3, "no_action", "control", False, 0.0),
        ("D", 4, "email", "treated", None, None),  # outcome unknown: left out
        ("E", 5, "email", None, True, 10.0),  # no group (an old export): left out
    ]
    frame = pd.DataFrame(
        rows, columns=["customer_id", "days", "action", "group", "outcome", "revenue"]
    )
    frame["decided_at"] = at + pd.to_timedelta(frame.pop("days"), unit="D")
    frame["decision_id"] = [f"d{i}" for i in range(len(frame))]
    return frame


def test_per_customer_sums_a_customers_decisions_per_period_by_their_first_group() -> None:
    costs = {"email": 1.0, "call": 5.0, "no_action": 0.0}
    out = per_customer(decisions(), costs, margin_rate=0.5)
    nov = out[out.period == "2026-11"].set_index("customer_id")
    assert set(nov.index) == {"A", "B", "C"}
    assert nov.loc["A", "decisions"] == 2 and nov.loc["A", "converted"] == 1.0
    assert nov.loc["A", "value"] == pytest.approx(100 * 0.5 - 1 - 5)
    assert nov.loc["B", "group"] == "control" and nov.loc["B", "value"] == 25.0
    dec = out[out.period == "2026-12"]
    assert dec.customer_id.tolist() == ["A"] and dec.group.tolist() == ["treated"]
    whole = per_customer(decisions(), costs, 0.5, period="all")
    assert whole.set_index("customer_id").loc["A", "decisions"] == 3
    rows = impact_rows(whole)
    assert rows.period.tolist() == ["all"]  # December alone has no control: no row
    assert rows.loc[0, "treated_customers"] == 1 and rows.loc[0, "control_customers"] == 2


def test_per_action_compares_each_action_with_the_control_decisions() -> None:
    costs = {"email": 1.0, "call": 5.0, "no_action": 0.0}
    predicted = pd.DataFrame({"decision_id": ["d0"], "predicted_conversion": [0.2]})
    table = per_action(decisions(), costs, 0.5, predicted).set_index("action")
    assert set(table.index) == {"email", "call"}
    assert table.loc["email", "conversion"] == 1.0
    assert table.loc["email", "control_conversion"] == 0.5
    assert table.loc["email", "predicted_conversion"] == pytest.approx(0.2)
    assert table.loc["call", "decisions"] == 2
