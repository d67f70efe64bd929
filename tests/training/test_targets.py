"""Target lists: filters, budget selection against brute force, consent / contact policy /
suppression always applied, expression errors, definitions and export round trip.

The selection (:mod:`models.targeting`) runs on synthetic score frames; no models needed.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.expressions import ExpressionError, parse
from features.spec import default_spec
from models.catalog import default_catalog
from models.targeting import (
    BASIS_UPLIFT,
    BASIS_VALUE_AT_RISK,
    TargetDefinition,
    TargetError,
    check_filter,
    default_definitions,
    definition_from,
    feature_subset,
    knapsack,
    needed_features,
    parse_definitions,
    select_targets,
)
from training.targets import export, read_suppression_file

CATALOG = default_catalog()


def scores(n: int = 200, seed: int = 0, uplift: bool = True) -> pd.DataFrame:
    """Scores plus the features arbitration reads, everyone allowed by default."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i:04d}" for i in range(n)],
            "churn_probability": rng.uniform(0, 1, n),
            "value_mean": rng.gamma(2, 100, n),
            "value_p10": 0.0,
            "value_p50": rng.gamma(2, 80, n),
            "value_p90": 500.0,
            "abc_tier": rng.choice(["A", "B", "C"], n),
            "rfm_segment": rng.choice(["loyal", "at_risk", "lost"], n),
            "email_opt_in": 1.0,
            "phone_opt_in": 1.0,
            "contacts_email_30d": 0.0,
            "contacts_call_30d": 0.0,
            "orders_365d": 2.0,
            "complaints_90d": 0.0,
            "days_since_last_order": 30.0,
            "days_since_last_contact": rng.choice([3.0, 20.0, np.nan], n),
        }
    )
    for action in CATALOG.actions[1:]:
        frame[action.cooldown_field] = np.nan
        if uplift:
            frame[f"uplift_conversion_{action.id}"] = rng.uniform(0, 0.2, n)
            frame[f"uplift_revenue_{action.id}"] = rng.uniform(0, 30, n)
    return frame


# --------------------------------------------------------------------------- knapsack
def brute_force(values: np.ndarray, costs: np.ndarray, budget: float) -> float:
    best = 0.0
    for r in range(len(values) + 1):
        for subset in itertools.combinations(range(len(values)), r):
            chosen = list(subset)
            if costs[chosen].sum() <= budget + 1e-9:
                best = max(best, float(values[chosen].sum()))
    return best


@pytest.mark.parametrize("seed", range(60))
def test_budget_selection_is_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 11))
    values = np.round(rng.normal(5, 4, n), 2)
    costs = rng.choice([0.0, 0.1, 2.0, 4.0, 8.0, 3.3], n)
    budget = float(rng.choice([0, 1, 5, 9.9, 13, 20]))
    choice = knapsack(values, costs, budget)
    assert costs[choice.chosen].sum() <= budget + 1e-9
    assert values[choice.chosen].sum() == pytest.approx(brute_force(values, costs, budget))
    assert choice.exact
    # the greedy fallback stays feasible and its bound really bounds the optimum
    greedy = knapsack(values, costs, budget, max_work=0)
    assert costs[greedy.chosen].sum() <= budget + 1e-9
    assert greedy.bound >= brute_force(values, costs, budget) - 1e-9


def test_greedy_by_ratio_is_not_optimal_but_the_knapsack_is() -> None:
    values, costs = np.array([7.0, 4.0, 4.0]), np.array([5.0, 4.0, 4.0])
    # ratio picks the 7/5 first and then nothing fits; the optimum is 4 + 4
    assert values[knapsack(values, costs, 8.0).chosen].sum() == 8.0
    assert values[knapsack(values, costs, 8.0, max_work=0).chosen].sum() == 7.0


def test_one_cost_is_top_n_by_value() -> None:
    values = np.arange(100, dtype=float)
    choice = knapsack(values, np.full(100, 8.0), 80.0)
    assert sorted(np.flatnonzero(choice.chosen)) == list(range(90, 100))


