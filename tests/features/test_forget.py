"""``rapport forget``: a customer erased from every copy the workspace keeps (warehouse
tables, their decisions' outcomes, quarantine, online store, outbox, list downloads),
nobody else touched, the erasure recorded by hash and applied again when an ingest brings
the customer back; the id never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from sample_data import trained_home

from features.contract import IDENTIFIER_FIELDS
from features.forget import customer_hash
from features.identity import identifier_values, normalise_one
from features.online.events import OPEN_SUFFIX
from features.online.identifiers import IdentityIndex
from features.online.store import open_store
from features.warehouse import connect, raw
from rapport.cli import EXIT_RETRY_FORGET, main
from rapport.settings import get_settings

home, shared_home = trained_home("forget-home", customers=400, seed=21)


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _tables() -> dict[str, pd.DataFrame]:
    con = connect(get_settings().warehouse_path, read_only=True)
    try:
        db = raw(con)
        names = [r[0] for r in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return {n: db.execute(f'SELECT * FROM "{n}"').to_arrow_table().to_pandas() for n in names}
    finally:
        con.disconnect()


def _mentions(frame: pd.DataFrame, customer: str) -> int:
    """Rows with a cell equal to the id, or text naming it as a JSON string or CSV field."""
    text = frame.astype(str)
    hit = text.eq(customer).any(axis=1)
    for column in text.columns:
        hit |= text[column].str.contains(f'"{customer}"', regex=False)
        hit |= text[column].str.contains(f",{customer},", regex=False)
    return int(hit.sum())


def _identifier_hashes(customers: pd.DataFrame, customer: str) -> list[str]:
    """The index keys of a customer's usable identifiers (as ``rapport materialize``
    hashes them with the workspace's key)."""
    index = IdentityIndex.of(get_settings())
    row = customers.loc[customers["customer_id"] == customer].iloc[0]
    given = {c: row[c] for c in IDENTIFIER_FIELDS if c in row.index and pd.notna(row[c])}
    return [
        index.hash_one(kind, value)
        for kind, value in identifier_values(given).items()
        if normalise_one(kind, value, index.region) is not None
    ]


