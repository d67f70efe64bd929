"""Arbitration (screening, value, ranking) and exploration with logged propensities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import NO_ACTION
from models.catalog import Catalog, parse_catalog
from models.policy import Exclusion, Policy, arbitrate, arbitrate_one, draw, screen
from models.uplift import UpliftPrediction

CATALOG = """
goal_weights: {growth: 1.0}
contact_policy:
  rules:
    - {channel: email, max_contacts: 2, window_days: 30}
    - {channel: call, max_contacts: 1, window_days: 30}
actions:
  - id: cross_sell
    channel: email
    consent_field: email_opt_in
    cost: 0.1
    margin_rate: 0.3
    eligibility: orders_365d >= 1
    cooldown_days: 14
    goal: growth
  - id: retention_discount
    channel: email
    consent_field: email_opt_in
    cost: 8
    value_kind: retained_value
    margin_rate: 0.5
    eligibility: churn_probability >= 0.25
  - id: service_callback
    channel: call
    consent_field: phone_opt_in
    cost: 4
    value_kind: retained_value
    margin_rate: 0.5
"""
IDS = [NO_ACTION, "cross_sell", "retention_discount", "service_callback"]


def customers(n: int = 1, **overrides: object) -> pd.DataFrame:
    """Customers every action is open to, with some columns overridden."""
    base: dict[str, object] = {
        "churn_probability": 0.4,
        "value_p50": 200.0,
        "orders_365d": 3,
        "email_opt_in": 1.0,
        "phone_opt_in": 1.0,
        "contacts_email_30d": 0.0,
        "contacts_call_30d": np.nan,
        "days_since_action_cross_sell": np.nan,
        # uplift: cross_sell +10 revenue; discount -0.1 churn; callback -0.05 churn
        "uplift_conversion_cross_sell": 0.05,
        "uplift_revenue_cross_sell": 10.0,
        "uplift_conversion_retention_discount": 0.1,
        "uplift_revenue_retention_discount": 5.0,
        "uplift_conversion_service_callback": 0.05,
        "uplift_revenue_service_callback": 1.0,
    }
    return pd.DataFrame({k: [overrides.get(k, v)] * n for k, v in base.items()})


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return parse_catalog(CATALOG, "test.yaml")


def test_value_score_and_ranking(catalog: Catalog) -> None:
    result = arbitrate(customers(), catalog)
    assert result.actions == IDS
    # cross_sell: 10 x 0.3 - 0.1; discount: 0.1 x 200 x 0.5 - 8; callback: 0.05 x 200 x 0.5 - 4
    assert np.allclose(result.expected_value[0], [0.0, 3.0, 10.0, 5.0])
    assert np.allclose(result.score[0], [0.0, 2.9, 2.0, 1.0])
    assert result.best().tolist() == ["cross_sell"]
    ranked = arbitrate_one(customers().iloc[0].to_dict(), catalog).ranked
    assert [r.action for r in ranked] == ["cross_sell", "retention_discount", "service_callback"]
    top = ranked[0]
    assert (top.uplift, top.value, top.cost, top.weight) == pytest.approx((10, 0.3, 0.1, 1))


def test_weight_changes_the_ranking(catalog: Catalog) -> None:
    boosted = parse_catalog(CATALOG.replace("cost: 8\n", "cost: 8\n    weight: 1.2\n"))
    result = arbitrate(customers(), boosted)
    assert result.score[0, IDS.index("retention_discount")] == pytest.approx(10 * 1.2 - 8)
    assert result.best().tolist() == ["retention_discount"]
    by_goal = parse_catalog(CATALOG.replace("{growth: 1.0}", "{growth: 0.5}"))
    assert arbitrate(customers(), by_goal).best().tolist() == ["retention_discount"]


def test_churn_reduction_is_capped_and_unprofitable_actions_rank_below_control(
    catalog: Catalog,
) -> None:
    frame = customers(churn_probability=0.3, uplift_conversion_retention_discount=0.6)
    result = arbitrate(frame, catalog)
    assert result.uplift[0, IDS.index("retention_discount")] == pytest.approx(0.3)
    poor = customers(value_p50=10.0, uplift_revenue_cross_sell=0.1)
    ranked = arbitrate_one(poor.iloc[0].to_dict(), catalog, k=4).ranked
    assert ranked[0].action == NO_ACTION
    assert ranked[0].score == 0.0
    assert all(r.score < 0 for r in ranked[1:])


def test_exclusion_reasons(catalog: Catalog) -> None:
    frame = pd.concat(
        [
            customers(orders_365d=0),
            customers(email_opt_in=0.0),
            customers(email_opt_in=np.nan),
            customers(contacts_email_30d=2.0, contacts_call_30d=1.0),
            customers(days_since_action_cross_sell=5.0),
            customers(days_since_action_cross_sell=14.0, orders_365d=0, email_opt_in=0.0),
        ],
        ignore_index=True,
    )
    result = arbitrate(frame, catalog)
    assert result.allowed[:, 0].all()
    reasons = [result.exclusions(i) for i in range(len(frame))]
    assert reasons[0] == {"cross_sell": "not eligible: orders_365d >= 1"}
    assert reasons[1] == {
        "cross_sell": "no consent (email_opt_in is false)",
        "retention_discount": "no consent (email_opt_in is false)",
    }
    assert reasons[2]["cross_sell"] == "no consent (email_opt_in is missing)"
    assert reasons[3] == {
        "cross_sell": "contact policy: 2 emails in 30 days (max 2)",
        "retention_discount": "contact policy: 2 emails in 30 days (max 2)",
        "service_callback": "contact policy: 1 call in 30 days (max 1)",
    }
    assert reasons[4] == {"cross_sell": "cool-down: last sent 5 days ago (< 14)"}
    # the first failing check wins, a finished cool-down does not exclude
    assert reasons[5]["cross_sell"] == "not eligible: orders_365d >= 1"
    assert result.reason[5, 1] == Exclusion.NOT_ELIGIBLE
    assert result.best().tolist() == [
        "retention_discount",
        "service_callback",
        "service_callback",
        NO_ACTION,
        "retention_discount",
        "service_callback",
    ]


def test_uplift_object_equals_uplift_columns(catalog: Catalog) -> None:
    frame = customers(3)
    prediction = UpliftPrediction(
        actions=["cross_sell", "retention_discount", "unknown_to_catalog"],
        incremental_conversion=np.tile([0.05, 0.1, 0.9], (3, 1)),
        incremental_revenue=np.tile([10.0, 5.0, 99.0], (3, 1)),
        baseline_conversion=np.full(3, 0.2),
        baseline_revenue=np.full(3, 20.0),
    )
    plain = frame.drop(columns=[c for c in frame.columns if c.startswith("uplift_")])
    from_object = arbitrate(plain, catalog, prediction)
    from_columns = arbitrate(frame, catalog)
    assert np.allclose(from_object.score[:, :3], from_columns.score[:, :3])
    # an action without an uplift estimate is excluded, with its reason
    assert not from_object.allowed[:, 3].any()
    assert from_object.exclusions(0) == {"service_callback": "no uplift estimate for this action"}


def test_missing_column_is_named(catalog: Catalog) -> None:
    with pytest.raises(KeyError, match="phone_opt_in"):
        arbitrate(customers().drop(columns="phone_opt_in"), catalog)


def test_top_k_frame(catalog: Catalog) -> None:
    frame = pd.concat([customers(), customers(orders_365d=0)], ignore_index=True)
    frame.index = pd.Index(["c1", "c2"])
    top = arbitrate(frame, catalog).top(k=2)
    assert top[["row", "rank", "action"]].values.tolist() == [
        ["c1", 1, "cross_sell"],
        ["c1", 2, "retention_discount"],
        ["c2", 1, "retention_discount"],
        ["c2", 2, "service_callback"],
    ]
    assert set(top.columns) >= {"score", "expected_value", "uplift", "value", "cost", "weight"}


def test_offers_are_the_ranked_actions_with_their_logging_propensities(catalog: Catalog) -> None:
    """The live score's plain-value actions carry the same figures as the typed ranking."""
    blocked = customers(contacts_call_30d=1.0)  # the callback is screened out
    result = arbitrate(blocked, catalog)
    propensity = np.array([0.1, 0.6, 0.2, 0.1])
    ranked = result.customer(0, k=4).ranked
    expected = [
        {**{k: v for k, v in vars(r).items() if k not in ("rank", "score")}, "propensity": p}
        for r, p in zip(ranked, propensity[[IDS.index(r.action) for r in ranked]], strict=True)
    ]
    offers = result.offers(propensity)
    assert [o["action"] for o in offers] == ["cross_sell", "retention_discount", NO_ACTION]
    assert offers == expected
    assert result.offers(propensity, top_k=1) == expected[:1]


