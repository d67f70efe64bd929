"""The loop closes over HTTP: a decision scored by the real server, its feedback posted,
``rapport ingest --outbox`` run, and the outcome is in the NBA training set."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from serving_harness import Workspace, environment, serving, workspace_fixture

from features.online.events import OPEN_SUFFIX
from features.tables.outcomes import decision_outcomes, history
from features.warehouse import connect, raw
from rapport.cli import main
from rapport.settings import get_settings
from training.nba_data import build_nba_data, features_enricher, logged_decisions

ws = workspace_fixture("loop", customers=500, seed=11)


def _post(http: httpx.Client, ws: Workspace, path: str, body: Any, scope: str) -> httpx.Response:
    return http.post(path, json=body, headers={"Authorization": f"Bearer {ws.keys[scope]}"})


def _logged(ws: Workspace, ids: set[str], timeout: float = 10.0) -> None:
    """Wait until the decisions are in the outbox (they are written behind the answer)."""
    folder = ws.home / "outbox" / "campaign_log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        paths = [*folder.glob(f"*{OPEN_SUFFIX}"), *folder.glob("*.jsonl")]
        seen = {json.loads(x)["decision_id"] for p in paths for x in p.read_text().splitlines()}
        if ids <= seen:
            return
        time.sleep(0.05)
    raise AssertionError("decisions never reached the outbox")


@pytest.fixture(scope="module")
def posted(ws: Workspace) -> Iterator[dict[str, str]]:
    """Two decisions scored over HTTP and their feedback posted; the server stopped
    (which seals the outbox), then `rapport ingest --outbox` run."""
    with (
        serving(ws.home, env={"RAPPORT_ONLINE_STORE": ""}) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        ids = {}
        for name, customer in (("corrected", ws.customers[0]), ("won", ws.customers[1])):
            score = _post(http, ws, "/score", {"customer_id": customer}, "score")
            assert score.status_code == 200, score.text
            ids[name] = score.json()["decision_id"]
        _logged(ws, set(ids.values()))
        replies = [
            _post(http, ws, "/feedback", body, "feedback")
            for body in (
                {"decision_id": ids["corrected"], "outcome": True, "revenue": 30.0},
                # a client retry of the same call: a replay
                {"decision_id": ids["corrected"], "outcome": True, "revenue": 30.0},
                # a later, different outcome: a correction
                {"decision_id": ids["corrected"], "outcome": False, "revenue": 0.0},
                {"decision_id": ids["won"], "outcome": True, "revenue": 25.0},
                # a decision the warehouse will not know
                {"decision_id": "d-never-made", "outcome": True, "revenue": 5.0},
            )
        ]
        assert [r.status_code for r in replies] == [200] * 5, replies[-1].text
        assert {r.json()["status"] for r in replies} == {"accepted"}
        absurd = {"decision_id": ids["won"], "outcome": True, "revenue": 1e9}
        refused = _post(http, ws, "/feedback", absurd, "feedback")
        assert refused.status_code == 422 and refused.json()["fields"][0]["field"] == "revenue"
    with environment(RAPPORT_HOME=str(ws.home), RAPPORT_ONLINE_STORE=None):
        result = CliRunner().invoke(main, ["ingest", "--outbox"])
        assert result.exit_code == 0, result.output
        assert "outcomes (feedback)" in result.output
        yield ids


def _con(ws: Workspace) -> Any:
    with environment(RAPPORT_HOME=str(ws.home), RAPPORT_ONLINE_STORE=None):
        return connect(get_settings().warehouse_path)


def test_feedback_reaches_the_training_set(ws: Workspace, posted: dict[str, str]) -> None:
    con = _con(ws)
    try:
        decisions = logged_decisions(con).set_index("decision_id")
        assert decisions.loc[posted["won"], "outcome"] == 1.0
        assert decisions.loc[posted["won"], "revenue"] == 25.0
        assert decisions.loc[posted["corrected"], "outcome"] == 0.0
        data = build_nba_data(con, enrich=features_enricher(con)[0])
        rows = data.frame.set_index("decision_id")
        assert rows.loc[posted["won"], "outcome"] == 1.0
        assert rows.loc[posted["won"], "action"] == decisions.loc[posted["won"], "action"]
    finally:
        con.disconnect()


def test_replay_correction_and_unknown_decision(ws: Workspace, posted: dict[str, str]) -> None:
    con = _con(ws)
    try:
        versions = history(con, posted["corrected"])
        assert versions["outcome"].tolist() == [True, False]
        assert versions["correction"].tolist() == [False, True]
        assert set(versions["source"]) == {"feedback"}
        current = decision_outcomes(con).set_index("decision_id")
        assert current.loc[posted["corrected"], "outcome_source"] == "feedback"
        reasons = (
            raw(con)
            .execute("SELECT reason FROM quarantine WHERE table_name = 'outcomes'")
            .fetchall()
        )
        assert any("d-never-made" in r and "pending" in r for (r,) in reasons)
        (pending,) = raw(con).execute("SELECT count(*) FROM outcome_pending").fetchone()
        assert pending == 1
    finally:
        con.disconnect()
    # ingesting again changes nothing
    with environment(RAPPORT_HOME=str(ws.home), RAPPORT_ONLINE_STORE=None):
        before = _counts(ws)
        result = CliRunner().invoke(main, ["ingest", "--outbox"])
        assert result.exit_code == 0, result.output
        assert _counts(ws) == before


def _counts(ws: Workspace) -> tuple[int, ...]:
    con = connect(get_settings().warehouse_path)
    try:
        return tuple(
            raw(con).execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("outcome_history", "outcomes", "outcome_pending", "quarantine")
        )
    finally:
        con.disconnect()
