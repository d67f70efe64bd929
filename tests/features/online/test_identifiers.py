"""The online identifier index (issue 20, item 3): identifiers -> customers by keyed hash,
loaded from the warehouse and its clusters, events routed by e-mail or phone, provisional
customers for unknown identifiers that ingest loads and ``rapport resolve`` merges."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from contract_rows import live_order

from features.identity import hash_identifier, identity_key, provisional_id
from features.ingest import discover_files, ingest
from features.online.events import Outbox, apply_events
from features.online.identifiers import (
    AmbiguousIdentifierError,
    IdentityIndex,
    UnusableIdentifierError,
    load_index,
    lookup,
    route_events,
    undo,
)
from features.online.store import OnlineStore, open_store
from features.outbox_ingest import ingest_outbox
from features.resolve import resolve
from features.warehouse import connect, raw

END = datetime(2025, 1, 1, tzinfo=UTC)
ANN, BOB = " Ann.Lee@Example.com ", "bob.stone@example.com"
ANN_PHONE, BOB_PHONE = "07911 123456", "+44 7911 123457"

CUSTOMERS = f"""customer_id,signup_at,email,phone,loyalty_card,cookie_id
C1,2024-01-01T00:00:00Z,{ANN},{ANN_PHONE},,k1
C2,2024-02-01T00:00:00Z,ann.lee@example.com,,,k1
C3,2024-03-01T00:00:00Z,{BOB},{BOB_PHONE},,
C4,2024-04-01T00:00:00Z,,,L-4,k2
C5,2024-05-01T00:00:00Z,not an address,,,
"""
ORDERS = """order_id,customer_id,ordered_at,amount
O1,C1,2024-06-01T00:00:00Z,10.0
O3,C3,2024-06-02T00:00:00Z,20.0
"""


@pytest.fixture
def warehouse(tmp_path: Path) -> Any:
    files = tmp_path / "files"
    files.mkdir()
    (files / "customers.csv").write_text(CUSTOMERS)
    (files / "orders.csv").write_text(ORDERS)
    con = connect(tmp_path / "warehouse.duckdb")
    ingest(con, discover_files(files), now=END)
    yield con
    con.disconnect()


@pytest.fixture
def index(tmp_path: Path) -> IdentityIndex:
    return IdentityIndex(identity_key(tmp_path / "identity.key"), "GB")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    yield store
    store.close()


def test_the_key_is_made_once_private_and_hashes_depend_on_kind_and_key(tmp_path: Path) -> None:
    path = tmp_path / "home" / "identity.key"
    key = identity_key(path)
    assert len(key) == 32 and identity_key(path) == key
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    assert hash_identifier(key, "email", "a@b.io") != hash_identifier(key, "cookie_id", "a@b.io")
    assert hash_identifier(key, "email", "a@b.io") != hash_identifier(b"x" * 32, "email", "a@b.io")
    assert provisional_id("ab" * 32).startswith("anon-") and len(provisional_id("ab" * 32)) == 29


def test_the_index_names_customers_by_keyed_hash_only(
    warehouse: Any, index: IdentityIndex, store: OnlineStore, tmp_path: Path
) -> None:
    written = load_index(warehouse, store, index, END)
    assert written == 7  # ann's e-mail (C1, C2), two phones, bob's e-mail, a card, two cookies
    assert lookup(store, index, {"email": "ANN.LEE@example.com"}) == "C1"  # shared: smallest
    assert lookup(store, index, {"phone": "+447911123456"}) == "C1"
    assert lookup(store, index, {"email": BOB, "phone": "07911123457"}) == "C3"
    assert lookup(store, index, {"loyalty_card": " L-4 "}) == "C4"
    assert lookup(store, index, {"cookie_id": "k2"}) == "C4"
    assert lookup(store, index, {"email": "nobody@example.com"}) is None
    with pytest.raises(AmbiguousIdentifierError, match=r"cookie_id.*more than one customer"):
        lookup(store, index, {"cookie_id": "k1"})  # a shared device names nobody
    with pytest.raises(AmbiguousIdentifierError, match="email, phone"):
        lookup(store, index, {"email": ANN, "phone": BOB_PHONE})
    with pytest.raises(UnusableIdentifierError, match="phone") as info:
        lookup(store, index, {"phone": "12"})
    assert "12" not in str(info.value).replace("phone", "")
    # another workspace's key reads nothing; the file holds no identifier
    other = IdentityIndex(b"k" * 32, "GB")
    assert lookup(store, other, {"email": BOB}) is None
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("online.sqlite*"))
    for value in ("ann.lee", "bob.stone", "7911123456", "7911 123457", "L-4"):
        assert value.encode() not in data


def test_resolved_clusters_name_their_customer(
    warehouse: Any, index: IdentityIndex, store: OnlineStore
) -> None:
    db = raw(warehouse)
    db.execute(
        "CREATE TABLE identity_clusters AS SELECT * FROM (VALUES "
        "('C1', 'C1', now()), ('C3', 'C1', now()), ('C4', 'C0', now())) "
        "t(customer_id, cluster_id, resolved_at)"
    )
    load_index(warehouse, store, index, END)
    assert lookup(store, index, {"email": BOB}) == "C1"  # merged into C1's cluster
    assert lookup(store, index, {"loyalty_card": "L-4"}) == "C4"  # C0 is nobody (forgotten)
    # before C3 signed up, its identifiers name nobody
    fresh = open_store("sqlite:///:memory:")
    load_index(warehouse, fresh, index, datetime(2024, 2, 15, tzinfo=UTC))
    assert lookup(fresh, index, {"email": BOB}) is None
    assert lookup(fresh, index, {"email": ANN}) == "C1"
    fresh.close()


def _lines(folder: Path) -> list[dict[str, Any]]:
    paths = sorted(folder.glob("*.jsonl*"))
    return [json.loads(line) for p in paths for line in p.read_text().splitlines()]


def test_events_by_identifier_reach_the_customer_or_a_provisional_one(
    warehouse: Any, index: IdentityIndex, store: OnlineStore, tmp_path: Path
) -> None:
    # the store as the service finds it: records and index (segments are needed to load)
    from features.batch import build
    from features.online.materialize import materialize
    from features.spec import default_spec
    from features.tables.segments import snapshot_segments

    snapshot_segments(raw(warehouse), build(warehouse, END), END, default_spec().version, END)
    materialize(warehouse, store, END, identity=index)
    outbox = Outbox(tmp_path / "outbox")
    at = END - timedelta(days=2)
    new_email = "Chat.Person@Example.org"
    rows = {
        "orders": [
            live_order("L1", None, at, email="ann.lee@EXAMPLE.com"),
            live_order("L2", None, at, phone=BOB_PHONE),
            live_order("L3", None, at, email=new_email, cookie_id="k9"),
            live_order("L4", None, at - timedelta(days=1), email=new_email),
            live_order("L5", "C4", at),
        ]
    }
    routed = route_events(store, index, rows, now=END)
    pid = provisional_id(hash_identifier(index.key, "email", "chat.person@example.org"))
    assert [(r.id, r.customer_id, r.matched_by, r.provisional) for r in routed.routes] == [
        ("L1", "C1", "email", False),
        ("L2", "C3", "phone", False),
        ("L3", pid, "provisional", True),
        ("L4", pid, "email", True),
        ("L5", "C4", "customer_id", False),
    ]
    assert routed.created == [pid]
    assert all(set(r) & {"email", "phone", "cookie_id"} == set() for r in routed.rows["orders"])
    (customer,) = routed.customers  # once, with the identifiers as sent, from its first event
    assert customer == {
        "customer_id": pid,
        "signup_at": at - timedelta(days=1),
        "email": new_email,
        "cookie_id": "k9",
    }
    result = apply_events(store, outbox, routed.rows, customers=routed.customers)
    assert result.new == 5 and store.get(pid)["orders"]["order_id"] == ["L3", "L4"]
    assert lookup(store, index, {"cookie_id": "k9"}) == pid
    # the same identifier later: the same customer, no second customers row
    again = route_events(
        store, index, {"orders": [live_order("L6", None, at, email=new_email)]}, now=END
    )
    assert again.routes[0].customer_id == pid and not again.customers and not again.created

    # identifiers naming two customers: refused before anything is created
    count = store.count()
    both = {
        "orders": [
            live_order("L7", None, at, email="x.new@example.org"),
            live_order("L8", None, at, email=ANN, phone=BOB_PHONE),
        ]
    }
    with pytest.raises(AmbiguousIdentifierError):
        route_events(store, index, both, now=END)
    assert store.count() == count
    # a refused write takes the provisional customer back
    lone = route_events(
        store, index, {"orders": [live_order("L9", None, at, email="y.new@example.org")]}
    )
    undo(store, lone)
    assert store.get(lone.created[0]) is None
    assert lookup(store, index, {"email": "y.new@example.org"}) is None

    # ingest loads the provisional customer with its identifiers; a customers export later
    # brings a registered customer with that e-mail; resolve merges them, and after the
    # next load the e-mail names the merged cluster
    outbox.close()
    report = ingest_outbox(warehouse, tmp_path / "outbox", END)
    assert report.tables["customers"].inserted == 1 and report.tables["orders"].inserted == 5
    late = tmp_path / "late"
    late.mkdir()
    (late / "customers.csv").write_text(
        f"customer_id,signup_at,email\nC9,2024-12-30T00:00:00Z,{new_email.lower()}\n"
    )
    ingest(warehouse, discover_files(late), now=END)
    resolve(warehouse, END)
    clusters = _clusters(warehouse)
    assert clusters[pid] == clusters["C9"] == "C9"
    load_index(warehouse, store, index, END)
    assert lookup(store, index, {"email": new_email}) == "C9"
    assert lookup(store, index, {"cookie_id": "k9"}) == "C9"


def test_undo_keeps_a_provisional_customer_another_request_wrote_to(
    index: IdentityIndex, store: OnlineStore, tmp_path: Path
) -> None:
    at = END - timedelta(days=2)
    first = route_events(
        store, index, {"orders": [live_order("L10", None, at, email="z.new@example.org")]}
    )
    reused = route_events(
        store, index, {"orders": [live_order("L11", None, at, email="z.new@example.org")]}
    )
    assert first.created and not reused.created  # the second request found it
    apply_events(store, Outbox(tmp_path / "outbox"), reused.rows, customers=reused.customers)
    undo(store, first)  # the first request's write was refused after the second's was acked
    assert lookup(store, index, {"email": "z.new@example.org"}) == first.created[0]
    assert store.get(first.created[0]) is not None
    assert "secret" not in repr(IdentityIndex(b"secret", "GB"))  # the key never printed


def test_identifiers_made_ambiguous_within_a_request_leave_nothing_behind(
    warehouse: Any, index: IdentityIndex, store: OnlineStore
) -> None:
    load_index(warehouse, store, index, END)
    at = END - timedelta(days=1)
    # the first event makes a provisional customer of the new e-mail; the second names it
    # with bob's phone too: two customers, refused, and the first one's creation undone
    rows = {
        "orders": [
            live_order("M1", None, at, email="new.one@example.org"),
            live_order("M2", None, at, email="new.one@example.org", phone=BOB_PHONE),
        ]
    }
    with pytest.raises(AmbiguousIdentifierError, match="email, phone"):
        route_events(store, index, rows, now=END)
    pid = provisional_id(hash_identifier(index.key, "email", "new.one@example.org"))
    assert store.get(pid) is None
    assert lookup(store, index, {"email": "new.one@example.org"}) is None


def _resolved(tmp_path: Path, customers_csv: str) -> tuple[Any, Path, dict[str, str]]:
    """A warehouse holding ``customers_csv`` (files under ``tmp_path/files``), resolved at
    END: the connection, the files' folder and each customer's cluster."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "customers.csv").write_text(customers_csv)
    con = connect(tmp_path / "warehouse.duckdb")
    ingest(con, discover_files(files), now=END)
    resolve(con, END)
    return con, files, _clusters(con)