def test_epsilon_greedy_probabilities(catalog: Catalog) -> None:
    frame = pd.concat([customers(), customers(orders_365d=0, email_opt_in=0.0)])
    probs = Policy(catalog, epsilon=0.2).action_probabilities(frame)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.allclose(probs[0], [0.05, 0.85, 0.05, 0.05])  # 4 allowed, cross_sell on top
    # only no_action and the callback are allowed; callback (score 1) on top
    assert np.allclose(probs[1], [0.1, 0.0, 0.0, 0.9])
    greedy = Policy(catalog).action_probabilities(frame)
    assert np.array_equal(greedy, np.array([[0, 1, 0, 0], [0, 0, 0, 1]], dtype=float))


def test_softmax_probabilities(catalog: Catalog) -> None:
    probs = Policy(catalog, temperature=2.0).action_probabilities(customers())
    expected = np.exp(np.array([0.0, 2.9, 2.0, 1.0]) / 2.0)
    assert np.allclose(probs[0], expected / expected.sum())
    blocked = customers(contacts_call_30d=1.0)
    assert Policy(catalog, temperature=2.0).action_probabilities(blocked)[0, 3] == 0.0


@pytest.mark.parametrize("options", [{"epsilon": 0.3}, {"temperature": 1.5}])
def test_choices_follow_their_propensities(catalog: Catalog, options: dict) -> None:
    n = 20_000
    policy = Policy(catalog, seed=11, **options)
    frame = customers(n)
    probs = policy.action_probabilities(frame)[0]
    decisions = policy.choose(frame)
    assert np.allclose(decisions["propensity"], probs[[IDS.index(a) for a in decisions["action"]]])
    freq = decisions["action"].value_counts(normalize=True).reindex(IDS, fill_value=0.0)
    tolerance = 4 * np.sqrt(probs * (1 - probs) / n) + 1e-9
    assert (np.abs(freq.to_numpy() - probs) <= tolerance).all(), (freq.to_numpy(), probs)
    explored = decisions["action"] != "cross_sell"
    assert (decisions["explored"] == explored).all()
    assert decisions["decision_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert decisions["decision_id"].is_unique
    assert (decisions["catalog_version"] == catalog.version).all()


def test_seeded_choices_are_reproducible(catalog: Catalog) -> None:
    frame = customers(500)
    first = Policy(catalog, epsilon=0.5, seed=3).choose(frame)
    second = Policy(catalog, epsilon=0.5, seed=3).choose(frame)
    other = Policy(catalog, epsilon=0.5, seed=4).choose(frame)
    assert first["action"].tolist() == second["action"].tolist()
    assert first["action"].tolist() != other["action"].tolist()


def test_single_customer_decision(catalog: Catalog) -> None:
    row = customers(contacts_call_30d=1.0).iloc[0].to_dict()
    decision = Policy(catalog, epsilon=0.1, seed=0).decide(row)
    assert decision.action in IDS[:3]
    expected = 0.9 + 0.1 / 3 if decision.action == "cross_sell" else 0.1 / 3
    assert decision.propensity == pytest.approx(expected)
    assert decision.channel == catalog.action(decision.action).channel
    assert decision.arbitration.exclusions == {
        "service_callback": "contact policy: 1 call in 30 days (max 1)"
    }
    assert [r.rank for r in decision.arbitration.ranked] == [1, 2, 3]
    assert len(decision.decision_id) == 32


def test_policy_rejects_bad_settings(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        Policy(catalog, epsilon=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Policy(catalog, temperature=0.0)
    with pytest.raises(ValueError, match="not both"):
        Policy(catalog, epsilon=0.1, temperature=1.0)


def _random_customers(n: int, seed: int) -> pd.DataFrame:
    """Customers with every kind of value the checks meet: nulls, zeros, ties, negatives."""
    rng = np.random.default_rng(seed)

    def pick(*choices: object) -> list[object]:
        return [choices[i] for i in rng.integers(0, len(choices), size=n)]

    frame = customers(n)
    frame["churn_probability"] = pick(0.0, -0.0, 0.1, 0.25, 0.3, 0.4, 0.9, np.nan)
    frame["value_p50"] = pick(0.0, -0.0, 37.5, 200.0, -1.0, np.nan)
    frame["orders_365d"] = pick(0, 1, 3, np.nan)
    frame["email_opt_in"] = pick(0.0, 1.0, np.nan)
    frame["phone_opt_in"] = pick(0.0, 1.0, np.nan)
    frame["contacts_email_30d"] = pick(0.0, 1.0, 2.0, 5.0, np.nan)
    frame["contacts_call_30d"] = pick(0.0, 1.0, np.nan)
    frame["days_since_action_cross_sell"] = pick(3.0, 14.0, 40.0, np.nan)
    for action in IDS[1:]:
        frame[f"uplift_conversion_{action}"] = rng.choice(
            [-0.2, 0.0, -0.0, 0.05, 0.3, 0.6, np.nan], n
        )
        frame[f"uplift_revenue_{action}"] = rng.choice(
            [-5.0, 0.0, -0.0, 1.0, 10.0, 80.0, np.nan], n
        )
    return frame


@pytest.mark.parametrize("with_uplift", [False, True])
def test_one_customer_path_equals_the_frame_path_exactly(
    catalog: Catalog, with_uplift: bool
) -> None:
    """A customer given as a mapping (the live path: plain values) gets the frame path's
    codes, figures, ranking, probabilities and exclusion texts, bit for bit."""
    frame = _random_customers(600, seed=3 + with_uplift)
    policy = Policy(catalog, epsilon=0.1)
    actions = IDS[1:3]  # with_uplift: a prediction object, one action without an estimate
    uplift = UpliftPrediction(
        actions,
        frame[[f"uplift_conversion_{a}" for a in actions]].to_numpy(),
        frame[[f"uplift_revenue_{a}" for a in actions]].to_numpy(),
        np.zeros(len(frame)),
        np.zeros(len(frame)),
    )
    expected = arbitrate(frame, catalog, uplift if with_uplift else None)
    expected_probs = policy.probabilities(expected)
    for i, row in enumerate(frame.to_dict("records")):
        one = None
        if with_uplift:
            one = UpliftPrediction(
                actions,
                uplift.incremental_conversion[[i]],
                uplift.incremental_revenue[[i]],
                np.zeros(1),
                np.zeros(1),
            )
        for result in (
            arbitrate(row, catalog, one),
            arbitrate(row, catalog, one, screen(row, catalog)),
        ):
            for name in ("uplift", "value", "expected_value", "score", "reason"):
                got, want = getattr(result, name)[0], getattr(expected, name)[i]
                assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
            assert result.ranking()[0].tolist() == expected.ranking()[i].tolist()
            assert policy.probabilities(result)[0].tobytes() == expected_probs[i].tobytes()
            one_row = np.array(policy.probabilities_one(result))
            assert one_row.tobytes() == expected_probs[i].tobytes()
            assert result.exclusions(0) == expected.exclusions(i)


def test_an_action_without_uplift_is_not_screened_on_either_path(catalog: Catalog) -> None:
    """Only actions with an uplift estimate are screened: a field that only such an
    action's rules read may be missing (no NBA model: no uplift at all), on both paths."""
    frame = customers().drop(
        columns=[
            "phone_opt_in",
            "uplift_conversion_service_callback",
            "uplift_revenue_service_callback",
        ]
    )
    expected = arbitrate(frame, catalog)
    got = arbitrate(frame.iloc[0].to_dict(), catalog)
    assert got.reason[0].tobytes() == expected.reason[0].tobytes()
    assert got.exclusions(0) == expected.exclusions(0)
    assert expected.exclusions(0)["service_callback"] == "no uplift estimate for this action"
    bare = customers()
    bare = bare.drop(columns=[c for c in bare.columns if c.startswith("uplift_")])
    bare = bare.drop(columns=["phone_opt_in", "email_opt_in"])
    assert arbitrate(bare.iloc[0].to_dict(), catalog).ranking()[0].tolist() == (
        arbitrate(bare, catalog).ranking()[0].tolist()
    )


def test_draw_is_generator_choice_exactly() -> None:
    """:func:`draw` picks ``Generator.choice``'s index and leaves the generator in its
    state, over probability rows like the live policy's (zeros, one certain action, an
    epsilon split, sums a few ulps off 1) and random ones."""
    shapes = np.random.default_rng(7)
    rows: list[list[float]] = [[1.0], [0.0, 1.0, 0.0], [0.9, 0.05, 0.05], [1 / 3] * 3]
    for _ in range(300):
        p = shapes.random(shapes.integers(1, 12)) * (shapes.random(1) < 0.7)
        p[shapes.integers(0, len(p))] += 1.0
        rows.append((p / p.sum()).tolist())
    for seed, p in enumerate(rows):
        ours, numpys = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(20):
            assert draw(ours, p) == int(numpys.choice(len(p), p=np.array(p)))
        assert ours.bit_generator.state == numpys.bit_generator.state


@pytest.mark.parametrize(
    ("p", "message"),
    [
        ([0.5, np.nan, 0.5], "contain NaN"),
        ([1.2, -0.2], "not non-negative"),
        ([0.5, 0.4], "do not sum to 1"),
        ([np.inf, 0.0], "do not sum to 1"),
        ([], "positive integer"),
    ],
)
def test_draw_refuses_what_choice_refuses(p: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        draw(np.random.default_rng(0), p)
    with pytest.raises(ValueError):
        np.random.default_rng(0).choice(len(p), p=np.array(p))
