"""Customer-base analytics computations against hand counts, closed forms and simulations
whose truth is known (a Markov chain, normal outcomes, binomial coverage)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from models.base_analytics import (
    QUADRANTS,
    TransitionMatrix,
    WalletSettings,
    annual_spend,
    cohort_triangle,
    customer_equity,
    equity_change,
    loyalty_index,
    mix_distance,
    period_boundaries,
    period_flows,
    segment_map,
    wallet_potential,
    wilson_interval,
)

# --------------------------------------------------------------------------- periods
AS_OF = pd.Timestamp("2025-03-31", tz="UTC").to_pydatetime()


@pytest.mark.parametrize(
    ("period", "periods", "ends"),
    [
        ("month", 3, "2024-11-30 2024-12-31 2025-01-31 2025-02-28 2025-03-31"),
        ("quarter", 2, "2024-06-30 2024-09-30 2024-12-31 2025-03-31"),
    ],
)
def test_period_boundaries_step_back_by_calendar_periods(
    period: str, periods: int, ends: str
) -> None:
    boundaries = period_boundaries(AS_OF, period, periods)
    assert [f"{b:%Y-%m-%d}" for b in boundaries] == ends.split()
    assert all(str(b.tz) == "UTC" for b in boundaries)


def test_period_boundaries_reject_an_unknown_period_or_count() -> None:
    with pytest.raises(ValueError, match="period must be one of"):
        period_boundaries(AS_OF, "week", 3)
    with pytest.raises(ValueError, match="periods must be >= 1"):
        period_boundaries(AS_OF, "month", 0)


# --------------------------------------------------------------------------- rates
def test_wilson_interval_textbook_value_and_empty_groups() -> None:
    low, high = wilson_interval([8, 0], [10, 0])
    assert low[0] == pytest.approx(0.4902, abs=1e-4) and high[0] == pytest.approx(0.9433, abs=1e-4)
    assert np.isnan(low[1]) and np.isnan(high[1])
    low, high = wilson_interval([0, 50], [50, 50])
    assert low[0] == pytest.approx(0.0, abs=1e-12) and 0 < high[0] < 0.1
    assert high[1] == 1.0 and 0.9 < low[1] < 1.0


@pytest.mark.parametrize("n", [20, 200])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_wilson_interval_covers_the_true_rate_about_95_percent(n: int, p: float) -> None:
    """Exact coverage: the binomial probability of every count whose interval holds p."""
    k = np.arange(n + 1)
    low, high = wilson_interval(k, np.full(n + 1, n))
    coverage = binom.pmf(k, n, p)[(low <= p) & (p <= high)].sum()
    assert 0.92 < coverage < 0.99


# --------------------------------------------------------------------------- retention
def test_period_flows_count_by_hand() -> None:
    before = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    now = np.array([1, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
    new = np.array([0, 0, 0, 1, 0, 0, 0, 1], dtype=bool)  # the last one did not buy: not new
    alive = np.array([0.9, 0.2, 1.0, 1.0, 1.0, 0.0, 0.4, 0.0])
    groups = np.array(["x", "x", "y", "y", "x", "y", "y", "x"])
    flows = period_flows(before, now, new, alive, groups)
    x, y = flows.loc["x"], flows.loc["y"]
    assert (x.active_previous, x.active, x.retained, x.churned) == (2, 2, 1, 1)
    assert (x.reactivated, x.new) == (1, 0)
    assert (y.active_previous, y.active, y.retained, y.churned, y.reactivated, y.new) == (
        2,
        2,
        1,
        1,
        0,
        1,
    )
    assert x.retention_rate == 0.5 and x.survival_rate == pytest.approx((0.9 + 0.2) / 2)
    assert y.survival_rate == pytest.approx((1.0 + 0.4) / 2)
    overall = period_flows(before, now, new, alive).loc["all"]
    assert overall.active == 4 and overall.retained == 2 and overall.retention_rate == 0.5
    assert overall.retention_low < 0.5 < overall.retention_high


def test_period_flows_identities_on_random_customers() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    before, now = rng.random(n) < 0.4, rng.random(n) < 0.45
    new = (rng.random(n) < 0.2) & ~before  # a first order now: no order before
    groups = rng.choice(["a", "b", "c"], n)
    flows = period_flows(before, now, new, rng.random(n), groups)
    assert (flows.active == flows.retained + flows.reactivated + flows.new).all()
    assert (flows.active_previous == flows.retained + flows.churned).all()
    assert flows.active.sum() == now.sum()
    manual = pd.DataFrame({"g": groups, "b": before, "a": now}).groupby("g")
    rate = manual.apply(lambda f: (f.b & f.a).sum() / f.b.sum(), include_groups=False)
    np.testing.assert_allclose(flows.retention_rate, rate.to_numpy())


def test_cohort_triangle_by_hand() -> None:
    cohort = np.array([0, 0, 1, 1, 1, -1])
    activity = np.array(
        [
            [1, 1, 0],
            [1, 0, 1],
            [0, 1, 1],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 1],  # acquired before the window: left out
        ],
        dtype=bool,
    )
    triangle = cohort_triangle(cohort, activity).set_index(["cohort", "period"])
    assert list(triangle.index) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    assert triangle.loc[(0, 0), "active_rate"] == 1.0
    assert triangle.loc[(0, 1), ["active", "retained", "active_previous"]].tolist() == [1, 1, 2]
    assert triangle.loc[(0, 2), "retention_rate"] == 0.0  # the one active in 1 left in 2
    assert triangle.loc[(1, 1), "active_rate"] == pytest.approx(2 / 3)
    assert triangle.loc[(1, 2), "retention_rate"] == 0.5
    assert np.isnan(triangle.loc[(1, 1), "retention_rate"])
    assert triangle.loc[(2, 2), "cohort_customers"] == 0 and np.isnan(
        triangle.loc[(2, 2), "active_rate"]
    )


# --------------------------------------------------------------------------- migration
STATES = ("a", "b", "c")
TRUE_P = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.05, 0.15, 0.8]])


def _walk(rng: np.random.Generator, states: np.ndarray, P: np.ndarray) -> np.ndarray:
    cumulative = np.cumsum(P, axis=1)[states]
    return (rng.random(len(states))[:, None] >= cumulative[:, :-1]).sum(axis=1)


def test_transition_counts_and_probabilities_match_a_crosstab() -> None:
    rng = np.random.default_rng(5)
    before = rng.choice(list(STATES), 400)
    after = rng.choice(list(STATES), 400)
    matrix = TransitionMatrix.fit(before, after, [*STATES, "d"])
    table = pd.crosstab(before, after).reindex(index=list(STATES), columns=list(STATES))
    np.testing.assert_array_equal(matrix.counts[:3, :3], table.to_numpy())
    assert matrix.counts[3].sum() == 0 and not matrix.observed[3]
    np.testing.assert_allclose(matrix.probabilities.sum(axis=1), 1.0)
    assert matrix.probabilities[3, 3] == 1.0  # nobody started in d: it keeps its customers
    np.testing.assert_allclose(
        matrix.probabilities[:3, :3], table.div(table.sum(axis=1), axis=0).to_numpy()
    )
    low, high = matrix.intervals()
    assert (low[:3] <= matrix.probabilities[:3]).all() and (
        matrix.probabilities[:3] <= high[:3]
    ).all()
    assert np.isnan(low[3]).all()
    assert matrix.mix("before")[:3] == pytest.approx(table.sum(axis=1).to_numpy() / 400)
    with pytest.raises(ValueError, match=r"states \['zz'\]"):
        TransitionMatrix.fit(["a", "zz"], ["a", "b"], STATES)


def test_markov_recovers_a_known_chain_and_projects_its_mix() -> None:
    """Customers walk a known chain: the fitted matrix lies within its intervals, and the
    projection of the next mix is closer to the realised one than 'the same mix'."""
    rng = np.random.default_rng(11)
    start = rng.choice(3, 20_000, p=[0.6, 0.3, 0.1])
    step1 = _walk(rng, start, TRUE_P)
    step2 = _walk(rng, step1, TRUE_P)
    names = np.array(STATES)
    fitted = TransitionMatrix.fit(names[start], names[step1], STATES)
    assert np.abs(fitted.probabilities - TRUE_P).max() < 0.03
    realised = np.bincount(step2, minlength=3) / len(step2)
    projected = fitted.project(fitted.mix("after"))
    assert mix_distance(projected, realised) < 0.01
    assert mix_distance(projected, realised) < mix_distance(fitted.mix("after"), realised) / 3


def test_transition_intervals_cover_the_true_probabilities() -> None:
    """Over 300 simulated transitions of 1,500 customers, each cell's 95% interval holds
    the true probability about 95% of the time."""
    rng = np.random.default_rng(12)
    names = np.array(STATES)
    inside = np.zeros((3, 3))
    for _ in range(300):
        start = rng.choice(3, 1500, p=[0.6, 0.3, 0.1])
        low, high = TransitionMatrix.fit(
            names[start], names[_walk(rng, start, TRUE_P)], STATES
        ).intervals()
        inside += (low <= TRUE_P) & (high >= TRUE_P)
    coverage = inside / 300
    assert coverage.min() > 0.90 and coverage.mean() == pytest.approx(0.95, abs=0.02)


def test_projection_and_long_run_are_matrix_powers_and_the_stationary_mix() -> None:
    matrix = TransitionMatrix(STATES, TRUE_P * 100)
    mix = np.array([1.0, 0.0, 0.0])
    np.testing.assert_allclose(matrix.project(mix, 3), mix @ np.linalg.matrix_power(TRUE_P, 3))
    values, vectors = np.linalg.eig(TRUE_P.T)
    stationary = np.real(vectors[:, np.argmax(np.real(values))])
    stationary /= stationary.sum()
    for start in ([1.0, 0.0, 0.0], [0.1, 0.1, 0.8]):
        np.testing.assert_allclose(matrix.long_run(start), stationary, atol=1e-9)
    np.testing.assert_allclose(matrix.long_run(stationary) @ TRUE_P, stationary, atol=1e-9)
    # an absorbing state takes everyone in the long run
    absorbing = TransitionMatrix(STATES, np.array([[8.0, 2.0, 0.0], [1.0, 8.0, 1.0], [0, 0, 5.0]]))
    np.testing.assert_allclose(absorbing.long_run([0.5, 0.5, 0.0]), [0.0, 0.0, 1.0], atol=1e-9)
    assert mix_distance([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)


# --------------------------------------------------------------------------- equity
def test_customer_equity_by_hand_and_unscored_customers() -> None:
    equity = customer_equity([10.0, 20.0, np.nan], [0.0, 10.0, np.nan], [25.632, 30.0, np.nan])
    assert (equity.customers, equity.unscored, equity.total) == (3, 1, 30.0)
    sd = np.array([25.632, 20.0]) / (2 * 1.2815515655446004)
    assert equity.high - equity.total == pytest.approx(1.2815515655446004 * np.sqrt(np.sum(sd**2)))
    assert equity.total - equity.low == pytest.approx(equity.high - equity.total)


def test_equity_interval_covers_independent_outcomes_80_percent() -> None:
    rng = np.random.default_rng(2)
    mean = rng.gamma(2.0, 50.0, 500)
    sd = mean * rng.uniform(0.3, 1.2, 500)
    z = 1.2815515655446004
    equity = customer_equity(mean, mean - z * sd, mean + z * sd)
    totals = rng.normal(mean, sd, size=(4000, 500)).sum(axis=1)
    coverage = np.mean((equity.low <= totals) & (totals <= equity.high))
    assert 0.77 < coverage < 0.83


def _equity_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    previous = pd.DataFrame(
        {
            "customer_id": ["kept", "lost", "lapsed", "gone"],
            "active": [True, True, False, True],
            "value": [100.0, 40.0, 5.0, 7.0],
        }
    )
    current = pd.DataFrame(
        {
            "customer_id": ["kept", "lost", "lapsed", "fresh", "dormant"],
            "active": [True, False, True, True, False],
            "value": [130.0, 2.0, 25.0, 60.0, 1.0],
            "ordered_before": [True, True, True, False, True],
        }
    )
    return previous, current


def test_equity_change_by_hand() -> None:
    change = equity_change(*_equity_frames())
    # "gone" is absent from the current run (not known any more): lost like "lost"
    assert change.previous == 147.0 and change.current == 215.0
    assert (change.retained, change.lost, change.value_change) == (100.0, 47.0, 30.0)
    assert (change.reactivated, change.new) == (25.0, 60.0)
    assert (change.retained_customers, change.lost_customers) == (1, 2)
    assert (change.reactivated_customers, change.new_customers) == (1, 1)
    parts = change.previous - change.lost + change.value_change + change.reactivated + change.new
    assert parts == pytest.approx(change.current)
    with pytest.raises(ValueError, match=r"current: missing column\(s\) \['ordered_before'\]"):
        equity_change(_equity_frames()[0], _equity_frames()[1].drop(columns="ordered_before"))


def test_equity_change_adds_up_on_random_runs() -> None:
    rng = np.random.default_rng(8)
    ids = [f"c{i}" for i in range(3000)]
    previous = pd.DataFrame(
        {
            "customer_id": ids[:2500],
            "active": rng.random(2500) < 0.6,
            "value": rng.gamma(1, 80, 2500),
        }
    )
    current = pd.DataFrame(
        {
            "customer_id": ids[500:],
            "active": rng.random(2500) < 0.6,
            "value": np.where(rng.random(2500) < 0.05, np.nan, rng.gamma(1, 80, 2500)),
            "ordered_before": rng.random(2500) < 0.8,
        }
    )
    change = equity_change(previous, current)
    parts = change.previous - change.lost + change.value_change + change.reactivated + change.new
    assert parts == pytest.approx(change.current, rel=1e-12)
    assert change.previous == pytest.approx(previous.value[previous.active].sum())
    assert change.current == pytest.approx(current.value[current.active].sum())


# --------------------------------------------------------------------------- customer share
def test_wallet_potential_is_the_group_quantile_or_own_spend() -> None:
    rng = np.random.default_rng(4)
    spend = rng.gamma(1.5, 300, 3000)
    region = rng.choice(["n", "s", "tiny"], 3000, p=[0.6, 0.38, 0.02])
    settings = WalletSettings(quantile=0.9, min_group=100)
    potential = wallet_potential(spend, {"region": region}, settings)
    for name in ("n", "s"):
        inside = region == name
        q = np.quantile(spend[inside], 0.9)
        np.testing.assert_allclose(potential[inside], np.maximum(q, spend[inside]))
    tiny = region == "tiny"  # too small a group: the whole base's quantile
    assert tiny.sum() < 100
    np.testing.assert_allclose(potential[tiny], np.maximum(np.quantile(spend, 0.9), spend[tiny]))
    assert (spend / potential <= 1.0).all()
    assert np.mean(spend / potential == 1.0) == pytest.approx(0.1, abs=0.01)
    np.testing.assert_allclose(wallet_potential(spend), np.maximum(np.quantile(spend, 0.9), spend))
    # only reference customers set the quantiles (those with a measured yearly spend)
    reference = spend < np.quantile(spend, 0.5)
    cut = wallet_potential(spend, {"region": region}, settings, reference)
    north = region == "n"
    q = np.quantile(spend[north & reference], 0.9)
    np.testing.assert_allclose(cut[north], np.maximum(q, spend[north]))
    with pytest.raises(ValueError, match="quantile"):
        WalletSettings(quantile=1.0)


def test_annual_spend_scales_short_tenures_up_to_a_year() -> None:
    np.testing.assert_allclose(
        annual_spend([100.0, 100.0, 100.0], [91.25, 1000.0, 5.0]),
        [400.0, 100.0, 1216.6667],
        rtol=1e-4,
    )


# --------------------------------------------------------------------------- segment map
def test_loyalty_index_ranks_and_orders_customers() -> None:
    recency = np.array([5.0, 5.0, 200.0, np.nan])
    orders = np.array([10.0, 10.0, 1.0, 0.0])
    tenure = np.array([900.0, 100.0, 500.0, 50.0])
    satisfaction = np.array([5.0, np.nan, 2.0, np.nan])
    index = loyalty_index(recency, orders, tenure, satisfaction)
    assert ((index >= 0) & (index <= 100)).all()
    assert index[0] > index[1]  # the same but for tenure and satisfaction
    assert index[0] > index[2] > index[3]
    # the same ranks on the others: satisfaction's contribution alone, no rating = middle
    # ranks: recency among the 3 buyers (ties share 0.75), orders among all 4 (0 counts:
    # ties at 10 share 2.5 / 3), tenure, satisfaction among the 2 rated (else 0.5)
    assert index[0] == pytest.approx(25 * (0.75 + 2.5 / 3 + 1.0 + 1.0))
    assert index[1] == pytest.approx(25 * (0.75 + 2.5 / 3 + 1 / 3 + 0.5))
    assert index[3] == pytest.approx(25 * (0.0 + 0.0 + 0.0 + 0.5))


def test_segment_map_points_quadrants_and_movement() -> None:
    segment = np.array(["a", "a", "b", "b", "b", "c"])
    loyalty = np.array([80.0, 60.0, 30.0, 20.0, 40.0, 90.0])
    value = np.array([100.0, 300.0, 10.0, np.nan, 20.0, 5.0])
    churn = np.array([0.1, 0.3, 0.8, 0.9, 0.7, 0.2])
    previous = pd.DataFrame(
        {"customers": [1], "loyalty": [50.0], "value": [150.0], "churn_risk": [0.5]},
        index=pd.Index(["a"], name="segment"),
    )
    points = segment_map(segment, loyalty, value, churn, previous)
    assert points.loc["a", ["customers", "loyalty", "value", "equity"]].tolist() == [
        2,
        70.0,
        200.0,
        400.0,
    ]
    assert points.loc["b", "value"] == 15.0 and points.loc["b", "churn_risk"] == pytest.approx(0.8)
    assert points.customer_share.sum() == pytest.approx(1.0)
    mean_value = np.nanmean(value)  # 87
    assert points.loc["a", "quadrant"] == QUADRANTS[(True, True)]
    assert points.loc["b", "quadrant"] == QUADRANTS[(False, False)]
    assert points.loc["c", "quadrant"] == QUADRANTS[(True, False)] and mean_value > 5.0
    assert points.loc["a", "previous_value"] == 150.0 and np.isnan(
        points.loc["b", "previous_value"]
    )
