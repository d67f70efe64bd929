"""Outcomes of logged decisions: versions, corrections, replays, quarantine, attribution."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from contract_rows import order

from features.ingest import ingest
from features.outbox_ingest import ingest_outbox
from features.tables.outcomes import Attribution, decision_outcomes, history
from features.warehouse import connect, raw

NOW = datetime(2025, 3, 1, tzinfo=UTC)
WINDOWS = Attribution(14, {"call": 7})

CUSTOMERS = [
    {"customer_id": "C1", "signup_at": "2023-01-01"},
    {"customer_id": "C2", "signup_at": "2023-01-01"},
]
DECISIONS = [
    # C1: an email, then (later) a no_action; C2: a call whose window is 7 days
    {
        "decision_id": "D1",
        "customer_id": "C1",
        "decided_at": "2025-01-01",
        "action": "email_offer",
        "channel": "email",
        "propensity": "0.5",
    },
    {
        "decision_id": "D2",
        "customer_id": "C1",
        "decided_at": "2025-01-05",
        "action": "no_action",
        "channel": "none",
        "propensity": "0.5",
    },
    {
        "decision_id": "D3",
        "customer_id": "C2",
        "decided_at": "2025-01-01",
        "action": "call",
        "channel": "call",
        "propensity": "0.25",
    },
    # an inline outcome from a campaign tool
    {
        "decision_id": "D4",
        "customer_id": "C2",
        "decided_at": "2024-12-01",
        "action": "call",
        "channel": "call",
        "propensity": "0.25",
        "outcome": "true",
        "revenue": "12",
        "responded_at": "2024-12-03",
    },
]


def _csv(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _base(tmp_path: Path, orders: list[dict[str, Any]] | None = None) -> Any:
    con = connect(tmp_path / "w.duckdb")
    src = tmp_path / "base"
    files = {
        "customers": _csv(src, "customers", CUSTOMERS),
        "campaign_log": _csv(src, "campaign_log", DECISIONS),
    }
    if orders:
        files["orders"] = _csv(src, "orders", orders)
    ingest(con, files, NOW, attribution=WINDOWS)
    return con


def _current(con: Any) -> pd.DataFrame:
    return decision_outcomes(con).set_index("decision_id")


def test_file_outcomes_versions_replays_and_corrections(tmp_path: Path) -> None:
    con = _base(tmp_path)
    first = _csv(
        tmp_path / "f1",
        "outcomes",
        [
            {
                "decision_id": "D1",
                "outcome": "false",
                "revenue": "",
                "responded_at": "2025-01-03",
                "recorded_at": "2025-01-10",
            },
        ],
    )
    report = ingest(con, {"outcomes": first}, NOW)
    assert report.tables["outcomes (file)"].inserted == 1
    assert _current(con).loc["D1", "outcome"] is False or not _current(con).loc["D1", "outcome"]
    # the same file again: nothing changes
    again = ingest(con, {"outcomes": first}, NOW)
    assert again.tables["outcomes (file)"].inserted == 0
    assert again.tables["outcomes (file)"].already_present == 1
    assert len(history(con, "D1")) == 1
    # a later, different outcome: a correction, the earlier version kept
    second = _csv(
        tmp_path / "f2",
        "outcomes",
        [
            {
                "decision_id": "D1",
                "outcome": "true",
                "revenue": "40",
                "responded_at": "2025-01-04",
                "recorded_at": "2025-01-20",
            },
        ],
    )
    ingest(con, {"outcomes": second}, NOW)
    versions = history(con, "D1")
    assert versions["outcome"].tolist() == [False, True]
    assert versions["correction"].tolist() == [False, True]
    row = _current(con).loc["D1"]
    assert bool(row["outcome"]) and row["revenue"] == 40.0 and row["outcome_source"] == "file"
    # the inline campaign-log outcome is a version too and stays valid input
    assert _current(con).loc["D4", "outcome_source"] == "campaign_log"
    assert _current(con).loc["D4", "revenue"] == 12.0


def test_unknown_decision_is_quarantined_then_lands_when_it_arrives(tmp_path: Path) -> None:
    con = _base(tmp_path)
    early = _csv(
        tmp_path / "f",
        "outcomes",
        [
            {"decision_id": "D9", "outcome": "true", "revenue": "5", "responded_at": "2025-01-03"},
            {"decision_id": "D1", "outcome": "maybe", "revenue": "5", "responded_at": "2025-01-03"},
            {
                "decision_id": "D1",
                "outcome": "true",
                "revenue": "1e9",
                "responded_at": "2025-01-03",
            },
        ],
    )
    report = ingest(con, {"outcomes": early}, NOW).tables["outcomes (file)"]
    assert report.quarantined_by_reason == {
        "unknown decision": 1,
        "invalid boolean": 1,
        "out of range": 1,
    }
    reasons = raw(con).execute("SELECT reason FROM quarantine WHERE table_name = 'outcomes'").df()
    assert any("D9" in r and "pending" in r for r in reasons["reason"])
    assert "D9" not in _current(con).index
    late = _csv(
        tmp_path / "late",
        "campaign_log",
        [
            {
                "decision_id": "D9",
                "customer_id": "C2",
                "decided_at": "2025-01-02",
                "action": "call",
                "channel": "call",
                "propensity": "0.25",
            },
        ],
    )
    ingest(con, {"campaign_log": late}, NOW)
    row = _current(con).loc["D9"]
    assert bool(row["outcome"]) and row["revenue"] == 5.0 and row["outcome_source"] == "file"
    left = raw(con).execute("SELECT reason FROM quarantine WHERE table_name = 'outcomes'").df()
    assert not any("D9" in r for r in left["reason"])
    assert raw(con).execute("SELECT count(*) FROM outcome_pending").fetchone() == (0,)


def test_attribution_last_touch_within_the_window(tmp_path: Path) -> None:
    con = _base(
        tmp_path,
        [
            # C1 orders on 01-03: D1 (email, 14 days) is the only decision before it
            order("O1", "C1", "2025-01-03", 30.0),
            # 01-08: both D1 and D2 are open; last touch: D2 (no_action, same 14-day rule)
            order("O2", "C1", "2025-01-08", 20.0),
            # C2 orders 01-10: outside D3's 7-day call window
            order("O3", "C2", "2025-01-10", 99.0),
            # the latest order: every window ending before it has closed
            order("O4", "C2", "2025-02-20", 1.0),
        ],
    )
    current = _current(con)
    assert bool(current.loc["D1", "outcome"]) and current.loc["D1", "revenue"] == 30.0
    assert current.loc["D1", "outcome_source"] == "attribution"
    assert bool(current.loc["D2", "outcome"]) and current.loc["D2", "revenue"] == 20.0
    assert not current.loc["D3", "outcome"] and current.loc["D3", "revenue"] == 0.0
    # explicit outcomes take precedence over attribution
    explicit = _csv(
        tmp_path / "f",
        "outcomes",
        [
            {"decision_id": "D3", "outcome": "true", "revenue": "7", "responded_at": "2025-01-02"},
        ],
    )
    ingest(con, {"outcomes": explicit}, NOW, attribution=WINDOWS)
    current = _current(con)
    assert current.loc["D3", "outcome_source"] == "file" and current.loc["D3", "revenue"] == 7.0
    assert len(history(con, "D3")) == 2  # the attribution version is kept
    # ingesting nothing new changes nothing (attribution is replayed, not re-versioned)
    before = len(history(con))
    ingest(con, {}, NOW, attribution=WINDOWS)
    assert len(history(con)) == before


def test_open_window_stays_unknown(tmp_path: Path) -> None:
    con = _base(tmp_path, [order("O1", "C2", "2025-01-05", 3.0)])
    current = _current(con)
    # D3 (call, 7 days from 01-01) won O1; D1's 14-day window is still open on 01-05
    assert bool(current.loc["D3", "outcome"])
    assert pd.isna(current.loc["D1", "outcome"]) and pd.isna(current.loc["D1", "outcome_source"])


def _feedback(folder: Path, name: str, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_outbox_feedback_replay_retry_and_correction(tmp_path: Path) -> None:
    con = _base(tmp_path)
    outbox = tmp_path / "outbox"
    line = {
        "decision_id": "D1",
        "outcome": True,
        "revenue": 9.5,
        "responded_at": "2025-01-02T00:00:00Z",
        "recorded_at": "2025-01-02T01:00:00Z",
    }
    retry = {**line, "recorded_at": "2025-01-02T01:00:05Z"}
    _feedback(outbox / "feedback", "a", [line, line, retry])
    report = ingest_outbox(con, outbox, NOW)
    assert report.tables["outcomes (feedback)"].inserted == 1
    assert len(history(con, "D1")) == 1
    fix = {**line, "outcome": False, "revenue": 0.0, "recorded_at": "2025-01-03T00:00:00Z"}
    _feedback(outbox / "feedback", "b", [fix])
    ingest_outbox(con, outbox, NOW)
    versions = history(con, "D1")
    assert versions["outcome"].tolist() == [True, False]
    assert versions["correction"].tolist() == [False, True]
    assert not _current(con).loc["D1", "outcome"]
