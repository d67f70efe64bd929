"""The online record may leave out exactly the events no feature counts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sample_data import random_tables

from features.batch import micros
from features.contract import TABLES
from features.online.record import append_events, counted, empty_record, evaluate, record_columns
from features.spec import default_spec


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _changes_a_feature(source: str, row: dict[str, Any]) -> bool:
    """Does this one event, added to a customer with no events, change any feature an
    hour after it happened (inside every window)?"""
    spec = default_spec()
    table = TABLES[source]
    happened = row[table.time_column]
    signup = datetime(2020, 1, 1, tzinfo=UTC)
    record = empty_record({"customer_id": "C1", "signup_at": micros(signup)}, spec)
    as_of = happened + timedelta(hours=1)
    before = evaluate(record, as_of, spec)
    event = {c: row.get(c) for c in record_columns(spec)[source]}
    event[table.time_column] = micros(happened)
    append_events(record, source, [event])
    after = evaluate(record, as_of, spec)
    return any(not _same(before[k], after[k]) for k in before)


@pytest.mark.parametrize("source", ["orders", "interactions", "campaign_log"])
def test_an_event_no_feature_counts_changes_no_feature(source: str) -> None:
    frame = random_tables(3, events=200)[source]
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    left_out = 0
    for row in rows:
        row[TABLES[source].time_column] = row[TABLES[source].time_column].to_pydatetime()
        if not counted(source, row):
            left_out += 1
            assert not _changes_a_feature(source, row), row
    if source == "campaign_log":  # the random log has no_action rows on channel "none"
        assert left_out > 0


def test_no_action_decisions_count_toward_no_feature_and_offers_do() -> None:
    at = datetime(2024, 6, 1, tzinfo=UTC)

    def decision(action: str, channel: str) -> dict[str, Any]:
        return {"decision_id": "d", "decided_at": at, "action": action, "channel": channel}

    assert not counted("campaign_log", decision("no_action", "none"))
    for action, channel in [("cross_sell", "email"), ("service_callback", "call")]:
        assert counted("campaign_log", decision(action, channel))
        assert _changes_a_feature("campaign_log", decision(action, channel))
