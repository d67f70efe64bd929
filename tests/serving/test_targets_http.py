"""``POST /targets`` over HTTP: the scope, the list, errors pointing at the token, the
download link of long lists, and the audit trail through the outbox.

A served demo workspace (trained champions, materialized store) plus one batch scoring
run; the server reads the warehouse read-only per request.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from click.testing import CliRunner
from serving_harness import Server, Workspace, environment, prepare_workspace, serving


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from features.warehouse import connect
    from rapport.settings import Settings
    from training.scoring import score_all

    ws = prepare_workspace(tmp_path_factory.mktemp("targets"), customers=1500, seed=11)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(ws.home))
        from rapport.settings import reset_settings

        reset_settings()
        con = connect(Settings(home=ws.home).warehouse_path)
        score_all(con)
        con.disconnect()
    reset_settings()
    return ws


@pytest.fixture(scope="module")
def server(ws: Workspace) -> Iterator[Server]:
    with serving(ws.home, env={"RAPPORT_ONLINE_STORE": ""}) as running:
        yield running


def post(server: Server, ws: Workspace, body: object, scope: str = "targets") -> httpx.Response:
    headers = {"Authorization": f"Bearer {ws.keys[scope]}"}
    return httpx.post(f"{server.url}/targets", json=body, headers=headers, timeout=60)


def get(server: Server, ws: Workspace, url: str, scope: str | None = "targets") -> httpx.Response:
    headers = {"Authorization": f"Bearer {ws.keys[scope]}"} if scope else {}
    return httpx.get(f"{server.url}{url}", headers=headers, timeout=60)


def test_targets_over_http(server: Server, ws: Workspace) -> None:
    assert post(server, ws, {"top": 3}, scope="score").status_code == 403
    body = {"filter": "abc_tier in ['A', 'B']", "budget": 50, "max_rows": 10_000}
    response = post(server, ws, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["count"] == len(data["members"]) and data["total_cost"] <= 50
    assert {m["abc_tier"] for m in data["members"]} <= {"A", "B"}
    assert data["run_id"].startswith("sr-") and data["meta"]["models"]["churn"] == "1"
    assert data["download_url"] is None
    bad = post(server, ws, {"filter": "abc_tier = 'A'"})
    assert bad.status_code == 422 and "use '=='" in bad.json()["error"]
    unknown = post(server, ws, {"name": "nope"})
    assert unknown.status_code == 422 and "no saved list" in unknown.json()["error"]


def test_long_lists_come_as_a_download_link(server: Server, ws: Workspace) -> None:
    full = post(server, ws, {"action": "cross_sell", "max_rows": 10_000}).json()
    long = post(server, ws, {"action": "cross_sell", "max_rows": 0})
    assert long.status_code == 200, long.text
    data = long.json()
    url = data["download_url"]
    assert data["members"] is None and data["count"] == full["count"] > 0
    assert url == f"/targets/download?list_id={data['list_id']}&format=parquet"
    # the same key scope as POST /targets, nothing without a key
    assert get(server, ws, url, scope=None).status_code == 401
    assert get(server, ws, url, scope="score").status_code == 403
    response = get(server, ws, url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert f'filename="{data["list_id"]}.parquet"' in response.headers["content-disposition"]
    frame = pd.read_parquet(io.BytesIO(response.content))
    assert frame.customer_id.tolist() == [m["customer_id"] for m in full["members"]]
    assert frame.expected_value.sum() == pytest.approx(data["total_expected_value"])
    # a format asked for: a link for any list, in that format
    small = post(server, ws, {"action": "cross_sell", "top": 5, "format": "csv"}).json()
    assert len(small["members"]) == 5 and small["download_url"].endswith("&format=csv")
    csv = get(server, ws, small["download_url"])
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    back = pd.read_csv(io.StringIO(csv.text), dtype={"customer_id": str})
    assert back.customer_id.tolist() == [m["customer_id"] for m in small["members"]]
    assert get(server, ws, f"/targets/download?list_id={small['list_id']}").status_code == 200
    assert post(server, ws, {"top": 3, "format": "xlsx"}).status_code == 422


def test_download_accepts_list_ids_only(server: Server, ws: Workspace) -> None:
    (ws.home / "exports" / "secret.csv").write_text("customer_id\nC1\n")
    for list_id in ("../warehouse.duckdb", "secret", "..%2F..%2Fetc%2Fpasswd", ""):
        bad = get(server, ws, f"/targets/download?list_id={list_id}")
        assert bad.status_code == 422 and "list_id" in bad.json()["error"]
    assert get(server, ws, "/targets/download").status_code == 422
    unknown = get(server, ws, "/targets/download?list_id=tl-20200101T000000-abcdef")
    assert unknown.status_code == 404 and "no downloadable list" in unknown.json()["error"]
    fmt = get(server, ws, "/targets/download?list_id=tl-20200101T000000-abcdef&format=exe")
    assert fmt.status_code == 422
    assert httpx.post(f"{server.url}/targets/download", timeout=10).status_code in (404, 405)


def test_lists_made_over_http_reach_the_audit_tables(server: Server, ws: Workspace) -> None:
    """POST /targets -> outbox -> ``rapport ingest --outbox`` -> target_lists / members,
    the tables ``rapport targets`` writes, with the same list id and count."""
    from features.warehouse import connect
    from rapport.cli import main
    from rapport.settings import Settings

    body = {"filter": "abc_tier in ['A', 'B']", "budget": 50, "max_rows": 10_000}
    inline = post(server, ws, body).json()
    long = post(server, ws, {"action": "cross_sell", "max_rows": 0}).json()
    with environment(RAPPORT_HOME=str(ws.home)):
        result = CliRunner().invoke(main, ["ingest", "--outbox"])
        assert result.exit_code == 0, result.output
        assert "target lists" in result.output and "incomplete" not in result.output
        again = CliRunner().invoke(main, ["ingest", "--outbox"])  # nothing new: no-op
        assert again.exit_code == 0 and "recorded" not in again.output
    con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
    try:
        db = con.con
        for made in (inline, long):
            row = db.execute(
                "SELECT customers, run_id, total_cost, definition, output FROM target_lists "
                "WHERE list_id = ?",
                [made["list_id"]],
            ).fetchone()
            assert row is not None, made["list_id"]
            assert row[0] == made["count"] and row[1] == made["run_id"]
            assert row[2] == pytest.approx(made["total_cost"])
            members = db.execute(
                "SELECT customer_id, expected_value FROM target_list_members "
                "WHERE list_id = ? ORDER BY rank",
                [made["list_id"]],
            ).fetchall()
            assert len(members) == made["count"]
        assert (
            '"budget": 50.0'
            in db.execute(
                "SELECT definition FROM target_lists WHERE list_id = ?", [inline["list_id"]]
            ).fetchone()[0]
        )
        audited = db.execute(
            "SELECT customer_id FROM target_list_members WHERE list_id = ? ORDER BY rank",
            [inline["list_id"]],
        ).fetchall()
        assert [r[0] for r in audited] == [m["customer_id"] for m in inline["members"]]
        (output,) = db.execute(
            "SELECT output FROM target_lists WHERE list_id = ?", [long["list_id"]]
        ).fetchone()
        assert output.endswith(f"{long['list_id']}.parquet")
    finally:
        con.disconnect()


def published_run(ws: Workspace) -> str:
    from features.tables.snapshots import current
    from rapport.settings import Settings

    return current(Settings(home=ws.home).score_snapshots_dir).name


def test_while_a_writer_holds_the_warehouse_lists_come_from_the_published_run(
    server: Server, ws: Workspace
) -> None:
    """A writer mid-transaction (a scoring run half written: scores rows, no run record)
    holds the warehouse, which no other process may then read: POST /targets still
    answers 200, from the last published run (its features and suppressions, as of that
    run), never from the half-written one; once the writer is gone, from the warehouse."""
    from features.warehouse import connect
    from rapport.settings import Settings

    body = {"action": "cross_sell", "max_rows": 10_000}
    fresh = post(server, ws, body).json()
    assert fresh["features_as_of"] > fresh["scores_as_of"]  # read now from the warehouse
    con = connect(Settings(home=ws.home).warehouse_path)
    try:
        db = con.con
        db.execute("BEGIN TRANSACTION")
        db.execute(
            "INSERT INTO scores BY NAME SELECT * REPLACE ('sr-half-written' AS run_id) "
            "FROM scores WHERE run_id = ?",
            [fresh["run_id"]],
        )
        held = post(server, ws, body)
        db.execute("ROLLBACK")
    finally:
        con.disconnect()
    assert held.status_code == 200, held.text
    data = held.json()
    assert data["run_id"] == fresh["run_id"] == published_run(ws)
    assert data["features_as_of"] == data["scores_as_of"]  # the run's own features
    assert [m["customer_id"] for m in data["members"]] == [
        m["customer_id"] for m in fresh["members"]
    ]
    after = post(server, ws, body).json()
    assert after["features_as_of"] > after["scores_as_of"]


def test_lists_during_a_real_scoring_run_read_one_complete_run(
    server: Server, ws: Workspace
) -> None:
    """`rapport score` in its own process while lists are asked for: every answer is a
    200 naming the run published before or the one it publishes, never anything between,
    and the first list after it ends is from the new run."""
    import subprocess
    import sys

    before = published_run(ws)
    env = {**os.environ, "RAPPORT_HOME": str(ws.home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    writer = subprocess.Popen(
        [sys.executable, "-m", "rapport.cli", "score"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    answers = []
    while writer.poll() is None:
        answers.append(post(server, ws, {"action": "cross_sell", "top": 20}))
    output = writer.stdout.read() if writer.stdout else ""
    assert writer.returncode == 0, output
    after = published_run(ws)
    assert after != before
    assert answers and all(a.status_code == 200 for a in answers), [
        a.text for a in answers if a.status_code != 200
    ]
    assert {a.json()["run_id"] for a in answers} <= {before, after}
    assert post(server, ws, {"action": "cross_sell", "top": 20}).json()["run_id"] == after


def test_expired_downloads_are_pruned_and_nothing_else(tmp_path: Path) -> None:
    from rapport.settings import Settings
    from serving.targets import prune_exports

    settings = Settings(home=tmp_path, export_ttl_hours=1)
    folder = settings.exports_dir
    folder.mkdir(parents=True)
    old = folder / "tl-20261101T100000-abc123.parquet"
    fresh = folder / "tl-20261123T100000-def456.csv"
    mine = folder / "at_risk_high_value.csv"  # a list the user exported by name
    for path in (old, fresh, mine):
        path.write_text("x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(mine, (two_hours_ago, two_hours_ago))
    assert prune_exports(settings) == 1
    assert not old.exists() and fresh.exists() and mine.exists()
    assert prune_exports(settings, now=time.time() + 7200) == 1  # the fresh one, later
    assert mine.exists()
