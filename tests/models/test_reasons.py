"""Reasons: worded by the spec's phrases, strongest drivers first, both directions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.spec import default_spec
from models.reasons import CHURN_WORDS, VALUE_WORDS, common_reasons, describe, top_reasons


def test_phrases_come_from_the_spec_templates() -> None:
    spec = default_spec()
    for name in ("days_since_last_order", "unresolved_complaints_30d", "spend_trend_90d"):
        assert describe(name, 2.0) == spec.by_name()[name].phrase.format(value=2.0)
    assert describe("days_since_last_order", 94.2) == "no order for 94 days"
    assert (
        describe("unresolved_complaints_30d", 2.0) == "2 unresolved complaints in the last 30 days"
    )
    assert describe("region", "north") == "region north"


def test_every_spec_feature_has_a_readable_phrase_for_values_and_nulls() -> None:
    spec = default_spec()
    for name in spec.names:
        value = "north" if name in spec.categorical else 3.0
        for v in (value, None, float("nan")):
            text = describe(name, v, spec)
            assert text and "{" not in text and "nan" not in text.lower(), (name, text)


def test_nulls_read_as_absence() -> None:
    assert describe("days_since_last_complaint", None) == "no complaint ever"
    assert describe("avg_satisfaction_90d", float("nan")) == ("no satisfaction in the last 90 days")
    assert describe("region", None) == "region unknown"
    assert describe("spend_trend_90d", None) == "spend trend 90d not available"


def test_features_outside_the_spec_read_name_equals_value() -> None:
    assert describe("my_score", 0.5) == "my score = 0.5"


def test_top_reasons_pick_the_strongest_in_each_direction() -> None:
    names = ["days_since_last_order", "orders_90d", "complaints_30d", "tenure_days"]
    contributions = np.array([1.5, -0.8, 0.3, -0.05])
    values = [np.float64(120.0), np.float64(0.0), np.float64(2.0), np.float64(400.0)]
    out = top_reasons(contributions, values, names, top=1)
    assert [r["feature"] for r in out["up"]] == ["days_since_last_order"]
    assert [r["feature"] for r in out["down"]] == ["orders_90d"]
    assert out["up"][0]["text"] == "no order for 120 days (raises risk)"
    assert out["down"][0]["text"].endswith("(lowers risk)")
    both = top_reasons(contributions, values, names, top=3)
    assert [r["feature"] for r in both["up"]] == ["days_since_last_order", "complaints_30d"]
    assert [r["feature"] for r in both["down"]] == ["orders_90d", "tenure_days"]
    json.dumps(both)  # plain Python values only: the service returns this as is


def test_value_words_and_zero_contributions() -> None:
    out = top_reasons(
        np.array([0.0, 2.0]), [1.0, 5.0], ["orders_30d", "orders_90d"], 3, VALUE_WORDS
    )
    assert [r["feature"] for r in out["up"]] == ["orders_90d"]
    assert out["down"] == []
    assert out["up"][0]["text"] == f"5 orders in the last 90 days ({VALUE_WORDS['up']})"
    assert CHURN_WORDS["up"] != VALUE_WORDS["up"]


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="must match"):
        top_reasons(np.array([1.0]), [1.0, 2.0], ["a", "b"])


def test_common_reasons_count_drivers_across_a_group_with_a_typical_value() -> None:
    names = ["days_since_last_order", "orders_90d", "region"]
    rows = [
        (np.array([2.0, -1.0, 0.5]), [120.0, 0.0, "north"]),
        (np.array([1.0, 0.1, 0.3]), [80.0, 1.0, "north"]),
        (np.array([0.9, 0.0, 0.2]), [100.0, 2.0, "south"]),
        (np.array([-0.5, 1.0, 0.0]), [5.0, None, "north"]),
    ]
    explanations = [top_reasons(c, v, names, top=2) for c, v in rows]
    up = common_reasons(explanations, "up", top=2)
    assert [r["feature"] for r in up] == ["days_since_last_order", "region"]
    assert [r["customers"] for r in up] == [3, 3] and up[0]["share"] == 0.75
    assert up[0]["text"] == "no order for 100 days (raises risk)"  # the median of 120, 80, 100
    assert up[1]["phrase"] == "region north"
    down = common_reasons(explanations, "down")
    assert [r["feature"] for r in down] == ["days_since_last_order", "orders_90d"]
    assert common_reasons([], "up") == []
