"""Validated ingest: every bad-row class lands in quarantine, good rows always land."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sample_data import random_tables

from features.contract import TABLES
from features.ingest import (
    IngestError,
    IngestReport,
    discover_files,
    ingest,
)
from features.outbox_ingest import ingest_outbox
from features.warehouse import connect, raw, table_names

NOW = datetime(2025, 1, 1, tzinfo=UTC)

Row = dict[str, Any]

GOOD: dict[str, list[Row]] = {
    "customers": [
        {"customer_id": "C1", "signup_at": "2023-01-01", "region": "north", "email_opt_in": "true"},
        {
            "customer_id": "C2",
            "signup_at": "2023-06-01T12:00:00+02:00",
            "region": "south",
            "email_opt_in": "false",
        },
    ],
    "orders": [
        {
            "order_id": "O1",
            "customer_id": "C1",
            "ordered_at": "2024-01-05 10:00:00",
            "amount": "10.5",
            "margin": "2.5",
            "category": "a",
        },
        {
            "order_id": "O2",
            "customer_id": "C2",
            "ordered_at": "2024-02-01T00:00:00Z",
            "amount": "-5.5",
            "margin": "",
            "category": "b",
        },
    ],
    "interactions": [
        {
            "interaction_id": "I1",
            "customer_id": "C1",
            "occurred_at": "2024-01-02 09:00",
            "channel": "call",
            "kind": "complaint",
            "direction": "inbound",
            "duration_s": "120",
            "satisfaction": "4",
            "resolved": "true",
        },
        {
            "interaction_id": "I2",
            "customer_id": "C2",
            "occurred_at": "2024-01-03 09:00",
            "channel": "email",
            "kind": "open",
            "direction": "",
            "duration_s": "",
            "satisfaction": "",
            "resolved": "",
        },
    ],
    "campaign_log": [
        {
            "decision_id": "D1",
            "customer_id": "C1",
            "decided_at": "2024-01-03",
            "action": "offer",
            "channel": "email",
            "propensity": "0.25",
            "outcome": "true",
            "revenue": "12",
            "responded_at": "2024-01-04",
        },
        {
            "decision_id": "D2",
            "customer_id": "C2",
            "decided_at": "2024-01-03",
            "action": "no_action",
            "channel": "none",
            "propensity": "1",
            "outcome": "false",
            "revenue": "0",
            "responded_at": "",
        },
    ],
}


def write(folder: Path, name: str, rows: list[Row], fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    path = folder / f"{name}.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def write_all(folder: Path, tables: dict[str, list[Row]]) -> dict[str, Path]:
    return {name: write(folder, name, rows) for name, rows in tables.items()}


def count(con: Any, table: str) -> int:
    row = raw(con).execute(f'SELECT count(*) FROM "{table}"').fetchone()
    assert row is not None
    return int(row[0])


def counts(con: Any) -> dict[str, int]:
    return {name: count(con, name) for name in (*TABLES, "quarantine")}


def ids(con: Any, table: str) -> set[str]:
    id_col = TABLES[table].id_column
    return {r[0] for r in raw(con).execute(f'SELECT "{id_col}" FROM "{table}"').fetchall()}


def quarantine(con: Any) -> pd.DataFrame:
    return raw(con).execute("SELECT table_name, source_file, row_json, reason FROM quarantine").df()


def assert_balanced(report: IngestReport) -> None:
    for t in report.tables.values():
        assert t.read == t.inserted + t.already_present + t.quarantined + t.duplicates, t


@pytest.fixture
def con(tmp_path: Path) -> Any:
    return connect(tmp_path / "warehouse.duckdb")


# --------------------------------------------------------------------------- discovery
def test_discover_files_by_name(tmp_path: Path) -> None:
    write(tmp_path, "customers", GOOD["customers"], "parquet")
    write(tmp_path, "orders", GOOD["orders"])
    pd.DataFrame(GOOD["interactions"]).to_csv(tmp_path / "interactions.csv.gz", index=False)
    write(tmp_path, "truth_actions", [{"customer_id": "C1", "best": "offer"}])
    write(tmp_path, "notes", [{"x": 1}])
    found = discover_files(tmp_path, as_is=["truth_actions"])
    assert {k: p.name for k, p in found.items()} == {
        "customers": "customers.parquet",
        "orders": "orders.csv",
        "interactions": "interactions.csv.gz",
        "truth_actions": "truth_actions.csv",
    }
    assert set(discover_files(tmp_path)) == {"customers", "orders", "interactions"}


def test_discover_files_refuses_two_files_for_one_table(tmp_path: Path) -> None:
    write(tmp_path, "orders", GOOD["orders"])
    write(tmp_path, "orders", GOOD["orders"], "parquet")
    with pytest.raises(IngestError, match="orders"):
        discover_files(tmp_path)


# --------------------------------------------------------------------------- good data
def test_clean_files_load_completely(tmp_path: Path, con: Any) -> None:
    report = ingest(con, write_all(tmp_path / "in", GOOD), NOW)
    assert_balanced(report)
    for name, rows in GOOD.items():
        assert report.tables[name].inserted == len(rows) == count(con, name)
    assert report.quarantined == 0
    assert count(con, "quarantine") == 0
    assert "no rows quarantined" in report.summary()


def test_csv_timestamps_are_converted_to_utc(tmp_path: Path, con: Any) -> None:
    customers = [
        {"customer_id": "C1", "signup_at": "2024-03-01T10:00:00+02:00"},
        {"customer_id": "C2", "signup_at": "2024-03-01 10:00:00"},
        {"customer_id": "C3", "signup_at": "2024-03-01T10:00:00-05:30"},
        {"customer_id": "C4", "signup_at": "2024-03-01T10:00:00Z"},
    ]
    ingest(con, {"customers": write(tmp_path, "customers", customers)}, NOW)
    stored = dict(
        raw(con)
        .execute(
            "SELECT customer_id, strftime(signup_at AT TIME ZONE 'UTC', '%Y-%m-%d %H:%M') "
            "FROM customers"
        )
        .fetchall()
    )
    assert stored == {
        "C1": "2024-03-01 08:00",
        "C2": "2024-03-01 10:00",
        "C3": "2024-03-01 15:30",
        "C4": "2024-03-01 10:00",
    }


def test_csv_and_parquet_of_the_same_frames_give_the_same_warehouse(tmp_path: Path) -> None:
    frames = random_tables(seed=5)
    stored = []
    for fmt in ("parquet", "csv"):
        folder = tmp_path / fmt
        folder.mkdir()
        for name, frame in frames.items():
            if fmt == "parquet":
                frame.to_parquet(folder / f"{name}.parquet", index=False)
            else:
                frame.to_csv(folder / f"{name}.csv", index=False)
        con = connect(folder / "warehouse.duckdb")
        report = ingest(con, discover_files(folder), NOW)
        assert report.quarantined == 0
        assert {n: t.inserted for n, t in report.tables.items()} == {
            n: len(f) for n, f in frames.items()
        }
        # as text: exact for floats (shortest round trip) and timestamps, no tz libraries
        stored.append(
            {
                name: raw(con)
                .execute(f'SELECT COLUMNS(*)::VARCHAR FROM "{name}" ORDER BY 1')
                .fetchall()
                for name in frames
            }
        )
    assert stored[0] == stored[1]


def test_parquet_types_are_read_natively(tmp_path: Path, con: Any) -> None:
    customers = pd.DataFrame(
        {
            "customer_id": ["C1"],
            "signup_at": pd.to_datetime(["2023-01-01 12:00"]),  # naive: read as UTC
            "email_opt_in": [True],
        }
    )
    interactions = pd.DataFrame(
        {
            "interaction_id": ["I1", "I2"],
            "customer_id": ["C1", "C1"],
            "occurred_at": pd.to_datetime(["2024-01-01T10:00:00+01:00"] * 2),
            "channel": ["web", "chat"],
            "kind": ["visit", "inquiry"],
            "duration_s": [float("nan"), 30.0],  # NaN in an optional column is a missing value
            "satisfaction": pd.array([None, 5], dtype="Int64"),
            "resolved": [None, True],
        }
    )
    customers.to_parquet(tmp_path / "customers.parquet")
    interactions.to_parquet(tmp_path / "interactions.parquet")
    report = ingest(con, discover_files(tmp_path), NOW)
    assert report.quarantined == 0
    assert report.tables["interactions"].inserted == 2
    rows = (
        raw(con)
        .execute(
            "SELECT interaction_id, strftime(occurred_at AT TIME ZONE 'UTC', '%H:%M'), duration_s, "
            "satisfaction, resolved FROM interactions ORDER BY 1"
        )
        .fetchall()
    )
    assert rows == [("I1", "09:00", None, None, None), ("I2", "09:00", 30.0, 5, True)]
    (signup,) = raw(con).execute("SELECT signup_at::VARCHAR FROM customers").fetchone() or ("",)
    assert signup == "2023-01-01 12:00:00+00"


def test_events_of_new_customers_in_the_same_batch_are_known(tmp_path: Path, con: Any) -> None:
    ingest(con, {"customers": write(tmp_path / "a", "customers", GOOD["customers"][:1])}, NOW)
    customers = [
        *GOOD["customers"],
        {"customer_id": "C3", "signup_at": "not a date", "region": "", "email_opt_in": ""},
    ]
    orders = [
        *GOOD["orders"],
        {"order_id": "O3", "customer_id": "C3", "ordered_at": "2024-01-01", "amount": "1"},
    ]
    report = ingest(con, write_all(tmp_path / "b", {"customers": customers, "orders": orders}), NOW)
    assert_balanced(report)
    assert ids(con, "orders") == {"O1", "O2"}  # C1 was stored before, C2 arrived in this batch
    reasons = set(quarantine(con)["reason"])
    assert "customer_id 'C3' is not a known customer" in reasons  # C3 itself was bad


# --------------------------------------------------------------------------- bad rows
def bad(table: str, **changes: str) -> Row:
    """The first good row of a table under the id BAD, with some values changed."""
    return {**GOOD[table][0], TABLES[table].id_column: "BAD", **changes}


BAD_CASES = [
    ("orders", {"amount": ""}, "missing value", "amount is missing"),
    ("orders", {"customer_id": " "}, "missing value", "customer_id is missing"),
    (
        "orders",
        {"ordered_at": "2024-13-01"},
        "invalid timestamp",
        "ordered_at '2024-13-01' is not a valid timestamp",
    ),
    (
        "orders",
        {"ordered_at": "2031-05-01T00:00:00+00:00"},
        "future timestamp",
        "ordered_at '2031-05-01T00:00:00+00:00' is in the future",
    ),
    (
        "orders",
        {"ordered_at": "1970-01-01"},
        "timestamp before 1990",
        "ordered_at '1970-01-01' is before 1990-01-01 (implausible)",
    ),
    ("orders", {"amount": "12,5"}, "invalid number", "amount '12,5' is not a number"),
    ("orders", {"amount": "inf"}, "invalid number", "amount 'inf' is not a number"),
    (
        "orders",
        {"customer_id": "C999"},
        "unknown customer",
        "customer_id 'C999' is not a known customer",
    ),
    (
        "customers",
        {"email_opt_in": "maybe"},
        "invalid boolean",
        "email_opt_in 'maybe' is not a boolean (true/false)",
    ),
    (
        "customers",
        {"signup_at": "2099-01-01"},
        "future timestamp",
        "signup_at '2099-01-01' is in the future",
    ),
    ("campaign_log", {"propensity": "1.7"}, "out of range", "propensity '1.7' is outside (0, 1]"),
    ("campaign_log", {"propensity": "0"}, "out of range", "propensity '0' is outside (0, 1]"),
    (
        "campaign_log",
        {"responded_at": "yesterday"},
        "invalid timestamp",
        "responded_at 'yesterday' is not a valid timestamp",
    ),
    (
        "interactions",
        {"satisfaction": "7"},
        "out of range",
        "satisfaction '7' is not an integer in 1..5",
    ),
    (
        "interactions",
        {"satisfaction": "3.5"},
        "invalid number",
        "satisfaction '3.5' is not a whole number",
    ),
    (
        "interactions",
        {"resolved": "sometimes"},
        "invalid boolean",
        "resolved 'sometimes' is not a boolean (true/false)",
    ),
    (
        "interactions",
        {"channel": "fax"},
        "not an allowed value",
        "channel 'fax' is not one of call, email, web, chat, store, sms, visit",
    ),
    (
        "interactions",
        {"direction": "sideways"},
        "not an allowed value",
        "direction 'sideways' is not one of inbound, outbound",
    ),
]


@pytest.mark.parametrize(
    ("table", "changes", "kind", "reason"),
    BAD_CASES,
    ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(BAD_CASES)],
)
def test_bad_row_is_quarantined_with_its_reason_and_good_rows_land(
    tmp_path: Path, con: Any, table: str, changes: dict[str, str], kind: str, reason: str
) -> None:
    row = bad(table, **changes)
    tables = {**GOOD, table: [GOOD[table][0], row, GOOD[table][1]]}
    files = write_all(tmp_path, tables)
    report = ingest(con, files, NOW)
    assert_balanced(report)
    result = report.tables[table]
    assert result.quarantined_by_reason == {kind: 1}
    assert result.inserted == 2
    assert ids(con, table) == {r[TABLES[table].id_column] for r in GOOD[table]}
    stored = quarantine(con)
    assert len(stored) == 1
    assert stored["reason"].iloc[0] == reason
    assert stored["table_name"].iloc[0] == table
    assert stored["source_file"].iloc[0] == str(files[table])
    original = json.loads(stored["row_json"].iloc[0])
    assert original[TABLES[table].id_column] == "BAD"
    assert original == {k: v or None for k, v in row.items()}  # CSV reads "" as null


def test_every_problem_of_a_row_is_listed_and_counted_under_the_first(
    tmp_path: Path, con: Any
) -> None:
    orders = [bad("orders", amount="x", ordered_at="2099-01-01", customer_id="C999")]
    report = ingest(con, write_all(tmp_path, {**GOOD, "orders": orders}), NOW)
    assert report.tables["orders"].quarantined_by_reason == {"invalid number": 1}
    (reason,) = quarantine(con)["reason"]
    assert reason == (
        "amount 'x' is not a number; ordered_at '2099-01-01' is in the future; "
        "customer_id 'C999' is not a known customer"
    )


def test_identical_duplicates_collapse_and_conflicting_ones_are_all_quarantined(
    tmp_path: Path, con: Any
) -> None:
    o1, o2 = GOOD["orders"]
    changed = {**o2, "amount": "99"}
    bad_twice = bad("orders", ordered_at="nope")
    orders = [o1, o1, o1, o2, changed, changed, bad_twice, bad_twice]
    report = ingest(con, write_all(tmp_path, {**GOOD, "orders": orders}), NOW)
    assert_balanced(report)
    result = report.tables["orders"]
    assert (result.read, result.inserted, result.duplicates) == (8, 1, 4)
    assert result.quarantined_by_reason == {"conflict": 2, "invalid timestamp": 1}
    assert ids(con, "orders") == {"O1"}
    stored = quarantine(con)
    assert len(stored) == result.quarantined
    conflicts = stored[stored["reason"].str.contains("conflict")]
    assert set(conflicts["reason"]) == {
        "order_id 'O2' has 2 different versions in this batch (conflict)"
    }
    assert sorted(json.loads(r)["amount"] for r in conflicts["row_json"]) == [-5.5, 99.0]


# --------------------------------------------------------------------------- re-ingest
def test_reingest_is_idempotent(tmp_path: Path, con: Any) -> None:
    tables = {
        **GOOD,
        "orders": [*GOOD["orders"], bad("orders", amount="x"), GOOD["orders"][0]],
        "interactions": [*GOOD["interactions"], bad("interactions", channel="fax")],
    }
    files = write_all(tmp_path, tables)
    first = ingest(con, files, NOW)
    before = counts(con)
    second = ingest(con, files, NOW)
    assert counts(con) == before
    assert_balanced(second)
    for name, result in second.tables.items():
        assert result.inserted == 0
        assert result.already_present == first.tables[name].inserted > 0
        assert result.quarantined_by_reason == first.tables[name].quarantined_by_reason
    assert before["quarantine"] == first.quarantined == first.newly_quarantined == 2
    assert second.newly_quarantined == 0
    assert "2 rows quarantined (0 new)" in second.summary()


def test_appending_new_rows_inserts_only_those(tmp_path: Path, con: Any) -> None:
    ingest(con, write_all(tmp_path / "a", GOOD), NOW)
    extra = {"order_id": "O3", "customer_id": "C1", "ordered_at": "2024-06-01", "amount": "3"}
    report = ingest(con, {"orders": write(tmp_path / "b", "orders", [*GOOD["orders"], extra])}, NOW)
    assert_balanced(report)
    assert (report.tables["orders"].inserted, report.tables["orders"].already_present) == (1, 2)
    assert ids(con, "orders") == {"O1", "O2", "O3"}


def test_changed_content_for_a_stored_id_is_a_conflict_and_never_overwrites(
    tmp_path: Path, con: Any
) -> None:
    ingest(con, write_all(tmp_path / "a", GOOD), NOW)
    changed = {**GOOD["orders"][0], "amount": "999"}
    report = ingest(
        con, {"orders": write(tmp_path / "b", "orders", [changed, GOOD["orders"][1]])}, NOW
    )
    assert_balanced(report)
    assert report.tables["orders"].quarantined_by_reason == {"conflict": 1}
    assert report.tables["orders"].already_present == 1
    amounts = dict(raw(con).execute("SELECT order_id, amount FROM orders").fetchall())
    assert amounts == {"O1": 10.5, "O2": -5.5}
    (reason,) = quarantine(con)["reason"]
    assert reason.startswith("order_id 'O1' already exists in the warehouse with different content")
    assert json.loads(quarantine(con)["row_json"].iloc[0])["amount"] == "999"


# --------------------------------------------------------------------------- file errors
def test_missing_required_column_names_file_and_column_and_writes_nothing(
    tmp_path: Path, con: Any
) -> None:
    ingest(con, write_all(tmp_path / "a", {"customers": GOOD["customers"]}), NOW)
    before = counts(con)
    orders = [
        {k: v for k, v in r.items() if k not in ("amount", "ordered_at")} for r in GOOD["orders"]
    ]
    files = write_all(tmp_path / "b", {**GOOD, "orders": orders})
    files["customers"] = write(
        tmp_path / "b",
        "customers",
        [*GOOD["customers"], {"customer_id": "C9", "signup_at": "2024-01-01"}],
    )
    with pytest.raises(IngestError) as error:
        ingest(con, files, NOW)
    assert str(files["orders"]) in str(error.value)
    assert "ordered_at" in str(error.value) and "amount" in str(error.value)
    assert counts(con) == before


@pytest.mark.parametrize("content", [b"PAR1 this is not parquet", b""])
def test_unreadable_parquet_raises(tmp_path: Path, con: Any, content: bytes) -> None:
    path = tmp_path / "orders.parquet"
    path.write_bytes(content)
    with pytest.raises(IngestError, match=r"orders\.parquet"):
        ingest(con, {"orders": path}, NOW)


def test_broken_csv_line_is_quarantined_with_its_line_and_the_rest_loads(
    tmp_path: Path, con: Any
) -> None:
    files = write_all(tmp_path, GOOD)
    lines = files["orders"].read_text().splitlines()
    header_and_good = "\n".join(lines)
    # past the CSV sniffer's sample, so DuckDB only finds it while loading
    rows = "\n".join(f"O{i},C1,2024-01-01,1.0,,a" for i in range(10, 30_000))
    files["orders"].write_text(f"{header_and_good}\n{rows}\nO9,C1,2024-01-01,1,2,3,4,5\n")
    report = ingest(con, files, NOW)
    assert_balanced(report)
    assert report.tables["orders"].inserted == 2 + 29_990
    assert report.tables["orders"].quarantined_by_reason == {"unreadable line": 1}
    (reason,) = quarantine(con)["reason"]
    assert (
        reason
        == "line 29994: 8 fields where the header has 6 (check the delimiter and the quoting)"
    )


def test_a_file_that_cannot_be_decoded_rolls_everything_back(tmp_path: Path, con: Any) -> None:
    files = write_all(tmp_path, GOOD)
    files["orders"].write_bytes(files["orders"].read_bytes() + b"O9,C1,2024-01-01,1,,caf\xe9\n")
    with pytest.raises(IngestError, match=r"orders\.csv: line 4 is not valid utf-8.*--encoding"):
        ingest(con, files, NOW)
    assert (
        not raw(con)
        .execute("SELECT table_name FROM information_schema.tables WHERE table_name = 'customers'")
        .fetchall()
    )


def test_unknown_table_name_is_refused(tmp_path: Path, con: Any) -> None:
    with pytest.raises(IngestError, match="unknown table"):
        ingest(con, {"refunds": write(tmp_path, "refunds", [{"x": 1}])}, NOW)


def test_extra_columns_are_ignored_and_reported(tmp_path: Path, con: Any) -> None:
    customers = [{**r, "loyalty_tier": "gold"} for r in GOOD["customers"]]
    report = ingest(con, {"customers": write(tmp_path, "customers", customers)}, NOW)
    assert report.tables["customers"].extra_columns == ("loyalty_tier",)
    assert "loyalty_tier" in report.summary()
    assert count(con, "customers") == 2


# --------------------------------------------------------------------------- validate
def test_validate_reports_like_ingest_but_writes_nothing(tmp_path: Path, con: Any) -> None:
    ingest(con, {"customers": write(tmp_path / "a", "customers", GOOD["customers"][:1])}, NOW)
    before = counts(con)
    tables = {**GOOD, "orders": [*GOOD["orders"], bad("orders", customer_id="C999")]}
    files = write_all(tmp_path / "b", tables)
    checked = ingest(con, files, NOW, commit=False)
    assert counts(con) == before
    assert not checked.written and "nothing was written" in checked.summary()
    loaded = ingest(con, files, NOW)
    assert checked.tables == loaded.tables
    assert checked.quarantined == loaded.quarantined == 1


# --------------------------------------------------------------------------- as is, outbox
def test_named_tables_are_loaded_as_they_are_and_replaced(tmp_path: Path, con: Any) -> None:
    truth = [{"customer_id": "C1", "churned": True}, {"customer_id": "nobody", "churned": False}]
    first = {"truth_customers": write(tmp_path / "a", "truth_customers", truth, "parquet")}
    with pytest.raises(IngestError, match="unknown table"):
        ingest(con, first, NOW)  # only the tables the caller names
    report = ingest(con, first, NOW, as_is=["truth_customers"])
    assert report.tables["truth_customers"].replaced
    assert count(con, "truth_customers") == 2
    second = {"truth_customers": write(tmp_path / "b", "truth_customers", truth[:1])}
    ingest(con, second, NOW, as_is=["truth_customers"])
    assert raw(con).execute("SELECT * FROM truth_customers").fetchall() == [("C1", True)]
    with pytest.raises(IngestError, match="contract tables"):
        ingest(con, second, NOW, as_is=["orders"])


def test_outbox_events_are_ingested_and_moved_to_done(tmp_path: Path, con: Any) -> None:
    ingest(con, write_all(tmp_path / "in", {"customers": GOOD["customers"]}), NOW)
    outbox = tmp_path / "outbox"
    (outbox / "orders").mkdir(parents=True)
    events = [
        {
            "order_id": "L1",
            "customer_id": "C1",
            "ordered_at": "2024-12-31T23:00:00+01:00",
            "amount": 20.0,
            "margin": None,
            "category": "a",
            "channel": "web",
        },
        {
            "order_id": "L2",
            "customer_id": "C404",
            "ordered_at": "2024-12-01T10:00:00+00:00",
            "amount": 5,
        },
    ]
    batch = outbox / "orders" / "batch-1.jsonl"
    batch.write_text("".join(json.dumps(e) + "\n" for e in events))
    report = ingest_outbox(con, outbox, NOW)
    assert_balanced(report)
    assert report.tables["orders"].inserted == 1
    assert report.tables["orders"].quarantined_by_reason == {"unknown customer": 1}
    assert ids(con, "orders") == {"L1"}
    (when,) = raw(con).execute("SELECT ordered_at::VARCHAR FROM orders").fetchone() or ("",)
    assert when == "2024-12-31 22:00:00+00"
    stored = quarantine(con)
    assert stored["source_file"].tolist() == [str(batch)]
    assert not batch.exists() and (outbox / "orders" / "done" / "batch-1.jsonl").exists()
    assert ingest_outbox(con, outbox, NOW).tables == {}


def test_naive_text_timestamps_are_utc_whatever_the_session_time_zone(
    tmp_path: Path, con: Any
) -> None:
    raw(con).execute("SET TimeZone = 'America/New_York'")
    customers = [{"customer_id": "C1", "signup_at": "2024-03-01 10:00:00"}]
    ingest(con, {"customers": write(tmp_path, "customers", customers)}, NOW)
    (hour,) = raw(con).execute(
        "SELECT strftime(signup_at AT TIME ZONE 'UTC', '%H:%M') FROM customers"
    ).fetchone() or ("",)
    assert hour == "10:00"
    assert raw(con).execute("SELECT current_setting('TimeZone')").fetchone() == (
        "America/New_York",
    )


def test_unreadable_outbox_file_raises_and_stays_in_place(tmp_path: Path, con: Any) -> None:
    batch = tmp_path / "outbox" / "orders" / "batch-1.jsonl"
    batch.parent.mkdir(parents=True)
    batch.write_text('{"order_id": "L1", "customer_id": \n')
    with pytest.raises(IngestError, match="orders"):
        ingest_outbox(con, tmp_path / "outbox", NOW)
    assert batch.exists()
    assert (
        not raw(con)
        .execute(  # rolled back: not even the contract tables were created
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'orders'"
        )
        .fetchall()
    )


def test_campaign_log_without_propensities_loads_them_as_unknown(tmp_path: Path, con: Any) -> None:
    """Most CRM exports log who got which action, never with what probability."""
    unlogged = [{**r, "propensity": ""} for r in GOOD["campaign_log"]]
    no_column = [{k: v for k, v in r.items() if k != "propensity"} for r in GOOD["campaign_log"]]
    for name, rows in (("blank", unlogged), ("absent", no_column)):
        files = write_all(tmp_path / name, {**GOOD, "campaign_log": rows})
        report = ingest(con, files, NOW)
        assert report.tables["campaign_log"].quarantined == 0, name
    stored = raw(con).execute("SELECT count(*), count(propensity) FROM campaign_log").fetchone()
    assert stored == (len(GOOD["campaign_log"]), 0)


# --------------------------------------------------------------------------- identifiers
# orders and interactions naming their customer by e-mail, phone, card or cookie (issue 20)
ID_CUSTOMERS = """customer_id,signup_at,email,phone,loyalty_card,cookie_id
C1,2023-01-01,Ann.Lee@Example.com,07911 123456,,k1
C2,2023-02-01,bob.stone@example.com,+44 7911 123457,L-2,k1
C3,2023-03-01,carl@example.com,020 7946 0123,,
C4,2023-04-01,dana@example.com,020 7946 0123,,
"""
ID_ORDERS = """order_id,customer_id,ordered_at,amount,email,phone
O1,,2024-01-05,10.0, ANN.LEE@example.com ,
O2,,2024-01-06,11.0,,+447911123457
O3,C3,2024-01-07,12.0,bob.stone@example.com,
O4,,2024-01-08,13.0,nobody@example.com,
O5,,2024-01-09,14.0,,020 7946 0123
O6,,2024-01-10,15.0,not an address,
O7,,2024-01-11,16.0,ann.lee@example.com,07911123457
O8,,2024-01-12,17.0,,
"""
ID_INTERACTIONS = """interaction_id,occurred_at,channel,kind,loyalty_card,cookie_id
I1,2024-02-01,store,visit, L-2 ,
I2,2024-02-02,web,visit,,k1
"""


def _id_files(folder: Path, orders: str = ID_ORDERS) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "customers.csv").write_text(ID_CUSTOMERS)
    (folder / "orders.csv").write_text(orders)
    (folder / "interactions.csv").write_text(ID_INTERACTIONS)
    return discover_files(folder)


def test_events_named_by_an_identifier_reach_their_customer(tmp_path: Path) -> None:
    con = connect(tmp_path / "warehouse.duckdb")
    report = ingest(con, _id_files(tmp_path / "files"), now=NOW)
    db = raw(con)
    orders = dict(db.execute("SELECT order_id, customer_id FROM orders").fetchall())
    # e-mail in another case and with spaces, phone in another format; customer_id wins
    assert orders == {"O1": "C1", "O2": "C2", "O3": "C3"}
    assert dict(db.execute("SELECT interaction_id, customer_id FROM interactions").fetchall()) == {
        "I1": "C2"  # the card, trimmed; I2's cookie k1 is shared by C1 and C2
    }
    # the identifiers are not stored with the events
    assert "email" not in {c for (c, *_) in db.execute("DESCRIBE orders").fetchall()}
    o = report.tables["orders"]
    assert o.named_by_identifier == 2 and o.inserted == 3 and o.read == 8
    assert o.quarantined_by_reason == {
        "unknown identifier": 1,  # O4
        "ambiguous identifier": 2,  # O5 a household's landline, O7 two persons' identifiers
        "unusable identifier": 1,  # O6
        "missing value": 1,  # O8: neither customer_id nor an identifier
    }
    assert "customer named by an identifier: 2 rows" in o.line()
    assert "ignored extra columns" not in o.line()
    assert report.tables["interactions"].quarantined_by_reason == {"ambiguous identifier": 1}
    reasons = dict(
        db.execute(
            "SELECT json_extract_string(row_json, '$.order_id'), reason FROM quarantine "
            "WHERE table_name = 'orders'"
        ).fetchall()
    )
    assert reasons["O4"].startswith("customer_id is missing and no customer holds its email")
    assert "more than one customer" in reasons["O5"] and "phone" in reasons["O5"]
    assert "email is not a usable email" in reasons["O6"]
    assert reasons["O8"] == "customer_id is missing"
    # no reason quotes an identifier; the row itself is kept as it came
    for reason in reasons.values():
        for value in ("nobody", "7946", "not an address", "ann.lee", "7911"):
            assert value not in reason.lower()
    (row,) = db.execute(
        "SELECT row_json FROM quarantine WHERE reason LIKE '%no customer holds%'"
    ).fetchone() or ("",)
    assert json.loads(row)["email"] == "nobody@example.com"
    # idempotent: the same files again change nothing
    again = ingest(con, _id_files(tmp_path / "files"), now=NOW)
    assert again.tables["orders"].inserted == 0 and again.newly_quarantined == 0
    con.disconnect()


def test_an_unknown_identifier_lands_once_its_customer_arrives(tmp_path: Path) -> None:
    con = connect(tmp_path / "warehouse.duckdb")
    orders = "order_id,ordered_at,amount,email\nO9,2024-03-01,9.0,Eve@Example.com\n"
    first = ingest(con, _id_files(tmp_path / "a", orders), now=NOW)
    assert first.tables["orders"].quarantined_by_reason == {"unknown identifier": 1}
    later = tmp_path / "b"
    later.mkdir()
    (later / "customers.csv").write_text(
        "customer_id,signup_at,email\nC9,2023-05-01,eve@example.com\n"
    )
    (later / "orders.csv").write_text(orders)
    report = ingest(con, discover_files(later), now=NOW)
    assert report.tables["orders"].inserted == 1
    assert raw(con).execute("SELECT customer_id FROM orders WHERE order_id = 'O9'").fetchone() == (
        "C9",
    )
    con.disconnect()


def test_identifiers_name_the_resolved_cluster(tmp_path: Path) -> None:
    con = connect(tmp_path / "warehouse.duckdb")
    ingest(con, _id_files(tmp_path / "files"), now=NOW)
    db = raw(con)
    # a resolution made C2 part of C1's cluster: C2's phone names C1
    db.execute(
        "CREATE TABLE identity_clusters AS SELECT * FROM (VALUES "
        "('C1', 'C1', now()), ('C2', 'C1', now())) t(customer_id, cluster_id, resolved_at)"
    )
    files = tmp_path / "more"
    files.mkdir()
    (files / "orders.parquet").parent.mkdir(exist_ok=True)
    pd.DataFrame(
        {
            "order_id": ["P1", "P2"],
            "ordered_at": pd.to_datetime(["2024-04-01", "2024-04-02"], utc=True),
            "amount": [1.0, 2.0],
            "phone": ["07911 123457", "07911 123456"],
        }
    ).to_parquet(files / "orders.parquet")
    report = ingest(con, discover_files(files), now=NOW)
    assert report.tables["orders"].inserted == 2
    rows = db.execute("SELECT customer_id FROM orders WHERE order_id LIKE 'P%'").fetchall()
    assert {r[0] for r in rows} == {"C1"}
    con.disconnect()


def test_validate_reports_identifier_rows_and_writes_nothing(tmp_path: Path) -> None:
    con = connect(tmp_path / "warehouse.duckdb")
    report = ingest(con, _id_files(tmp_path / "files"), now=NOW, commit=False)
    assert report.tables["orders"].named_by_identifier == 2
    assert report.tables["orders"].quarantined == 5
    db = raw(con)
    tables = table_names(db)
    assert "orders" not in tables or db.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert not {t for t in tables if t.startswith("_rapport")}
    con.disconnect()


def test_a_delivery_postcode_beside_an_email_does_not_stop_the_row(tmp_path: Path) -> None:
    """Half a name-with-postcode pair (an export's delivery postcode) is no identifier when
    another one names the customer; alone it is unusable, as before."""
    con = connect(tmp_path / "warehouse.duckdb")
    orders = (
        "order_id,ordered_at,amount,email,postcode\n"
        "P1,2024-03-01,9.0,ann.lee@example.com,SW1A 1AA\n"
        "P2,2024-03-02,9.0,,SW1A 1AA\n"
    )
    report = ingest(con, _id_files(tmp_path / "files", orders), now=NOW)
    landed = dict(raw(con).execute("SELECT order_id, customer_id FROM orders").fetchall())
    assert landed == {"P1": "C1"}
    assert report.tables["orders"].quarantined_by_reason == {"unusable identifier": 1}
    con.disconnect()
