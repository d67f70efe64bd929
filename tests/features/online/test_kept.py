"""Kept raw aggregates give the evaluator's features, bit for bit, at any later instant."""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sample_data import random_tables

from features.batch import MICROS_PER_DAY, micros
from features.online.kept import KeptAggregates
from features.online.record import (
    append_events,
    empty_record,
    evaluate,
    records_from_frames,
)
from features.online.store import decode_record, encode_record
from features.spec import default_spec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _bits(value: Any) -> Any:
    return struct.pack("<d", value) if isinstance(value, float) else value


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return list(got) == list(want) and all(_bits(got[k]) == _bits(want[k]) for k in want)


def _instant(us: float) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def _instants(record: dict[str, Any], start: datetime, rng: np.random.Generator) -> list[datetime]:
    """Instants from ``start`` on, in order: small and large steps, and for a sample of
    the record's events the instants where one of them enters or leaves a window (one
    microsecond before, at, one after)."""
    spec = default_spec()
    spans = sorted({a.days + a.offset for a in spec.aggs if a.days is not None})
    spans += sorted({a.offset for a in spec.aggs})
    times = [
        t
        for table in ("orders", "interactions", "campaign_log")
        for name, values in (record.get(table) or {}).items()
        if name in ("ordered_at", "occurred_at", "decided_at")
        for t in values
        if t is not None
    ]
    start_us = micros(start)
    instants = {start_us + step for step in (0, 1, 1e6, 3.6e9, MICROS_PER_DAY, 7 * MICROS_PER_DAY)}
    for t in rng.choice(np.array(times, dtype=float), size=min(6, len(times)), replace=False):
        for days in rng.choice(np.array(spans, dtype=float), size=3, replace=False):
            edge = t + days * MICROS_PER_DAY
            instants |= {edge - 1, edge, edge + 1}
    return [_instant(us) for us in sorted(u for u in instants if u >= start_us)]


@pytest.mark.parametrize("seed", [5, 8])
def test_kept_features_equal_the_evaluators_bit_for_bit(seed: int) -> None:
    """Customers with many, few and no events, scored at instants moving forward in small
    steps, large steps and onto the very microseconds where an event enters or leaves a
    window (and then back in time): every feature equals ``evaluate``'s bit for bit; the
    aggregates are kept across most small steps and computed again across the edges."""
    spec = default_spec()
    rng = np.random.default_rng(seed)
    tables = random_tables(seed, customers=25, events=700)
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    records["NONE"] = empty_record({"customer_id": "NONE", "signup_at": None}, spec)
    latest = max(tables["orders"]["ordered_at"].max(), tables["interactions"]["occurred_at"].max())
    start = latest.to_pydatetime() - timedelta(days=120)
    kept = KeptAggregates(spec)
    evaluations = 0
    for customer_id, record in records.items():
        encoded = encode_record(customer_id, record)
        instants = _instants(record, start, rng)
        for as_of in [*instants, instants[len(instants) // 2], start]:  # then back in time
            got = kept.evaluate(customer_id, encoded, as_of)
            assert _same(got, evaluate(decode_record(encoded), as_of, spec)), (customer_id, as_of)
            evaluations += 1
    assert kept.computed > 2 * len(records)  # computed again past the edges
    assert evaluations - kept.computed > evaluations / 4  # kept across the small steps


def test_a_changed_record_is_evaluated_anew() -> None:
    """An event added to a record (as a posted event does) gives other bytes: its features
    are computed from the new record, never the kept aggregates of the old one."""
    spec = default_spec()
    tables = random_tables(3, customers=4, events=120)
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    customer_id, record = next(iter(records.items()))
    as_of = datetime(2030, 1, 1, tzinfo=UTC)
    kept = KeptAggregates(spec)
    before = kept.evaluate(customer_id, encode_record(customer_id, record), as_of)
    order = {
        "order_id": "O-new",
        "customer_id": customer_id,
        "ordered_at": micros(as_of - timedelta(hours=1)),
        "amount": 99.5,
        "margin": 20.0,
        "category": "new",
        "channel": "web",
    }
    append_events(record, "orders", [order])
    encoded = encode_record(customer_id, record)
    computed = kept.computed
    after = kept.evaluate(customer_id, encoded, as_of + timedelta(seconds=1))
    assert kept.computed == computed + 1
    assert _same(after, evaluate(record, as_of + timedelta(seconds=1), spec))
    assert not _same(after, before)
    assert not math.isnan(after["orders_30d"]) and after["orders_30d"] > before["orders_30d"]


def test_kept_records_are_bounded() -> None:
    spec = default_spec()
    tables = random_tables(4, customers=12, events=100)
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    kept = KeptAggregates(spec, size=5)
    as_of = datetime(2030, 1, 1, tzinfo=UTC)
    for customer_id, record in records.items():
        kept.evaluate(customer_id, encode_record(customer_id, record), as_of)
    assert len(kept._kept) == 5
    assert list(kept._kept) == list(records)[-5:]  # the least recently used went first
    kept.drop(list(records)[-1])  # erased: the service drops the entry when no record is found
    assert list(records)[-1] not in kept._kept and len(kept._kept) == 4
    for entry in kept._kept.values():  # the aggregates and a digest, never the record
        held = [getattr(entry, f.name) for f in fields(entry) if f.name != "digest"]
        assert not any(isinstance(v, bytes) for v in held) and len(entry.digest) == 16
