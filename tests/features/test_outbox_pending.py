"""Decisions for customers the warehouse does not know yet wait in the outbox (reported)
and land once the customer is ingested, instead of being quarantined and moved to
``done/`` for good (issue 22, item 1)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sample_data import cutoff, load_tables, random_tables

from features.online.events import Outbox, decision_row
from features.outbox_ingest import ingest_outbox
from features.warehouse import connect, raw

NOW = datetime.now(UTC)


def decisions(con: object) -> set[str]:
    return {r[0] for r in raw(con).execute("SELECT decision_id FROM campaign_log").fetchall()}


def test_decisions_of_unknown_customers_wait_until_the_customer_exists(tmp_path: Path) -> None:
    tables = random_tables(seed=3, customers=4, events=10)
    con = connect(tmp_path / "warehouse.duckdb")
    known = tables["customers"].iloc[:3]
    load_tables(con, {"customers": known})
    newcomer = str(tables["customers"].iloc[3]["customer_id"])
    outbox = Outbox(tmp_path / "outbox")
    rows = [
        decision_row("d-known", str(known.iloc[0]["customer_id"]), cutoff(650), "a", "email", 0.5),
        decision_row("d-new", newcomer, cutoff(650), "a", "email", 0.5),
    ]
    outbox.append("campaign_log", rows)
    outbox.close()

    first = ingest_outbox(con, tmp_path / "outbox", NOW)
    assert decisions(con) == {"d-known"}
    assert first.pending == 1 and "1 decisions wait in the outbox" in first.summary()
    assert first.tables["campaign_log"].quarantined == 0  # waiting, not quarantined
    assert list((tmp_path / "outbox" / "campaign_log").glob("pending-*.jsonl"))

    again = ingest_outbox(con, tmp_path / "outbox", NOW)  # still unknown: still waiting
    assert again.pending == 1 and decisions(con) == {"d-known"}

    load_tables(con, {"customers": tables["customers"]})  # the newcomer is ingested
    last = ingest_outbox(con, tmp_path / "outbox", NOW)
    assert last.pending == 0 and decisions(con) == {"d-known", "d-new"}
    assert not list((tmp_path / "outbox" / "campaign_log").glob("*.jsonl"))
