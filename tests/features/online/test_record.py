"""The online record may leave out exactly the events no feature counts."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sample_data import random_tables

from features.batch import MICROS_PER_DAY, finish, micros
from features.contract import TABLES
from features.online.record import (
    _plan,
    append_events,
    counted,
    empty_record,
    evaluate,
    raw_aggregates,
    record_columns,
    records_from_frames,
)
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


@pytest.mark.parametrize("source", ["orders", "interactions", "campaign_log"])
def test_counted_answers_kept_per_condition_values_are_the_judged_ones(source: str) -> None:
    """:func:`counted` keeps its answer per values of the columns its conditions read: a
    second pass over the events (every answer read back) gives the first pass's answers,
    each judged with nothing kept."""
    plans = _plan(default_spec()).by_table
    frame = random_tables(4, events=300)[source]
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    judged = []
    for row in rows:
        plans[source].counted.clear()
        judged.append(counted(source, row))
    assert [counted(source, row) for row in rows] == judged  # kept from the 2nd row on
    assert [counted(source, row) for row in rows] == judged
    assert 0 < len(plans[source].counted) <= len(rows)


def test_no_action_decisions_count_toward_no_feature_and_offers_do() -> None:
    at = datetime(2024, 6, 1, tzinfo=UTC)

    def decision(action: str, channel: str) -> dict[str, Any]:
        return {"decision_id": "d", "decided_at": at, "action": action, "channel": channel}

    assert not counted("campaign_log", decision("no_action", "none"))
    for action, channel in [("cross_sell", "email"), ("service_callback", "call")]:
        assert counted("campaign_log", decision(action, channel))
        assert _changes_a_feature("campaign_log", decision(action, channel))


def _reference_aggregate(agg: Any, columns: dict[str, list[Any]], as_of_us: float) -> float:
    """One aggregation over one customer's events, the plain way: one mask per aggregation
    (what the evaluator's matrices must give row by row; sums over the whole events axis,
    masked events counting 0, as the evaluator's pairwise sums do)."""
    table = TABLES[agg.source]
    times = np.array(columns[table.time_column], dtype=np.float64)
    if not times.size:
        return 0.0 if agg.agg in ("count", "sum", "nunique") else math.nan
    lower = as_of_us - (math.inf if agg.days is None else agg.days + agg.offset) * MICROS_PER_DAY
    mask = (times >= lower) & (times < as_of_us - agg.offset * MICROS_PER_DAY)
    for cond in agg.where:
        text = table.column(cond.column).type not in ("float", "int", "bool", "timestamp")
        column = np.array(columns[cond.column], dtype=object if text else np.float64)
        value = float(cond.value) if isinstance(cond.value, bool) else cond.value
        if cond.op == "==":
            hit = column == value
        elif cond.op == "!=":
            hit = (column != value) & np.array([v is not None and v == v for v in column])
        elif cond.op == "<":
            hit = column < value
        elif cond.op == ">":
            hit = column > value
        else:
            hit = np.isin(column, list(value))
        mask &= hit.astype(bool)
    if agg.agg == "count":
        return float(mask.sum())
    if agg.agg in ("days_since_last", "days_since_first"):
        if not mask.any():
            return math.nan
        return float(times[mask].max() if agg.agg == "days_since_last" else times[mask].min())
    text = table.column(agg.column).type not in ("float", "int", "bool", "timestamp")
    if text:
        return float(
            len({v for v, m in zip(columns[agg.column], mask, strict=True) if m and v is not None})
        )
    values = np.array(columns[agg.column], dtype=np.float64)
    valid = mask & ~np.isnan(values)
    if agg.agg == "sum":
        return float(np.where(valid, values, 0.0).sum())
    if not valid.any():
        return 0.0 if agg.agg == "nunique" else math.nan
    if agg.agg == "mean":
        return float(np.where(valid, values, 0.0).sum() / valid.sum())
    if agg.agg == "max":
        return float(values[valid].max())
    if agg.agg == "min":
        return float(values[valid].min())
    if agg.agg == "last":
        return float(values[np.argmax(np.where(valid, times, -np.inf))])
    return float(np.unique(values[valid]).size)


def _bits(value: Any) -> Any:
    return struct.pack("<d", value) if isinstance(value, float) else value


@pytest.mark.parametrize("seed", [5, 6])
def test_evaluate_equals_its_reference_bit_for_bit(seed: int) -> None:
    """The evaluator's matrices give each aggregation's plain value, and its plain-float
    finish gives :func:`features.batch.finish`'s numbers -- bit for bit (signed zeros and
    NaN included), for customers with many, few and no events."""
    spec = default_spec()
    tables = random_tables(seed, customers=30, events=900)
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    records["NONE"] = empty_record({"customer_id": "NONE", "signup_at": None}, spec)
    latest = max(tables["orders"]["ordered_at"].max(), tables["interactions"]["occurred_at"].max())
    for days in (0, 20, 200):
        as_of = latest.to_pydatetime() - timedelta(days=days) + timedelta(seconds=1)
        as_of_us = micros(as_of)
        for record in records.values():
            got = evaluate(record, as_of, spec)
            finished = finish(raw_aggregates(record, as_of, spec), as_of, spec)
            assert list(got) == ["customer_id", *spec.names]
            for name in spec.names:
                want = finished[name][0]
                want = want.item() if isinstance(want, np.generic) else want
                assert _bits(got[name]) == _bits(want), (name, got[name], want)
            raw = raw_aggregates(record, as_of, spec)
            for agg in spec.aggs:
                columns = record.get(agg.source) or {}
                want = _reference_aggregate(agg, columns, as_of_us)
                assert _bits(float(raw[agg.name][0])) == _bits(want), (
                    agg.name,
                    raw[agg.name],
                    want,
                )
