"""Live writes: the outbox (durable, sealed, recovered, ingestible), events and decisions on
the online records, feedback, and the event schemas against the data contract."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from contract_rows import live_interaction, live_order
from pydantic import ValidationError
from sample_data import cutoff, load_tables, random_tables

from features.contract import IDENTIFIER_FIELDS, INTERACTIONS, ORDERS
from features.online.events import (
    OPEN_SUFFIX,
    ConflictError,
    DecisionBuffer,
    Outbox,
    UnknownCustomerError,
    apply_events,
    decision_row,
    log_decisions,
    record_feedback,
    recover_segments,
)
from features.online.record import evaluate, records_from_frames
from features.online.store import OnlineStore, open_store
from features.outbox_ingest import ingest_outbox
from features.warehouse import connect, raw
from serving.schemas import EventsRequest, InteractionEvent, OrderEvent

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
AT = cutoff(700) + timedelta(microseconds=123_457)  # the live orders' time


def lines(folder: Path) -> list[dict[str, Any]]:
    found = sorted(folder.glob("*.jsonl")) + sorted(folder.glob(f"*{OPEN_SUFFIX}"))
    return [json.loads(line) for path in found for line in path.read_text().splitlines()]


@pytest.fixture
def tables() -> dict:
    return random_tables(seed=3, customers=12, events=120)


@pytest.fixture
def store(tables: dict) -> OnlineStore:
    store = open_store("sqlite:///:memory:")
    events = {k: v for k, v in tables.items() if k != "customers"}
    store.put_many(records_from_frames(tables["customers"], events).items())
    return store


# --------------------------------------------------------------------------- outbox
def test_append_is_on_disk_in_an_open_segment(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.append("orders", [live_order("L1", "C0001", AT, 12.5, margin=math.nan)])
    (segment,) = (tmp_path / "orders").glob(f"*{OPEN_SUFFIX}")
    assert f"-{os.getpid()}-" in segment.name
    (row,) = lines(tmp_path / "orders")
    assert row["ordered_at"] == "2024-12-01T00:00:00.123457+00:00"
    assert row["margin"] is None and row["amount"] == 12.5
    assert not list((tmp_path / "orders").glob("*.jsonl"))  # ingest must not see it yet


def test_segments_are_sealed_when_old_large_or_closed(tmp_path: Path) -> None:
    by_age = Outbox(tmp_path / "age", seal_after=0.0)
    by_age.append("orders", [live_order("L1", "C1", AT)])
    assert len(list((tmp_path / "age" / "orders").glob("*.jsonl"))) == 1

    by_size = Outbox(tmp_path / "size", max_bytes=1)
    by_size.append("orders", [live_order("L1", "C1", AT)])
    by_size.append("orders", [live_order("L2", "C1", AT)])
    assert len(list((tmp_path / "size" / "orders").glob("*.jsonl"))) == 2

    kept = Outbox(tmp_path / "kept")
    kept.append("orders", [live_order("L1", "C1", AT)])
    assert kept.seal() == 0
    kept.close()
    folder = tmp_path / "kept" / "orders"
    assert not list(folder.glob(f"*{OPEN_SUFFIX}")) and len(list(folder.glob("*.jsonl"))) == 1
    assert [r["order_id"] for r in lines(folder)] == ["L1"]


def test_sealed_segments_are_ingested_exactly(tmp_path: Path, tables: dict) -> None:
    con = connect(tmp_path / "warehouse.duckdb")
    load_tables(con, {"customers": tables["customers"]})
    outbox = Outbox(tmp_path / "outbox")
    outbox.append(
        "orders", [live_order("L1", "C0001", AT, 0.1 + 0.2), live_order("L2", "C0002", AT)]
    )
    decision = decision_row("d-1", "C0003", cutoff(650), "cross_sell", "email", 0.25)
    outbox.append("campaign_log", [decision])
    outbox.close()
    report = ingest_outbox(con, tmp_path / "outbox", NOW)
    assert report.tables["orders"].inserted == 2 and report.tables["campaign_log"].inserted == 1
    amount, when = raw(con).execute(
        "SELECT amount, epoch_us(ordered_at) FROM orders WHERE order_id = 'L1'"
    ).fetchone() or (None, None)
    assert amount == 0.1 + 0.2  # the exact double, not a rounded text
    assert when == int((AT - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    assert raw(con).execute("SELECT action, propensity, outcome FROM campaign_log").fetchall() == [
        ("cross_sell", 0.25, None)
    ]


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_recovery_seals_segments_of_dead_processes_only(tmp_path: Path) -> None:
    mine = Outbox(tmp_path)
    mine.append("orders", [live_order("L1", "C1", AT)])
    host = next((tmp_path / "orders").glob(f"*{OPEN_SUFFIX}")).name.split("-")[1]
    dead = tmp_path / "orders" / f"20250101T000000000000Z-{host}-{dead_pid()}-1{OPEN_SUFFIX}"
    dead.write_text('{"order_id": "X1"}\n{"order_id": "X2", "amou')  # torn last write
    elsewhere = tmp_path / "orders" / f"20250101T000000000000Z-otherhost-1-1{OPEN_SUFFIX}"
    elsewhere.write_text('{"order_id": "Y1"}\n')

    (sealed,) = recover_segments(tmp_path)
    assert sealed.name.endswith(".jsonl") and not dead.exists()
    assert sealed.read_text() == '{"order_id": "X1"}\n'
    assert elsewhere.exists()
    assert len(list((tmp_path / "orders").glob(f"*-{os.getpid()}-*{OPEN_SUFFIX}"))) == 1


def test_recovery_seals_the_segment_of_a_killed_process_not_yet_reaped(tmp_path: Path) -> None:
    """A SIGKILLed worker is a zombie until its supervisor reaps it; signal 0 still finds
    it, yet it will never write again (issue 22: a killed worker's segment waited)."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        time.sleep(0.05)  # exited, not reaped: no wait() yet
    mine = Outbox(tmp_path)
    mine.append("orders", [live_order("L1", "C1", AT)])
    host = next((tmp_path / "orders").glob(f"*{OPEN_SUFFIX}")).name.split("-")[1]
    path = tmp_path / "orders" / f"20250101T000000000000Z-{host}-{zombie.pid}-1{OPEN_SUFFIX}"
    path.write_text('{"order_id": "Z1"}\n')
    (sealed,) = recover_segments(tmp_path)
    zombie.wait()
    assert sealed.read_text() == '{"order_id": "Z1"}\n'


# --------------------------------------------------------------------------- events
def test_events_reach_outbox_and_record(tmp_path: Path, store: OnlineStore) -> None:
    outbox = Outbox(tmp_path)
    before = evaluate(store.get("C0001") or {}, NOW)
    complaint = live_interaction("LI1", "C0001", cutoff(700), "chat", "complaint")
    complaint |= {"direction": "inbound", "satisfaction": 1, "resolved": False}
    rows = {"orders": [live_order("L1", "C0001", AT, 40.0)], "interactions": [complaint]}
    result = apply_events(store, outbox, rows)
    assert (result.accepted, result.new, result.duplicates) == (2, 2, 0)
    record = store.get("C0001") or {}
    after = evaluate(record, NOW)
    assert after["orders_all"] == before["orders_all"] + 1
    assert after["spend_all"] == pytest.approx(before["spend_all"] + 40.0)
    assert after["complaints_365d"] == before["complaints_365d"] + 1
    assert [r["order_id"] for r in lines(tmp_path / "orders")] == ["L1"]
    again = apply_events(store, outbox, rows)
    assert (again.accepted, again.new, again.duplicates) == (2, 0, 2)
    assert store.get("C0001") == record


def test_unknown_customer_writes_nothing(tmp_path: Path, store: OnlineStore) -> None:
    outbox = Outbox(tmp_path)
    before = store.get("C0001")
    rows = {
        "orders": [
            live_order("L1", "C0001", AT),
            live_order("L2", "C9999", AT),
            live_order("L3", "C8888", AT),
        ]
    }
    with pytest.raises(UnknownCustomerError, match="'C9999', 'C8888'") as info:
        apply_events(store, outbox, rows)
    assert info.value.customer_ids == ["C9999", "C8888"]
    assert store.get("C0001") == before and not (tmp_path / "orders").exists()


def test_conflicting_copy_of_a_known_event_is_refused(tmp_path: Path, store: OnlineStore) -> None:
    outbox = Outbox(tmp_path)
    apply_events(store, outbox, {"orders": [live_order("L1", "C0001", AT, 10.0)]})
    before = store.get("C0001")
    with pytest.raises(
        ConflictError, match="order_id 'L1' is already recorded with different amount"
    ):
        apply_events(store, outbox, {"orders": [live_order("L1", "C0001", AT, 11.0)]})
    assert store.get("C0001") == before
    assert len(lines(tmp_path / "orders")) == 1


def test_decisions_go_to_outbox_and_known_records(tmp_path: Path, store: OnlineStore) -> None:
    outbox = Outbox(tmp_path)
    as_of = cutoff(700)
    before = evaluate(store.get("C0002") or {}, as_of)
    rows = [
        decision_row("d-1", "C0002", as_of - timedelta(days=1), "cross_sell", "email", 0.5),
        decision_row("d-2", "cold-1", as_of - timedelta(days=1), "no_action", "none", 0.9),
    ]
    log_decisions(store, outbox, rows, with_record={"C0002"})
    after = evaluate(store.get("C0002") or {}, as_of)
    assert after["offers_30d"] == before["offers_30d"] + 1
    assert after["contacts_email_30d"] == before["contacts_email_30d"] + 1
    assert after["days_since_action_cross_sell"] == pytest.approx(1.0)
    assert store.get("cold-1") is None
    assert [r["decision_id"] for r in lines(tmp_path / "campaign_log")] == ["d-1", "d-2"]


def test_no_action_decisions_reach_the_outbox_but_not_the_record(
    tmp_path: Path, store: OnlineStore
) -> None:
    outbox = Outbox(tmp_path)
    buffer = DecisionBuffer(store, outbox)
    before = store.get("C0002")
    at = cutoff(700)
    buffer.add(
        [decision_row(f"n-{i}", "C0002", at, "no_action", "none", 0.9) for i in range(5)], {"C0002"}
    )
    assert not buffer.pending("C0002")  # the next score need not wait for them
    assert buffer.flush() == 5
    assert [r["decision_id"] for r in lines(tmp_path / "campaign_log")] == [
        f"n-{i}" for i in range(5)
    ]
    assert store.get("C0002") == before  # the record does not grow at every call


def test_decision_buffer_writes_behind_in_order_and_keeps_failed_groups(
    tmp_path: Path, store: OnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    buffer = DecisionBuffer(store, outbox)
    as_of = cutoff(700)
    row = lambda i, c: decision_row(f"d-{i}", c, as_of, "cross_sell", "email", 0.5)  # noqa: E731
    buffer.add([row(1, "C0002")], {"C0002"})
    buffer.add([row(2, "cold-1")], set())
    # only a decision that changes a record makes that customer's next score wait
    assert buffer.pending("C0002") and not buffer.pending("C0003")
    assert not buffer.pending("cold-1") and buffer.pending()
    assert not (tmp_path / "campaign_log").exists()  # nothing written yet
    broken = True
    real_update = store.update

    def update(*args: Any, **kwargs: Any) -> Any:
        if broken:
            raise ConnectionError("store down")
        return real_update(*args, **kwargs)

    monkeypatch.setattr(store, "update", update)
    with pytest.raises(ConnectionError):
        buffer.flush()
    assert buffer.pending("C0002")  # kept for the next flush
    buffer.add([row(3, "C0002")], {"C0002"})
    broken = False
    assert buffer.flush() == 3 and not buffer.pending()
    assert buffer.flush() == 0
    logged = [r["decision_id"] for r in lines(tmp_path / "campaign_log")]
    assert logged == ["d-1", "d-2", "d-1", "d-2", "d-3"]  # retried group, then the next
    after = evaluate(store.get("C0002") or {}, as_of + timedelta(days=1))
    assert after["offers_30d"] == 2  # the record holds each decision once


def test_feedback_is_one_durable_line(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    record_feedback(outbox, "d-1", True, 19.5, NOW - timedelta(hours=1), NOW)
    assert lines(tmp_path / "feedback") == [
        {
            "decision_id": "d-1",
            "outcome": True,
            "revenue": 19.5,
            "responded_at": "2025-06-01T11:00:00+00:00",
            "recorded_at": "2025-06-01T12:00:00+00:00",
        }
    ]


# --------------------------------------------------------------------------- schemas
@pytest.mark.parametrize(
    ("model", "table"), [(OrderEvent, ORDERS), (InteractionEvent, INTERACTIONS)]
)
def test_event_schemas_mirror_the_contract(model: Any, table: Any) -> None:
    fields = model.model_fields
    assert [n for n in fields if n not in IDENTIFIER_FIELDS] == table.column_names
    # the customer by customer_id or by identifiers in its place (issue 20)
    assert set(IDENTIFIER_FIELDS) <= set(fields)
    required = {n for n, f in fields.items() if f.is_required()}
    assert required == set(table.required) - {"customer_id"}
    for column in table.columns:
        if column.choices:
            assert literal_values(fields[column.name].annotation) == set(column.choices)


def literal_values(annotation: Any) -> set[Any]:
    """Every value of the Literal types inside an annotation (``Literal[...] | None``)."""
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    return {v for arg in get_args(annotation) for v in literal_values(arg)}


def test_event_validation_names_fields_and_hides_values() -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    body = {
        "orders": [{"order_id": "L1", "customer_id": "C1", "ordered_at": future, "amount": "x"}],
        "interactions": [
            {
                "interaction_id": "I1",
                "customer_id": "C1",
                "occurred_at": "1980-01-01",
                "channel": "pigeon",
                "kind": "complaint",
                "satisfaction": 9,
                "email": "alice.martin@nowhere",
            }
        ],
    }
    with pytest.raises(ValidationError) as info:
        EventsRequest.model_validate(body)
    found = {
        (".".join(map(str, e["loc"])), e["msg"].removeprefix("Value error, "))
        for e in info.value.errors()
    }
    locs = {loc for loc, _ in found}
    assert ("orders.0.ordered_at", "is in the future") in found
    assert ("interactions.0.occurred_at", "is before 1990-01-01 (implausible)") in found
    assert {
        "orders.0.amount",
        "interactions.0.channel",
        "interactions.0.satisfaction",
        "interactions.0.email",
    } <= locs
    assert "alice.martin" not in str(info.value) and "pigeon" not in str(info.value)
    assert ("interactions.0.email", "is not an e-mail address") in found


def test_an_event_names_its_customer_by_id_or_by_identifiers_not_both() -> None:
    at = "2024-05-01T10:00:00"
    by_email = OrderEvent.model_validate(
        {"order_id": "L1", "email": "Ann@Example.com", "ordered_at": at, "amount": 1}
    )
    assert by_email.customer_id is None and by_email.identifiers() == {"email": "Ann@Example.com"}
    for who, message in (
        ({}, "send customer_id or an identifier"),
        ({"customer_id": "C1", "phone": "07911 123456"}, "not both"),
    ):
        with pytest.raises(ValidationError, match=message) as info:
            OrderEvent.model_validate({"order_id": "L1", "ordered_at": at, "amount": 1, **who})
        assert "07911" not in str(info.value)


def test_naive_event_times_are_utc_and_empty_requests_refused() -> None:
    event = OrderEvent.model_validate(
        {"order_id": "L1", "customer_id": "C1", "ordered_at": "2024-05-01T10:00:00", "amount": 1}
    )
    assert event.ordered_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    with pytest.raises(ValidationError, match="at least one order or interaction"):
        EventsRequest.model_validate({})
