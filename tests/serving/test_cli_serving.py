"""The serving commands: ``rapport serve / materialize / keys`` and the serving end of
``rapport demo`` (always with ``--no-serve`` semantics here; the printed curl is run
against a real server)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample_data import load_tables, random_tables
from serving_harness import Workspace, free_port, serving

from features.online.events import Outbox
from features.online.store import open_store
from features.warehouse import connect
from rapport.cli import main
from rapport.demo import DemoOptions, prepare_serving
from rapport.settings import Settings, reset_settings
from serving.auth import KeyRing, list_keys


@pytest.mark.parametrize(
    "command", [["serve"], ["materialize"], ["keys"], ["keys", "add"], ["keys", "list"]]
)
def test_serving_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 4


def test_keys_add_prints_the_key_once_and_keeps_its_hash(workspace: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "add", "crm app", "--scopes", "score,events"])
    assert result.exit_code == 0, result.output
    key = result.output.splitlines()[0]
    assert key.startswith("rk_")
    stored = (workspace / "api_keys").read_text()
    assert key not in stored and "# crm app" in stored
    ring = KeyRing.load(None, workspace)
    assert ring.check(f"Bearer {key}", "events").allowed
    assert ring.check(f"Bearer {key}", "feedback").status == 403
    assert [(n, s) for n, _, s in list_keys(workspace)] == [
        ("crm app", frozenset({"score", "events"}))
    ]
    listed = CliRunner().invoke(main, ["keys", "list"])
    assert "crm app" in listed.output and key not in listed.output
    bad = CliRunner().invoke(main, ["keys", "add", "x", "--scopes", "score,root"])
    assert bad.exit_code == 2 and "root" in bad.output


def test_serve_without_champions_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "rapport demo" in result.output and "Traceback" not in result.output


def test_materialize_command(nba_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPPORT_HOME", str(nba_ws.home))
    reset_settings()
    result = CliRunner().invoke(main, ["materialize"])
    assert result.exit_code == 0, result.output
    store = open_store(Settings(home=nba_ws.home).online_store_url)
    try:
        count = store.count()
    finally:
        store.close()
    assert f"{count:,} customer records in" in result.output


def test_demo_serving_step_prints_a_curl_that_works(nba_ws: Workspace, tmp_path: Path) -> None:
    # a copy: the step bundles the registry's champions (no nba) as the latest, which the
    # NBA tests sharing the workspace must not see
    home = tmp_path / "copy"
    shutil.copytree(nba_ws.home, home)
    settings = Settings(home=home)
    said: list[str] = []
    con = connect(settings.warehouse_path)
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPPORT_HOME", str(home))
        reset_settings()
        options = DemoOptions(serve=False, port=port)
        prepare_serving(options, settings, con, said.append, lambda _: None)
    text = "\n".join(said)
    assert "rapport serve" in text and f"http://127.0.0.1:{port}" in text
    (curl,) = [line.strip() for line in said if line.strip().startswith("curl ")]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with serving(home, port=port, env={"RAPPORT_ONLINE_STORE": ""}):
        done = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=30)
    score = json.loads(done.stdout)
    assert score["customer_id"] and score["decision_id"] and score["actions"], done.stdout


def test_ingest_outbox_loads_what_the_service_accepted(workspace: Path) -> None:
    con = connect(workspace / "warehouse.duckdb")
    load_tables(con, {"customers": random_tables(3)["customers"]})
    con.disconnect()
    outbox = Outbox(workspace / "outbox")
    when = datetime.now(UTC) - timedelta(hours=1)
    row = {"order_id": "O-live", "customer_id": "C0001", "ordered_at": when, "amount": 9.5}
    outbox.append("orders", [{**row, "margin": None, "category": None, "channel": "web"}])
    outbox.close()
    assert CliRunner().invoke(main, ["ingest"]).exit_code == 2  # a folder or --outbox
    result = CliRunner().invoke(main, ["ingest", "--outbox"])
    assert result.exit_code == 0, result.output
    con = connect(workspace / "warehouse.duckdb", read_only=True)
    try:
        amounts = con.con.execute("SELECT amount FROM orders WHERE order_id = 'O-live'").fetchall()
    finally:
        con.disconnect()
    assert amounts == [(9.5,)]
    assert not list((workspace / "outbox" / "orders").glob("*.jsonl"))  # moved to done/