def test_bad_budget() -> None:
    with pytest.raises(TargetError):
        knapsack(np.ones(2), np.ones(2), -1)


# --------------------------------------------------------------------------- selection
def test_filter_and_action_and_sort() -> None:
    frame = scores()
    d = TargetDefinition(filter="abc_tier == 'A' and churn_probability > 0.3", action="cross_sell")
    sel = select_targets(frame, CATALOG, d)
    ids = set(frame[(frame.abc_tier == "A") & (frame.churn_probability > 0.3)].customer_id)
    assert set(sel.members.customer_id) == ids
    assert (sel.members.action == "cross_sell").all() and (sel.members.channel == "email").all()
    assert sel.members.expected_value.is_monotonic_decreasing
    assert list(sel.members["rank"]) == list(range(1, len(ids) + 1))
    assert sel.basis == BASIS_UPLIFT
    asc = select_targets(frame, CATALOG, d.model_copy(update={"sort": "churn_probability:asc"}))
    assert asc.members.churn_probability.is_monotonic_increasing


def test_filter_on_a_feature_with_nulls() -> None:
    frame = scores()
    d = TargetDefinition(filter="days_since_last_contact >= 14", action="cross_sell")
    sel = select_targets(frame, CATALOG, d)
    assert set(sel.members.customer_id) == set(
        frame[frame.days_since_last_contact >= 14].customer_id
    )


def test_consent_contact_policy_cooldown_and_suppression_always_apply() -> None:
    frame = scores(60)
    frame.loc[0:9, "email_opt_in"] = 0.0
    frame.loc[10:14, "email_opt_in"] = np.nan
    frame.loc[15:19, "contacts_email_30d"] = 2.0  # policy: at most 2 emails in 30 days
    frame.loc[20:24, "days_since_action_cross_sell"] = 3.0  # cool-down 14 days
    frame = pd.concat([frame, frame.iloc[[30, 31]]])  # duplicates
    suppressed = {"C0040", "C0041", "C9999"}
    d = TargetDefinition(action="cross_sell")
    sel = select_targets(frame, CATALOG, d, suppressed=suppressed)
    ids = set(sel.members.customer_id)
    assert not ids & {f"C{i:04d}" for i in range(25)}
    assert not ids & suppressed
    assert sel.members.customer_id.is_unique and len(ids) == 60 - 25 - 2
    assert sel.removed["no consent"] == 15 and sel.removed["contact policy"] == 5
    assert sel.removed["cool-down"] == 5 and sel.removed["duplicates"] == 2
    assert sel.removed["suppressed"] == 2
    # a filter that asks for them explicitly does not override anything
    d = TargetDefinition(filter="email_opt_in == 0 or customer_id == 'C0040'", action="cross_sell")
    assert select_targets(frame, CATALOG, d, suppressed=suppressed).count == 0
    # nor does the budget or the best-action mode
    best = select_targets(frame, CATALOG, TargetDefinition(budget=1e6), suppressed=suppressed)
    emailed = best.members[best.members.channel == "email"].customer_id
    assert not set(emailed) & {f"C{i:04d}" for i in range(25)}
    assert not set(best.members.customer_id) & suppressed


def test_budget_on_lists_is_respected_and_optimal() -> None:
    frame = scores(300)
    d = TargetDefinition(budget=250.0)
    sel = select_targets(frame, CATALOG, d)
    assert 0 < sel.total_cost <= 250.0
    assert sel.budget_method and sel.budget_method.startswith("exact")
    assert set(sel.members.action) <= set(CATALOG.ids[1:])
    top = select_targets(frame, CATALOG, TargetDefinition(budget=250.0, top=5))
    assert top.count == 5
    assert list(top.members.customer_id) == list(sel.members.customer_id[:5])


