"""Kept raw aggregates give the evaluator's features, bit for bit, at any later instant."""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sample_data import random_tables

from features.batch import MICROS_PER_DAY, micros
from features.online.events import Outbox, apply_events, decision_row, log_decisions
from features.online.kept import KeptAggregates, stamp
from features.online.record import (
    Record,
    _plan,
    append_events,
    empty_record,
    evaluate,
    records_from_frames,
)
from features.online.store import STAMP, decode_record, encode_record, open_store, stamp_of
from features.spec import FeatureSpec, default_spec

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


def _records(seed: int, customers: int, events: int) -> tuple[dict[str, Record], datetime]:
    """Records of random customers (:func:`random_tables`) and the latest event's instant."""
    tables = random_tables(seed, customers=customers, events=events)
    latest = max(tables["orders"]["ordered_at"].max(), tables["interactions"]["occurred_at"].max())
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    return records, latest.to_pydatetime()


def _customers(seed: int, spec: FeatureSpec) -> tuple[dict[str, Record], datetime]:
    """Records of 25 random customers with many, few and no events, and one with none at
    all, and an instant 120 days before the latest event."""
    records, latest = _records(seed, 25, 700)
    records["NONE"] = empty_record({"customer_id": "NONE", "signup_at": None}, spec)
    return records, latest - timedelta(days=120)


@pytest.mark.parametrize("seed", [5, 8])
def test_kept_features_equal_the_evaluators_bit_for_bit(seed: int) -> None:
    """Customers with many, few and no events, scored at instants moving forward in small
    steps, large steps and onto the very microseconds where an event enters or leaves a
    window (and then back in time): every feature equals ``evaluate``'s bit for bit; the
    aggregates are kept across most small steps and computed again across the edges."""
    spec = default_spec()
    rng = np.random.default_rng(seed)
    records, start = _customers(seed, spec)
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
    customer_id, record = next(iter(_records(3, 4, 120)[0].items()))
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


@pytest.mark.parametrize("seed", [5, 8])
def test_a_stamped_record_is_read_not_aggregated(seed: int) -> None:
    """A record stamped by its writer (:func:`stamp`) gives a worker that never saw the
    customer the evaluator's features bit for bit without aggregating its events, at the
    stamp's instant and after while no event crossed a window's edge; past an edge, or
    before the stamp, they are computed -- and equal -- as without a stamp."""
    spec = default_spec()
    rng = np.random.default_rng(seed)
    records, start = _customers(seed, spec)
    read = computed = 0
    for customer_id, record in records.items():
        plain = encode_record(customer_id, record)
        encoded = encode_record(customer_id, stamp(record, start, spec))
        assert decode_record(encoded) == decode_record(plain)  # the stamp is not the record
        instants = _instants(record, start, rng)
        for as_of in [*instants, start - timedelta(microseconds=1)]:
            fresh = KeptAggregates(spec)  # a worker that never scored the customer
            got = fresh.evaluate(customer_id, encoded, as_of)
            assert _same(got, evaluate(decode_record(encoded), as_of, spec)), (customer_id, as_of)
            assert fresh.computed + fresh.read_stamps == 1
            if as_of == start:
                assert fresh.read_stamps == 1, customer_id  # at its own instant it holds
            read += fresh.read_stamps
            computed += fresh.computed
    assert computed > len(records)  # past the edges and before the stamp
    assert read > 2 * len(records)  # at the stamp's instant and the small steps after


@pytest.mark.parametrize("seed", [3, 9])
def test_a_writer_restamps_only_the_tables_it_changed(seed: int) -> None:
    """A writer appending events to one table reuses the other tables' aggregates from the
    stamp the record had (:func:`stamp`'s ``previous``) while they hold: the new stamp is
    the one computed from every event, byte for byte, at instants after the old stamp,
    with the other tables' events crossing window edges or not, and before it."""
    spec = default_spec()
    rng = np.random.default_rng(seed)
    records, start = _customers(seed, spec)
    reused = recomputed = 0
    plan_tables = [name for name, _, _ in _plan(spec).tables]
    for customer_id, record in records.items():
        old = decode_record(encode_record(customer_id, stamp(record, start, spec)), True)
        for as_of in [*_instants(record, start, rng)[:12], start - timedelta(days=1)]:
            decision = decision_row("d-x", customer_id, as_of, "cross_sell", "email", 0.5)
            decision = {**decision, "decided_at": micros(as_of) - 1}
            del decision["customer_id"]
            for table, row in (
                ("campaign_log", decision),
                ("orders", {"order_id": "O-x", "ordered_at": micros(as_of) - 1, "amount": 7.5}),
            ):
                changed = decode_record(encode_record(customer_id, old), True)
                previous = changed.pop(STAMP)
                append_events(changed, table, [row])
                full = decode_record(encode_record(customer_id, changed))
                counts = _aggregations(spec)
                want = encode_record(customer_id, stamp(full, as_of, spec))
                computed = _aggregations(spec) - counts
                got = encode_record(customer_id, stamp(changed, as_of, spec, previous, [table]))
                assert got == want, (customer_id, as_of, table)
                again = _aggregations(spec) - counts - computed
                assert computed == len(plan_tables)
                reused += computed - again
                recomputed += again - 1
    assert reused > 20 * len(records)  # the other tables taken from the stamp
    assert recomputed > len(records)  # past an edge, or before the old stamp: aggregated


