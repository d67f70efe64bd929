"""Ingest's fast path (good new rows inserted straight from the file) and its exact path
(staged rows) give the same warehouse, quarantine and report on a messy batch."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from contract_rows import order as contract_order

import features.ingest as ingest_module
from features.contract import TABLES
from features.ingest import IngestReport, ingest
from features.warehouse import connect, raw

NOW = datetime(2025, 1, 1, tzinfo=UTC)

CUSTOMERS = [
    {"customer_id": "C1", "signup_at": "2023-01-01"},
    {"customer_id": "C2", "signup_at": "2023-02-01"},
]


#: the batches' orders as their CSV holds them: one time, customer C1 and amount 10 unless
#: an order says otherwise
order = partial(contract_order, customer_id="C1", ordered_at="2024-01-05 10:00:00", amount="10")

FIRST = [order("S1"), order("S2"), order("S3"), order("S4"), order("S5", amount="5")]
SECOND = [
    order("S1"),  # stored, identical, once: already present
    order("S2"),  # stored, identical, twice: already present + 1 duplicate
    order("S2"),
    order("S3", amount="99"),  # stored, different content: conflict
    order("S4", amount="x"),  # stored, but now a bad row: quarantined
    order("N1"),  # new, once: inserted
    order("N2"),  # new, identical twice: inserted + 1 duplicate
    order("N2"),
    order("N3", amount="1"),  # new, two versions: both quarantined as a conflict
    order("N3", amount="2"),
    order("N4", customer_id="C9"),  # new, unknown customer
    order(None),  # no id
    order("N5", amount="7", customer_id="C2"),  # new, once: inserted
]


def write(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def run(tmp_path: Path) -> tuple[list[IngestReport], dict[str, list[tuple]]]:
    con = connect(tmp_path / "warehouse.duckdb")
    files = {"customers": write(tmp_path / "a", "customers", CUSTOMERS)}
    reports = [
        ingest(con, {**files, "orders": write(tmp_path / "a", "orders", FIRST)}, NOW),
        ingest(con, {"orders": write(tmp_path / "b", "orders", SECOND)}, NOW),
        ingest(con, {"orders": tmp_path / "b" / "orders.csv"}, NOW),
    ]
    db = raw(con)
    stored = {
        name: db.execute(f'SELECT COLUMNS(*)::VARCHAR FROM "{name}" ORDER BY ALL').fetchall()
        for name in TABLES
    }
    stored["quarantine"] = db.execute(
        "SELECT table_name, row_json, reason FROM quarantine ORDER BY ALL"
    ).fetchall()
    return reports, stored


def every_id_exceptional(self: Any, stored_empty: bool) -> str:
    """Pass 1 as if every id hash collided: all rows go through the exact path."""
    return f"""
        CREATE OR REPLACE TEMP TABLE {ingest_module._EXCEPTIONS} AS
        WITH {self.typed()}
        SELECT DISTINCT hash(t.{self.key}) AS _h, false AS _same FROM t
    """


def summary(report: IngestReport) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(t).items() if k != "source"} for t in report.tables.values()]


def test_fast_and_exact_paths_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_reports, fast = run(tmp_path / "fast")
    monkeypatch.setattr(ingest_module._Query, "exceptions_sql", every_id_exceptional)
    exact_reports, exact = run(tmp_path / "exact")
    assert fast == exact
    assert [summary(r) for r in fast_reports] == [summary(r) for r in exact_reports]


def test_messy_second_batch_is_counted_exactly(tmp_path: Path) -> None:
    (_, second, again), stored = run(tmp_path)
    orders = second.tables["orders"]
    assert (orders.read, orders.inserted, orders.already_present, orders.duplicates) == (
        13,
        3,
        2,
        2,
    )
    assert orders.quarantined_by_reason == {
        "conflict": 3,
        "invalid number": 1,
        "unknown customer": 1,
        "missing value": 1,
    }
    assert second.newly_quarantined == 6
    ids = {row[0] for row in stored["orders"]}
    assert ids == {"S1", "S2", "S3", "S4", "S5", "N1", "N2", "N5"}
    amounts = {row[0]: row[3] for row in stored["orders"]}
    assert amounts["S3"] == "10.0"  # the stored row is kept on conflict
    # the same batch again: nothing new, same problems, none newly quarantined
    again_orders = again.tables["orders"]
    assert (again_orders.inserted, again_orders.already_present) == (0, 5)
    assert again_orders.quarantined_by_reason == orders.quarantined_by_reason
    assert again.newly_quarantined == 0
    for report in (second, again):
        for t in report.tables.values():
            assert t.read == t.inserted + t.already_present + t.quarantined + t.duplicates