def _clusters(con: Any) -> dict[str, str]:
    return dict(
        raw(con).execute("SELECT customer_id, cluster_id FROM identity_clusters").fetchall()
    )


def test_a_household_phone_names_nobody_live(tmp_path: Path, index: IdentityIndex) -> None:
    """Two persons sharing a landline (issue 20, item 4): resolution keeps them apart, and
    /score or /events by that phone is refused as ambiguous instead of picking one."""
    con, _, clusters = _resolved(
        tmp_path,
        "customer_id,signup_at,email,phone\n"
        "H1,2024-01-01T00:00:00Z,jo.hill@example.com,020 7946 0123\n"
        "H2,2024-01-02T00:00:00Z,sam.hill@example.com,+44 20 7946 0123\n"
        "H3,2024-01-03T00:00:00Z,kim.reed@example.com,07911 123458\n"
        "H4,2024-01-04T00:00:00Z,kim.reed@example.com,07911 123458\n",
    )
    assert clusters == {"H1": "H1", "H2": "H2", "H3": "H3", "H4": "H3"}
    store = open_store("sqlite:///:memory:")
    load_index(con, store, index, END)
    with pytest.raises(
        AmbiguousIdentifierError,
        match=r"^ambiguous identifiers: the identifiers \(phone\) name more than one customer",
    ):
        lookup(store, index, {"phone": "02079460123"})
    assert lookup(store, index, {"phone": "07911123458"}) == "H3"  # one person's mobile
    assert lookup(store, index, {"email": "sam.hill@example.com", "phone": "02079460123"}) == "H2"
    count = store.count()
    with pytest.raises(AmbiguousIdentifierError):
        route_events(
            store, index, {"orders": [live_order("S1", None, END, phone="020 7946 0123")]}, now=END
        )
    assert store.count() == count  # no provisional customer either
    store.close()
    con.disconnect()


