"""The action catalog: strict parsing, readable errors, a stable version, the control."""

from __future__ import annotations

import pydantic
import pytest

from features.contract import NO_ACTION
from features.segments import SEGMENT_COLUMNS
from features.spec import default_spec
from models.catalog import Catalog, CatalogError, default_catalog, parse_catalog

BASE = """
goal_weights: {growth: 2.0}
contact_policy:
  rules:
    - {channel: email, max_contacts: 2, window_days: 30}
actions:
  - id: cross_sell
    channel: email
    consent_field: email_opt_in
    cost: 0.1
    margin_rate: 0.3
    eligibility: orders_365d >= 1
    cooldown_days: 14
    goal: growth
  - id: service_callback
    channel: call
    consent_field: phone_opt_in
    cost: 4
    value_kind: retained_value
    eligibility: complaints_90d >= 1 or churn_probability >= 0.5
"""


def _error(text: str, source: str = "shop.yaml") -> str:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, source)
    return str(info.value)


def test_parses_and_adds_the_control_first() -> None:
    catalog = parse_catalog(BASE)
    assert catalog.ids == [NO_ACTION, "cross_sell", "service_callback"]
    control = catalog.action(NO_ACTION)
    assert (control.channel, control.cost, control.rule) == ("none", 0.0, None)
    assert catalog.action("service_callback").cost == 4.0  # YAML int accepted for a float
    rule = catalog.action("cross_sell").rule
    assert rule is not None
    assert rule.fields == frozenset({"orders_365d"})


def test_a_listed_control_is_moved_first_not_duplicated() -> None:
    text = BASE + "  - {id: no_action, channel: none, cost: 0}\n"
    assert parse_catalog(text).ids == [NO_ACTION, "cross_sell", "service_callback"]


def test_control_must_stay_a_free_no_op() -> None:
    message = _error(BASE + "  - {id: no_action, channel: none, cost: 1}\n")
    assert "action 'no_action'" in message
    assert "cost 0" in message


def test_bad_rule_names_file_action_field_and_position() -> None:
    text = BASE.replace("orders_365d >= 1", "orders_365d => 1")
    message = _error(text)
    assert "shop.yaml: action 'cross_sell' field 'eligibility'" in message
    assert "column 13" in message
    assert "orders_365d => 1\n" in message
    assert "^" in message.splitlines()[-1]


def test_missing_consent_for_a_contact_channel() -> None:
    message = _error(BASE.replace("    consent_field: phone_opt_in\n", ""))
    assert "shop.yaml: action 'service_callback'" in message
    assert "consent_field is required" in message
    assert "'call'" in message


def test_negative_cost_and_unknown_key_are_all_reported() -> None:
    text = BASE.replace("cost: 0.1", "cost: -0.1").replace("cost: 4", "cost: 4\n    colour: red")
    message = _error(text)
    assert "action 'cross_sell' field 'cost': Input should be greater than or equal to 0" in message
    assert "action 'service_callback' field 'colour': unknown key" in message


def test_strict_types_and_unknown_top_level_keys() -> None:
    assert "field 'cost': Input should be a valid number" in _error(
        BASE.replace("cost: 4", "cost: '4'")
    )
    assert "field 'contact_policy.rules.0.max_contacts'" in _error(
        BASE.replace("max_contacts: 2", "max_contacts: 2.5")
    )
    assert "field 'version': unknown key" in _error(BASE + "version: 3\n")


def test_structural_errors() -> None:
    assert "declared twice" in _error(BASE + "  - {id: cross_sell, channel: none, cost: 0}\n")
    assert "at least one action besides no_action" in _error("actions: []\n")
    assert _error("actions: [", "x.yaml").startswith("x.yaml: not valid YAML")
    assert "a mapping with an 'actions' list" in _error("- 1\n")
    assert "rules repeat a channel" in _error(
        BASE.replace(
            "    - {channel: email, max_contacts: 2, window_days: 30}",
            "    - {channel: email, max_contacts: 2, window_days: 30}\n"
            "    - {channel: email, max_contacts: 1, window_days: 30}",
        )
    )


def test_version_is_stable_and_follows_content() -> None:
    version = parse_catalog(BASE).version
    assert version.startswith("cat-")
    reformatted = "# comment\n" + BASE.replace("cost: 0.1", "cost: 0.10").replace(
        "{channel: email, max_contacts: 2, window_days: 30}",
        "{window_days: 30, channel: email, max_contacts: 2}",
    )
    assert parse_catalog(reformatted).version == version
    for change in (("cost: 0.1", "cost: 0.2"), ("orders_365d >= 1", "orders_365d >= 2")):
        assert parse_catalog(BASE.replace(*change)).version != version
    assert parse_catalog(BASE + "  - {id: no_action, channel: none, cost: 0}\n").version == version


def test_catalog_is_frozen() -> None:
    catalog = parse_catalog(BASE)
    with pytest.raises(pydantic.ValidationError):
        catalog.action("cross_sell").cost = 0.0  # type: ignore[misc]


def test_goal_weights_and_history_fields() -> None:
    catalog = parse_catalog(BASE)
    assert catalog.effective_weight(catalog.action("cross_sell")) == 2.0
    assert catalog.effective_weight(catalog.action("service_callback")) == 1.0
    assert catalog.action("cross_sell").cooldown_field == "days_since_action_cross_sell"
    assert catalog.contact_policy.rules[0].field == "contacts_email_30d"
    assert catalog.required_fields == sorted(
        {
            "churn_probability",
            "value_p50",
            "orders_365d",
            "complaints_90d",
            "email_opt_in",
            "phone_opt_in",
            "days_since_action_cross_sell",
            "contacts_email_30d",
        }
    )


def test_check_fields_names_the_action_and_field() -> None:
    catalog = parse_catalog(BASE)
    catalog.check_fields(catalog.required_fields)
    known = [f for f in catalog.required_fields if f != "complaints_90d"]
    with pytest.raises(CatalogError, match=r"action 'service_callback': unknown fields \['compl"):
        catalog.check_fields(known)


def test_default_catalog_fits_the_feature_spec() -> None:
    catalog = default_catalog()
    assert isinstance(catalog, Catalog)
    assert catalog.ids[0] == NO_ACTION
    assert set(catalog.ids) >= {
        "retention_discount",
        "loyalty_upgrade",
        "cross_sell",
        "service_callback",
        "winback_email",
    }
    known = [*default_spec().names, *SEGMENT_COLUMNS, "churn_probability", "value_p50"]
    catalog.check_fields(known)
    assert default_catalog().version == catalog.version
