"""The demo data simulator: contract, determinism, consistency and the planted signals."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.contract import NO_ACTION, TABLES
from rapport.demo_data import (
    ACTION_CHANNELS,
    ACTIONS,
    REGIONS,
    SPEND_BY_REGION,
    WALLET_SHARE_CAP,
    DemoData,
    generate,
    write,
)

END = datetime(2025, 6, 1, tzinfo=UTC)
N = 4000
DTYPES = {
    "string": ("str",),
    "timestamp": ("datetime64[us, UTC]",),
    "float": ("float64",),
    "int": ("Int64",),
    "bool": ("bool", "boolean"),
}
EVENT_TIME = {"orders": "ordered_at", "interactions": "occurred_at", "campaign_log": "decided_at"}


@pytest.fixture(scope="module")
def data() -> DemoData:
    return generate(N, seed=7, end=END)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tables_follow_the_contract(data: DemoData) -> None:
    for name, table in TABLES.items():
        frame = getattr(data, name)
        assert list(frame.columns) == table.column_names, name
        for col in table.columns:
            assert str(frame[col.name].dtype) in DTYPES[col.type], (name, col.name)
            if col.required:
                assert frame[col.name].notna().all(), (name, col.name)
            if col.choices:
                assert set(frame[col.name].dropna()) <= set(col.choices), (name, col.name)
        assert len(frame) > 0, name
    assert data.end == END
    assert data.truth_as_of == END - timedelta(days=90)


def test_ids_are_unique_and_references_valid(data: DemoData) -> None:
    patterns = {"customers": r"C\d{7}", "orders": r"O\d{7,}", "interactions": r"I\d{7,}"}
    patterns["campaign_log"] = r"D\d{7}"
    known = set(data.customers.customer_id)
    for name, table in TABLES.items():
        ids = getattr(data, name)[table.id_column]
        assert ids.is_unique, name
        assert ids.str.fullmatch(patterns[name]).all(), name
        if name != "customers":
            assert set(getattr(data, name).customer_id) <= known, name
    assert set(data.truth_customers.customer_id) <= known
    per_customer = data.truth_actions.groupby("customer_id").action.agg(set)
    assert per_customer.index.equals(pd.Index(sorted(data.truth_customers.customer_id)))
    assert (per_customer == set(ACTIONS)).all()


def test_events_lie_between_signup_and_end(data: DemoData) -> None:
    signup = data.customers.set_index("customer_id").signup_at
    for name, column in EVENT_TIME.items():
        frame = getattr(data, name)
        assert (frame[column] < data.end).all(), name
        assert (frame[column] >= frame.customer_id.map(signup)).all(), name
    log = data.campaign_log
    responded = log.responded_at.dropna()
    assert (responded < data.end).all()
    assert (responded >= log.decided_at[responded.index]).all()
    assert (log.decided_at > data.truth_as_of).any(), "the log runs past the truth cutoff"
    before = data.customers[data.customers.signup_at < data.truth_as_of].customer_id
    assert set(data.truth_customers.customer_id) == set(before)


def test_write_is_byte_deterministic(tmp_path: Path) -> None:
    runs = [generate(800, seed=3, end=END) for _ in range(2)]
    other = generate(800, seed=4, end=END)
    hashes = []
    for i, run in enumerate([*runs, other]):
        paths = write(run, tmp_path / str(i))
        assert sorted(paths) == sorted(run.tables())
        hashes.append({name: _sha256(path) for name, path in paths.items()})
    assert hashes[0] == hashes[1]
    assert hashes[0]["orders"] != hashes[2]["orders"]
    csv = [write(run, tmp_path / f"csv{i}", "csv") for i, run in enumerate(runs)]
    assert _sha256(csv[0]["interactions"]) == _sha256(csv[1]["interactions"])
    back = pd.read_parquet(paths["orders"])
    assert str(back.ordered_at.dtype) == "datetime64[us, UTC]"
    assert len(back) == len(other.orders)


def test_campaign_outcomes_match_the_orders(data: DemoData) -> None:
    log = data.campaign_log.reset_index(drop=True)
    assert (log.channel == log.action.map(dict(zip(ACTIONS, ACTION_CHANNELS, strict=True)))).all()
    pairs = log.merge(data.orders, on="customer_id")
    window_end = pairs.decided_at + timedelta(days=14)
    in_window = (pairs.ordered_at >= pairs.decided_at) & (pairs.ordered_at < window_end)
    first = pairs[in_window].sort_values("ordered_at").groupby("decision_id").first()
    converted = log[log.outcome.fillna(False).astype(bool)].set_index("decision_id")
    assert len(converted) > 0
    assert first.reindex(converted.index).ordered_at.equals(converted.responded_at)
    assert np.allclose(first.reindex(converted.index).amount, converted.revenue)
    not_converted = log[log.outcome.eq(False).fillna(False).astype(bool)]
    assert not not_converted.decision_id.isin(first.index).any()
    assert (not_converted.revenue == 0).all() and not_converted.responded_at.isna().all()
    pending = log[log.outcome.isna()]
    assert (pending.decided_at + timedelta(days=14) > data.end).all()


def test_complainers_are_more_likely_to_stop_buying(data: DemoData) -> None:
    as_of, it = data.truth_as_of, data.interactions
    recent = it[
        (it.kind == "complaint")
        & (it.occurred_at < as_of)
        & (it.occurred_at >= as_of - timedelta(days=90))
    ]
    alive = data.truth_customers[data.truth_customers.alive]
    complained = alive.customer_id.isin(recent.customer_id)
    assert complained.sum() >= 30
    p_no_order, hazard = alive.p_no_order, alive.dropout_hazard
    assert p_no_order[complained].mean() > p_no_order[~complained].mean()
    # the latent cause: complaints (and complaint-prone customers) carry a higher hazard
    assert hazard[complained].mean() > 2 * hazard[~complained].mean()


def test_truth_matches_what_happened_after_the_cutoff(data: DemoData) -> None:
    truth, orders = data.truth_customers, data.orders
    horizon_end = data.truth_as_of + timedelta(days=data.horizon_days)
    after = orders[(orders.ordered_at > data.truth_as_of) & (orders.ordered_at <= horizon_end)]
    observed_none = 1.0 - truth.customer_id.isin(after.customer_id).mean()
    assert abs(truth.p_no_order.mean() - observed_none) < 0.04
    observed_spend = after[after.customer_id.isin(truth.customer_id)].amount.sum()
    assert abs(truth.expected_spend.sum() / observed_spend - 1.0) < 0.15
    assert (truth.loc[~truth.alive, "p_no_order"] == 1.0).all()
    assert truth.p_no_order.between(0, 1).all() and (truth.expected_spend >= 0).all()


def test_budgets_hold_what_customers_spend_with_us(data: DemoData) -> None:
    """Every customer has a yearly category budget; we get at most WALLET_SHARE_CAP of it,
    nothing from customers who left, and the spend it implies matches what alive
    customers then spend with us over the horizon."""
    truth = data.truth_customers
    assert (truth.budget > 0).all()
    assert truth.wallet_share.between(0.0, WALLET_SHARE_CAP + 1e-12).all()
    assert (truth.wallet_share[~truth.alive] == 0).all()
    alive = truth[truth.alive]
    assert np.isclose(alive.wallet_share, WALLET_SHARE_CAP).mean() > 0.05
    # needs scale with the region's spend level
    region = data.customers.set_index("customer_id").region.reindex(truth.customer_id)
    medians = truth.budget.groupby(region.to_numpy()).median().reindex(list(REGIONS))
    order = np.argsort(SPEND_BY_REGION)
    assert list(medians.to_numpy()[order]) == sorted(medians.to_numpy())
    # yearly spend with us = share x budget at today's rate; over the 90-day horizon about a
    # quarter of it, a little less realised as some customers drop out meanwhile (1.09x)
    horizon_end = data.truth_as_of + timedelta(days=data.horizon_days)
    after = data.orders[
        (data.orders.ordered_at > data.truth_as_of) & (data.orders.ordered_at <= horizon_end)
    ]
    expected = (alive.wallet_share * alive.budget).sum() * data.horizon_days / 365.25
    realised = after[after.customer_id.isin(alive.customer_id)].amount.sum()
    assert 1.0 < expected / realised < 1.15


def test_logged_propensities_explain_the_assignment(data: DemoData) -> None:
    log = data.campaign_log.merge(data.customers, on="customer_id")
    assert log.propensity.between(0.05, 1.0).all()
    email_actions = [a for a, c in zip(ACTIONS, ACTION_CHANNELS, strict=True) if c == "email"]
    assert log[log.action.isin(email_actions)].email_opt_in.all()
    assert log[log.action == "service_callback"].phone_opt_in.all()
    for action, channel in zip(ACTIONS, ACTION_CHANNELS, strict=True):
        allowed = {"email": log.email_opt_in, "call": log.phone_opt_in}.get(channel)
        allowed = pd.Series(True, index=log.index) if allowed is None else allowed
        # E[1{A=a} / p] equals the share of decisions where a was allowed
        weight = (log.action == action) / log.propensity - allowed
        se = weight.std() / np.sqrt(len(log))
        assert abs(weight.mean()) < 4 * se, action
        chosen = log.propensity[log.action == action]
        assert chosen.std() > 0.02 and chosen.nunique() > 10, action


def test_log_agrees_with_truth_on_the_strongest_action(data: DemoData) -> None:
    truth = data.truth_actions[data.truth_actions.consent_ok]
    effect = truth.groupby("action").incremental_conversion.mean().drop(NO_ACTION)
    strongest = effect.abs().idxmax()
    assert abs(effect[strongest]) > 0.02
    log = data.campaign_log.merge(data.customers, on="customer_id")
    log = log[log.email_opt_in & log.phone_opt_in & log.outcome.notna()]
    converted = log.outcome.astype(float)

    def ips(action: str) -> float:
        return float(((log.action == action) * converted / log.propensity).mean())

    assert np.sign(ips(strongest) - ips(NO_ACTION)) == np.sign(effect[strongest])
    assert (data.truth_actions.query("action == @NO_ACTION").incremental_revenue == 0).all()
    assert (truth.incremental_revenue < 0).any() and (truth.incremental_revenue > 0).any()


def test_orders_have_returns_and_seasons(data: DemoData) -> None:
    orders = data.orders
    assert 0.02 < (orders.amount < 0).mean() < 0.08
    assert (orders.margin.abs() <= orders.amount.abs()).all()
    days = orders.ordered_at.dt.tz_convert(None).dt.to_period("M")
    december = (days == pd.Period("2023-12")).sum() / 31
    june_after = (days == pd.Period("2024-06")).sum() / 30  # later, so more customers
    assert december > june_after
    per_customer = orders[orders.amount > 0].groupby("customer_id").amount.sum()
    top_decile = per_customer.nlargest(len(per_customer) // 10).sum()
    assert top_decile / per_customer.sum() > 0.3


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="truth_as_of"):
        generate(10, seed=1, end=END, truth_as_of=END + timedelta(days=1))
    with pytest.raises(ValueError, match="customers"):
        generate(0, seed=1, end=END)
    with pytest.raises(ValueError, match="fmt"):
        write(generate(10, seed=1, end=END), Path("unused"), "json")  # type: ignore[arg-type]
    naive = generate(10, seed=1, end=datetime(2025, 6, 1))
    assert naive.end == END


def test_end_defaults_to_today_utc() -> None:
    data = generate(20, seed=1, years=0.5)
    assert data.end.tzinfo == UTC and data.end.hour == 0 and data.end.minute == 0
    assert abs(datetime.now(UTC) - data.end) < timedelta(days=1, minutes=1)
    assert data.truth_as_of == data.end - timedelta(days=90)