_AGGREGATED = {"count": 0}


def _aggregations(spec: FeatureSpec) -> int:
    """How many table aggregations ran so far (counted by a wrapper the first call puts
    on the plan's tables)."""
    for _, table_plan, _ in _plan(spec).tables:
        if not getattr(table_plan.aggregate, "counted", False):
            inner = table_plan.aggregate

            def counted(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
                _AGGREGATED["count"] += 1
                return _inner(*args, **kwargs)

            counted.counted = True  # type: ignore[attr-defined]
            table_plan.aggregate = counted  # type: ignore[method-assign]
    return _AGGREGATED["count"]


def test_a_stamp_of_other_events_or_another_spec_is_not_read() -> None:
    """A stamp is read only with the bytes it was made from and the spec it was made with:
    events added after it (a writer that did not stamp again) or another feature set give
    the features computed from the record."""
    spec = default_spec()
    customer_id, record = next(iter(_records(3, 4, 120)[0].items()))
    as_of = datetime(2030, 1, 1, tzinfo=UTC)
    stamp(record, as_of, spec)
    assert stamp_of(encode_record(customer_id, record)) is not None
    order = {"order_id": "O-late", "ordered_at": micros(as_of) - 1, "amount": 5.0}
    append_events(record, "orders", [order])  # the stamp stays, made from the record before
    encoded = encode_record(customer_id, record)
    assert stamp_of(encoded) is None
    kept = KeptAggregates(spec)
    got = kept.evaluate(customer_id, encoded, as_of)
    assert kept.computed == 1 and _same(got, evaluate(decode_record(encoded), as_of, spec))
    stamp(record, as_of, spec)["spec"] = "fs-another"
    kept = KeptAggregates(spec)
    kept.evaluate(customer_id, encode_record(customer_id, record), as_of)
    assert kept.computed == 1
    # a value spelling the stamp's key is a JSON string (its quotes escaped): never a stamp
    record = decode_record(encode_record(customer_id, record))
    record["customer"]["region"] = ',"~stamp":{"digest":"x"}}'
    assert stamp_of(encode_record(customer_id, record)) is None
    assert stamp_of(encode_record(customer_id, stamp(record, as_of, spec))) is not None


def test_writers_stamp_the_records_they_write(tmp_path: Path) -> None:
    """A posted event and a logged decision that counts leave the record stamped as of the
    write (so the next score reads its aggregates); an update leaving the record as it was
    keeps its stamp, one changing it without stamping it again leaves none that is read."""
    tables = random_tables(3, customers=4, events=120)
    records = records_from_frames(
        tables["customers"], {k: v for k, v in tables.items() if k != "customers"}
    )
    store = open_store("sqlite:///:memory:")
    store.put_many(records.items())
    first, second = list(records)[:2]
    assert stamp_of(store.get_encoded(first) or b"") is None  # loaded unstamped
    before = datetime.now(UTC)
    order = {"order_id": "O-live", "customer_id": first, "ordered_at": before, "amount": 5.0}
    apply_events(store, Outbox(tmp_path), {"orders": [order]})
    decision = decision_row("d-1", second, before, "cross_sell", "email", 0.5)
    log_decisions(store, Outbox(tmp_path), [decision], with_record={second})
    for customer_id in (first, second):
        encoded = store.get_encoded(customer_id) or b""
        found = stamp_of(encoded)
        assert found is not None and found["as_of"] >= micros(before)
        kept = KeptAggregates()
        got = kept.evaluate(customer_id, encoded, datetime.now(UTC) + timedelta(seconds=1))
        assert kept.computed == 0 and got["orders_all" if customer_id == first else "offers_30d"]
    store.update(first, lambda record: record)  # unchanged: the stamp still holds
    assert stamp_of(store.get_encoded(first) or b"") is not None

    def unstamped(record: Record) -> Record:
        record["customer"]["region"] = "elsewhere"  # changed, not stamped again
        return record

    store.update(first, unstamped)
    assert stamp_of(store.get_encoded(first) or b"") is None  # made from other bytes
    assert STAMP not in (store.get(second) or {})
