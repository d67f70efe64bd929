"""Monitoring thresholds: the shipped file parses; mistakes fail naming the line."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from models.alerts import AlertsError, Threshold, load_alerts, parse_alerts

SHIPPED = resources.files("models").joinpath("default_alerts.yaml").read_text("utf-8")


def test_shipped_thresholds_parse_and_judge() -> None:
    alerts = load_alerts()
    psi = alerts.threshold("features", "psi")
    assert (psi.level(0.1), psi.level(0.25), psi.level(0.36)) == ("ok", "warn", "alert")
    assert alerts.threshold("churn", "auc_drop").alert == pytest.approx(0.03)
    # the partly matured run's checks and the days it needs
    assert alerts.threshold("churn", "active_shortfall").level(0.2) == "alert"
    assert alerts.threshold("value", "revenue_shortfall").level(0.07) == "warn"
    assert alerts.partial_days == 28
    assert Threshold(alert=0.1).level(float("nan")) == "ok"
    assert Threshold(alert=0.1).level(0.2) == "alert"
    with pytest.raises(KeyError, match=r"no threshold churn\.nope"):
        alerts.threshold("churn", "nope")


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_unknown_check_names_its_line() -> None:
    text = SHIPPED.replace("  auc_drop:", "  auc_dorp:", 1)
    with pytest.raises(AlertsError) as err:
        parse_alerts(text, "mine.yaml")
    assert f"mine.yaml:line {_line_of(text, 'auc_dorp')}: churn.auc_dorp: unknown" in str(err.value)


def test_bad_values_name_their_lines(tmp_path: Path) -> None:
    text = SHIPPED.replace("psi: {warn: 0.2, alert: 0.35}", "psi: {warn: 0.2, alert: -1}")
    text = text.replace(
        "coverage_gap: {warn: 0.05, alert: 0.10}", "coverage_gap: {warn: 0.5, alert: 0.1}"
    )
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    with pytest.raises(AlertsError) as err:
        load_alerts(path)
    message = str(err.value)
    assert f"line {_line_of(text, 'psi:')}: features.psi.alert" in message
    assert f"line {_line_of(text, 'coverage_gap')}: value.coverage_gap" in message
    assert "must not exceed alert" in message


def test_not_yaml_or_not_a_mapping_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AlertsError, match="not valid YAML"):
        parse_alerts("churn: [", "x.yaml")
    with pytest.raises(AlertsError, match="expected a mapping"):
        parse_alerts("- 1", "x.yaml")
    with pytest.raises(AlertsError, match="no such thresholds file"):
        load_alerts(tmp_path / "nope.yaml")


def test_policy_thresholds_are_validated_like_the_others() -> None:
    policy = load_alerts().policy
    assert policy.value_shortfall.level(1.2) == "alert"  # upper bound below 0
    assert policy.value_shortfall.level(-0.5) == "ok"  # a positive estimate
    assert policy.min_control >= 2 and policy.min_ess > 0
    text = SHIPPED.replace("  max_weight:", "  max_wieght:", 1)
    with pytest.raises(AlertsError) as err:
        parse_alerts(text, "mine.yaml")
    assert f"line {_line_of(text, 'max_wieght')}: policy.max_wieght: unknown" in str(err.value)
    text = SHIPPED.replace("min_control: 50", "min_control: 1")
    with pytest.raises(AlertsError, match=rf"line {_line_of(text, 'min_control: 1')}: policy"):
        parse_alerts(text, "mine.yaml")


def test_partial_days_is_validated_like_the_rest() -> None:
    text = SHIPPED.replace("partial_days: 28", "partial_days: 0", 1)
    with pytest.raises(AlertsError) as err:
        parse_alerts(text, "mine.yaml")
    assert f"mine.yaml:line {_line_of(text, 'partial_days')}: partial_days" in str(err.value)


def test_region_peer_check_is_shipped_and_validated_like_the_others() -> None:
    peers = load_alerts().threshold("churn", "active_vs_peers")
    # -log10 of a Holm-adjusted p: 0.005 over the regions alerts, 0.03 warns, 0.2 is ok
    assert [peers.level(-np.log10(p)) for p in (0.005, 0.03, 0.2)] == ["alert", "warn", "ok"]
    text = SHIPPED.replace(
        "active_vs_peers: {warn: 1.3, alert: 2.0}", "active_vs_peers: {warn: 3, alert: 2.0}"
    )
    with pytest.raises(AlertsError) as err:
        parse_alerts(text, "mine.yaml")
    line = _line_of(text, "active_vs_peers")
    assert f"line {line}: churn.active_vs_peers" in str(err.value)
    assert "must not exceed alert" in str(err.value)


@pytest.mark.parametrize(
    ("key", "shipped", "bad"),
    [("peer_history", 3, "-1"), ("peer_history", 3, "two"), ("past_windows", 3, "25")],
)
def test_history_lengths_are_shipped_and_validated(key: str, shipped: int, bad: str) -> None:
    """How many earlier runs the region peer checks pool (0 = the peers of one run only)
    and how many earlier windows ``complaints_vs_past`` compares with: whole numbers in
    0..24, a bad one names its line."""
    assert getattr(load_alerts(), key) == shipped
    assert getattr(parse_alerts(SHIPPED.replace(f"{key}: 3", f"{key}: 0", 1)), key) == 0
    text = SHIPPED.replace(f"{key}: 3", f"{key}: {bad}", 1)
    with pytest.raises(AlertsError) as err:
        parse_alerts(text, "mine.yaml")
    assert f"mine.yaml:line {_line_of(text, f'{key}: {bad}')}: {key}" in str(err.value)
    rise = load_alerts().threshold("churn", "complaints_vs_past")
    assert (rise.level(0.1), rise.level(0.3), rise.level(0.6)) == ("ok", "warn", "alert")