def _prepare(home: Path) -> tuple[str, str]:
    """Scores, segments, the online store, a quarantined row, outbox segments and list
    downloads naming two customers; returns (the one to forget, a neighbour)."""
    settings = get_settings()
    _run("score")
    _run("materialize")
    log = _tables()["campaign_log"]
    decided = log["customer_id"].value_counts()
    customer, neighbour = str(decided.index[0]), str(decided.index[1])
    bad = home / "bad"
    bad.mkdir()
    (bad / "orders.csv").write_text(
        "order_id,customer_id,ordered_at,amount\n"
        f"forget-bad-1,{customer},2024-05-01T10:00:00Z,not-a-number\n"
        f"forget-bad-2,{neighbour},2024-05-01T10:00:00Z,not-a-number\n"
    )
    CliRunner().invoke(main, ["ingest", str(bad)])  # exit 3 (all quarantined) is expected
    row = log.loc[log["customer_id"] == customer].iloc[0]
    decision, at = str(row["decision_id"]), pd.Timestamp(row["decided_at"]).isoformat()
    (home / "outcomes").mkdir()
    (home / "outcomes" / "outcomes.csv").write_text(
        f"decision_id,outcome,revenue,responded_at\n{decision},true,12.5,{at}\n"
    )
    _run("ingest", str(home / "outcomes"))
    orders = settings.outbox_dir / "orders"
    orders.mkdir(parents=True, exist_ok=True)
    lines = [
        {"order_id": f"ob-{c}-{i}", "customer_id": c, "ordered_at": "2030-01-01T00:00:00Z"}
        for c in (customer, neighbour)
        for i in range(2)
    ]
    (orders / "seg-1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    feedback = settings.outbox_dir / "feedback"
    feedback.mkdir(parents=True, exist_ok=True)
    (feedback / "seg-1.jsonl").write_text(json.dumps({"decision_id": decision}) + "\n")
    members = pd.DataFrame({"customer_id": [customer, neighbour], "action": ["a", "b"]})
    settings.exports_dir.mkdir(parents=True, exist_ok=True)
    members.to_csv(settings.exports_dir / "tl-1.csv", index=False)
    members.to_parquet(settings.exports_dir / "tl-1.parquet", index=False)
    return customer, neighbour


def test_forget_erases_everywhere_and_keeps_erasing(home: Path) -> None:
    settings = get_settings()
    customer, neighbour = _prepare(home)
    before = _tables()
    mine = {name: _mentions(frame, customer) for name, frame in before.items()}
    theirs = {name: _mentions(frame, neighbour) for name, frame in before.items()}
    for table in ("customers", "orders", "campaign_log", "scores", "quarantine"):
        assert mine[table] > 0 and theirs[table] > 0, table
    outcomes_before = len(before["outcomes"])
    store = open_store(settings.online_store_url)
    assert store.get(customer) is not None and store.get(neighbour) is not None
    hashes = {c: _identifier_hashes(before["customers"], c) for c in (customer, neighbour)}
    indexed = {c: store.get_identifiers(h) for c, h in hashes.items()}
    assert customer in indexed[customer].values() and neighbour in indexed[neighbour].values()
    store.close()
    # an open segment of a running service: counted, left for the next run (exit 4)
    (settings.outbox_dir / "orders" / f"seg-2{OPEN_SUFFIX}").write_text(
        json.dumps({"order_id": "ob-open", "customer_id": customer}) + "\n"
    )

    result = CliRunner().invoke(main, ["forget", customer, "--yes"])
    assert result.exit_code == EXIT_RETRY_FORGET, result.output
    assert customer not in result.output  # named by a hash prefix only
    assert customer_hash(customer)[:12] in result.output
    assert "open outbox segments" in result.output

    after = _tables()
    for name, frame in after.items():
        assert _mentions(frame, customer) == 0, f"{name} still names the customer"
        if name in theirs:
            assert _mentions(frame, neighbour) == theirs[name], f"{name} lost a neighbour row"
    for name in ("customers", "orders", "campaign_log", "scores"):
        assert len(after[name]) == len(before[name]) - mine[name], name
    assert len(after["outcomes"]) < outcomes_before  # the decision's outcome went too
    assert list(after["forgotten"]["customer_hash"]) == [customer_hash(customer)]
    store = open_store(settings.online_store_url)
    assert store.get(customer) is None and store.get(neighbour) is not None
    # the identifier index names them no more; the neighbour's entries are untouched
    assert hashes[customer] and store.get_identifiers(hashes[customer]) == {}
    assert store.get_identifiers(hashes[neighbour]) == indexed[neighbour]
    store.close()
    assert "identifiers removed from the index" in result.output
    sealed = (settings.outbox_dir / "orders" / "seg-1.jsonl").read_text()
    assert customer not in sealed and len(sealed.splitlines()) == 2  # the neighbour's
    assert (settings.outbox_dir / "feedback" / "seg-1.jsonl").read_text() == ""
    csv = pd.read_csv(settings.exports_dir / "tl-1.csv", dtype=str)
    assert list(csv["customer_id"]) == [neighbour]
    assert list(pd.read_parquet(settings.exports_dir / "tl-1.parquet")["customer_id"]) == [
        neighbour
    ]

    # the service sealed its segment; a second run erases it and says it is a repeat
    (settings.outbox_dir / "orders" / f"seg-2{OPEN_SUFFIX}").rename(
        settings.outbox_dir / "orders" / "seg-2.jsonl"
    )
    again = _run("forget", customer, "--yes")
    assert "forgotten before" in again and "1 lines from 1 sealed" in again
    assert not (settings.outbox_dir / "orders" / "seg-2.jsonl").read_text()

    # a late file with a bad row of theirs: its quarantine row is not kept either
    late = home / "late"
    late.mkdir()
    (late / "orders.csv").write_text(
        f"order_id,customer_id,ordered_at,amount\nlate-1,{customer},2024-06-01T10:00:00Z,x\n"
    )
    CliRunner().invoke(main, ["ingest", str(late)])  # exit 3: all quarantined
    assert _mentions(_tables()["quarantine"], customer) == 0
    # a stale export brings the customer back: the ingest erases them again and says so
    report = _run("ingest", str(home / "data"))
    assert "rows of forgotten customers" in report
    assert all(_mentions(frame, customer) == 0 for frame in _tables().values())


def test_forget_asks_first_and_refuses_an_empty_id() -> None:
    refused = CliRunner().invoke(main, ["forget", "C-anyone"], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    recorded = _tables().get("forgotten", pd.DataFrame({"customer_hash": []}))
    assert customer_hash("C-anyone") not in set(recorded["customer_hash"])
    empty = CliRunner().invoke(main, ["forget", " ", "--yes"])
    assert empty.exit_code == 2 and "empty customer id" in empty.output


def test_forget_removes_only_the_index_keys_naming_the_person_or_their_cluster(
    tmp_path: Path,
) -> None:
    import duckdb

    from features.forget import _own_keys

    db = duckdb.connect()
    db.execute("CREATE TABLE identity_clusters (customer_id VARCHAR, cluster_id VARCHAR)")
    db.execute("INSERT INTO identity_clusters VALUES ('C5', 'K1'), ('C6', 'K1')")
    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    try:
        # h5: their e-mail, naming their cluster; h6: a landline another person holds;
        # h7: indexed under their own id; h9: never indexed
        store.put_identifiers([("h5", "K1"), ("h6", "C8"), ("h7", "C5")])
        assert _own_keys(db, store, "C5", ["h5", "h6", "h7", "h9"]) == ["h5", "h7"]
    finally:
        store.close()


def test_quarantined_rows_naming_a_forgotten_person_by_identifier_go_too(
    tmp_path: Path,
) -> None:
    """A row quarantined by identifier alone (unknown or ambiguous) has no customer id:
    forget finds it by the person's identifiers in any spelling, now and in later ingests
    (which read the identifiers' hashes, never the identifiers, from
    ``forgotten_identifiers``)."""
    from datetime import UTC, datetime

    from features.forget import FORGOTTEN_IDENTIFIERS, erase_forgotten, forget
    from features.warehouse import ensure_contract_tables

    con = connect(tmp_path / "w.duckdb")
    ensure_contract_tables(con)
    db = raw(con)
    db.execute(
        "INSERT INTO customers (customer_id, signup_at, email, phone, name, postcode) VALUES "
        "('C1', '2024-01-01', 'Ann.Lee@Example.com', NULL, 'Ann Lee', 'SW1A 1AA'), "
        "('C2', '2024-01-01', 'bob@example.com', NULL, 'Bob Lee', 'SW1A 1AA')"
    )
    db.execute(
        "CREATE TABLE quarantine (table_name VARCHAR, source_file VARCHAR, row_json VARCHAR, "
        "reason VARCHAR, ingested_at TIMESTAMPTZ)"
    )

    def quarantine(email: str, at: str) -> None:
        row = json.dumps({"order_id": f"o-{email}", "email": email})
        db.execute(
            "INSERT INTO quarantine VALUES ('orders', 'f.csv', ?, 'unknown identifier', ?)",
            [row, at],
        )

    quarantine(" ann.lee@EXAMPLE.com ", "2024-05-01")
    quarantine("bob@example.com", "2024-05-01")
    # a row naming her by name with postcode only (any spelling), and one naming Bob so
    # (hers with the headers as her file wrote them: ingest matches them in any case)
    by_name = [
        ("Ms ANN  LEE", "sw1a1aa", "Name", "Postcode"),
        ("Bob Lee", "SW1A 1AA", "name", "postcode"),
    ]
    for name, postcode, name_header, postcode_header in by_name:
        row = json.dumps({"order_id": f"o-{name}", name_header: name, postcode_header: postcode})
        db.execute(
            "INSERT INTO quarantine VALUES ('orders', 'f.csv', ?, 'unknown identifier', ?)",
            [row, "2024-05-01"],
        )
    now = datetime(2024, 6, 1, tzinfo=UTC)
    forget(con, None, "C1", now, outbox=tmp_path / "outbox", files=[])
    left = [
        json.loads(r[0]).get("email") or json.loads(r[0])["name"]
        for r in db.execute("SELECT row_json FROM quarantine").fetchall()
    ]
    assert sorted(left) == ["Bob Lee", "bob@example.com"]
    stored = {r[0] for r in db.execute(f"SELECT mark FROM {FORGOTTEN_IDENTIFIERS}").fetchall()}
    assert len(stored) == 2 and not any("ann" in m or "lee" in m for m in stored)  # hashes
    # a stale export later: its quarantined row goes at the ingest's end
    quarantine("ANN.LEE@example.com", "2024-07-01")
    assert erase_forgotten(db, datetime(2024, 7, 1, tzinfo=UTC)) == 1
    assert db.execute("SELECT count(*) FROM quarantine").fetchone() == (2,)
    con.disconnect()