def test_a_name_with_postcode_names_its_person_unless_several_share_it(
    tmp_path: Path, index: IdentityIndex
) -> None:
    """Issue 20, item 1: a name with postcode in any spelling names its person live and in
    event files; one several persons hold (a father and son) names nobody; a name
    without its postcode is unusable, and the name is never quoted or stored."""
    con, files, clusters = _resolved(
        tmp_path,
        "customer_id,signup_at,email,phone,name,postcode\n"
        "N1,2024-01-01T00:00:00Z,jo.lee@example.com,020 7946 0123,Jo Lée,SW1A 1AA\n"
        "N2,2024-01-02T00:00:00Z,jl99@example.org,020 7946 0123,MS JO LEE,sw1a1aa\n"
        "F1,2024-01-03T00:00:00Z,,07911 123458,Sam Hill,N1 9GU\n"
        "F2,2024-01-04T00:00:00Z,,07911 123459,Sam Hill,N1 9GU\n",
    )
    assert clusters == {"N1": "N1", "N2": "N1", "F1": "F1", "F2": "F2"}
    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    load_index(con, store, index, END)
    assert lookup(store, index, {"name": " jo  LEE ", "postcode": "SW1A1AA"}) == "N1"
    with pytest.raises(AmbiguousIdentifierError, match=r"\(name_postcode\)"):
        lookup(store, index, {"name": "Sam Hill", "postcode": "n19gu"})
    # the mobile decides between the two of one name
    assert (
        lookup(store, index, {"name": "Sam Hill", "postcode": "N1 9GU", "phone": "07911123459"})
        == "F2"
    )
    with pytest.raises(UnusableIdentifierError, match="name with postcode") as info:
        lookup(store, index, {"name": "Jo Lee"})
    assert "jo" not in str(info.value).lower().replace("postcode", "")
    routed = route_events(
        store,
        index,
        {"orders": [live_order("NP1", None, END, name="Jo Lee", postcode="SW1A 1AA")]},
        now=END,
    )
    assert (routed.routes[0].customer_id, routed.routes[0].matched_by) == ("N1", "name_postcode")
    assert "name" not in routed.rows["orders"][0] and "postcode" not in routed.rows["orders"][0]
    store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob("online.sqlite*"))
    assert b"jo lee" not in data.lower() and b"sam hill" not in data.lower()
    # an order file naming its customer by name and postcode
    (files / "orders.csv").write_text(
        "order_id,customer_id,ordered_at,amount,name,postcode\n"
        "NO1,,2024-06-01T00:00:00Z,10.0,JO LEE,SW1A 1AA\n"
        "NO2,,2024-06-01T00:00:00Z,11.0,Sam Hill,N1 9GU\n"
    )
    report = ingest(con, discover_files(files), now=END + timedelta(days=1))
    landed = dict(raw(con).execute("SELECT order_id, customer_id FROM orders").fetchall())
    assert landed == {"NO1": "N1"}
    reasons = raw(con).execute("SELECT reason FROM quarantine").fetchall()
    assert any("name_postcode" in str(r[0]) for r in reasons)
    assert all("sam" not in str(r[0]).lower() for r in reasons)
    assert report is not None
    con.disconnect()