def test_without_uplift_the_value_at_risk_is_used_and_said() -> None:
    frame = scores(50, uplift=False)
    sel = select_targets(frame, CATALOG, TargetDefinition(action="retention_discount"))
    assert sel.basis == BASIS_VALUE_AT_RISK and "value at risk" in sel.summary()
    eligible = frame[frame.churn_probability >= 0.25]
    expected = eligible.churn_probability * eligible.value_p50 * 0.3
    got = sel.members.set_index("customer_id").expected_value
    assert np.allclose(got.loc[eligible.customer_id].to_numpy(), expected.to_numpy())


def test_bad_definitions() -> None:
    frame = scores(10)
    with pytest.raises(TargetError, match="unknown action"):
        select_targets(frame, CATALOG, TargetDefinition(action="free_lunch"))
    with pytest.raises(TargetError, match="no_action"):
        select_targets(frame, CATALOG, TargetDefinition(action="no_action"))
    with pytest.raises(TargetError, match="sort"):
        select_targets(frame, CATALOG, TargetDefinition(sort="nope"))
    with pytest.raises(ExpressionError, match="at column 10"):
        definition_from({"filter": "abc_tier = 'A'"})
    with pytest.raises(TargetError, match="top"):
        definition_from({"top": 0})


def test_expression_errors_point_at_the_token() -> None:
    spec = default_spec()
    with pytest.raises(ExpressionError) as err:
        check_filter(parse("abc_tier == 'A' and churn_prob > 0.5"), spec)
    text = str(err.value)
    assert "unknown field 'churn_prob'" in text and "churn_probability" in text
    assert text.splitlines()[-1] == " " * 22 + "^" * 10
    with pytest.raises(ExpressionError, match="cannot compare"):
        check_filter(parse("region > 3"), spec)


def test_saved_definitions() -> None:
    saved = default_definitions()
    assert {"at_risk_high_value", "winback_lapsed"} <= set(saved)
    spec = default_spec()
    for d in saved.values():
        if d.expression is not None:
            check_filter(d.expression, spec)
    with pytest.raises(TargetError, match=r"'oops'.*top"):
        parse_definitions("lists:\n  oops: {top: -1}\n")
    with pytest.raises(TargetError, match="bad filter"):
        parse_definitions("lists:\n  oops: {filter: 'a >'}\n")
    with pytest.raises(TargetError, match=r"unknown|Extra"):
        parse_definitions("lists:\n  oops: {budgett: 3}\n")


def test_needed_features_and_subset_spec() -> None:
    spec = default_spec()
    d = TargetDefinition(filter="email_open_rate_90d > 0.2 and churn_probability > 0.1")
    names = needed_features(d, CATALOG, spec)
    assert "email_open_rate_90d" in names and "churn_probability" not in names
    assert {"email_opt_in", "contacts_email_30d", "days_since_action_cross_sell"} <= set(names)
    sub = feature_subset(spec, names)
    assert set(names) <= set(sub.names) and len(sub.aggs) < len(spec.aggs)
    assert {"emails_open_90d", "emails_sent_90d"} <= {a.name for a in sub.aggs}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_round_trip(tmp_path: Path, suffix: str) -> None:
    sel = select_targets(scores(40), CATALOG, TargetDefinition(action="cross_sell", top=7))
    path = export(sel.members, tmp_path / f"list{suffix}")
    back = (
        pd.read_csv(path, dtype={"customer_id": str}) if suffix == ".csv" else pd.read_parquet(path)
    )
    pd.testing.assert_frame_equal(back, sel.members, check_dtype=False)
    with pytest.raises(TargetError):
        export(sel.members, tmp_path / "list.xlsx")


def test_suppression_files(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("C1\n# comment\n\nC2\n")
    pd.DataFrame({"customer_id": ["C3"]}).to_csv(tmp_path / "ids.csv", index=False)
    assert read_suppression_file(tmp_path / "ids.txt") == {"C1", "C2"}
    assert read_suppression_file(tmp_path / "ids.csv") == {"C3"}
    pd.DataFrame({"id": ["C3"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TargetError, match="customer_id"):
        read_suppression_file(tmp_path / "bad.csv")
