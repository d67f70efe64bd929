"""One of the service's two workers SIGKILLed under a trickle of ``/events`` (issue 22,
item 5): the sibling keeps answering, the supervisor starts a new worker, no request
hangs (each gets an answer or a connection error at once), every acknowledged event is
in the outbox and the online store, and the requests that got no answer succeed when
resent with the same ids (counted once). Prints the figures."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from serving_harness import Server, Workspace, start_service, stop, wait_ready, workspace_fixture

from features.online.events import OPEN_SUFFIX

pytestmark = pytest.mark.slow

#: a request that takes longer than this hangs (the issue saw 37 s after killing workers)
HANG_S = 10.0
#: how long the trickle goes on after the new worker process started
AFTER_S = 15.0
#: order n is placed at this time + n ms: a resend is the same event, as a client's is
#: (the same id with other content is a conflict, quarantined by ingest)
ORDERED_FROM = datetime.now(UTC) - timedelta(hours=1)


ws = workspace_fixture("workers", customers=600, seed=9)


@pytest.fixture(scope="module")
def server(ws: Workspace) -> Iterator[Server]:
    running = start_service(ws.home, workers=2, env={"RAPPORT_ONLINE_STORE": ""})
    wait_ready(running)
    yield running
    stop(running)


def workers(server: Server) -> set[int]:
    """The pids of the service's worker processes (the supervisor's children that run
    the service)."""
    found = set()
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "worker" in line and "service" in line:
            found.add(child.pid)
    return found


def outbox_ids(home: Path) -> list[str]:
    folder = home / "outbox" / "orders"
    paths = [*folder.glob("*.jsonl"), *folder.glob(f"*{OPEN_SUFFIX}")]
    return [json.loads(line)["order_id"] for p in paths for line in p.read_text().splitlines()]


def send(server: Server, ws: Workspace, n: int) -> tuple[float, str, str, float]:
    """One ``/events`` order on a new connection: (sent at, order id, outcome, seconds).
    The same ``n`` sends the same event."""
    order_id = f"kill-{n}"
    order = {
        "order_id": order_id,
        "customer_id": ws.customers[n % len(ws.customers)],
        "ordered_at": (ORDERED_FROM + timedelta(milliseconds=n)).isoformat(),
        "amount": 5.0,
    }
    headers = {"Authorization": f"Bearer {ws.keys['events']}"}
    start = time.monotonic()
    try:
        response = httpx.post(
            f"{server.url}/events", json={"orders": [order]}, headers=headers, timeout=HANG_S
        )
        outcome = str(response.status_code)
    except httpx.TimeoutException:
        outcome = "timeout"
    except httpx.TransportError as exc:
        outcome = type(exc).__name__
    return start, order_id, outcome, time.monotonic() - start


def test_a_killed_worker_loses_nothing_acknowledged_and_is_replaced(
    server: Server, ws: Workspace
) -> None:
    before = workers(server)
    assert len(before) == 2, before
    results: list[tuple[float, str, str, float]] = []
    done = threading.Event()

    def trickle() -> None:
        n = 0
        while not done.is_set():
            n += 1
            results.append(send(server, ws, n))
            time.sleep(0.02)

    thread = threading.Thread(target=trickle)
    thread.start()
    time.sleep(2.0)
    victim = min(before)
    killed_at = time.monotonic()
    psutil.Process(victim).send_signal(signal.SIGKILL)
    deadline = killed_at + 240
    replaced = None
    while time.monotonic() < deadline and replaced is None:
        time.sleep(0.5)
        now = workers(server)
        if len(now) == 2 and victim not in now:
            replaced = time.monotonic()
    # requests go on while the new worker loads the models and then shares the load
    time.sleep(AFTER_S)
    wait_ready(server)
    done.set()
    thread.join(timeout=60)

    assert replaced is not None, f"no new worker within 240 s: {workers(server)}"
    outcomes = [r[2] for r in results]
    assert "timeout" not in outcomes, [r for r in results if r[2] == "timeout"]
    assert set(outcomes) <= {"200", "RemoteProtocolError", "ReadError", "ConnectError"}, set(
        outcomes
    )
    after = [r for r in results if r[0] >= killed_at]
    unanswered = [r for r in results if r[2] != "200"]
    # only what was in flight on the killed worker goes unanswered: the sibling serves
    assert len(unanswered) <= 2, unanswered
    assert sum(r[2] == "200" for r in after) >= 10

    acked = {r[1] for r in results if r[2] == "200"}
    in_outbox = outbox_ids(ws.home)
    assert acked <= set(in_outbox)
    # the client's recovery: resend what got no answer, with the same ids
    for _, order_id, _, _ in unanswered:
        n = int(order_id.removeprefix("kill-"))
        assert send(server, ws, n)[2] == "200"
    from features.online.store import open_store
    from rapport.settings import Settings

    store = open_store(Settings(home=ws.home).online_store_url)
    try:
        records = store.get_many(sorted(set(ws.customers)))
    finally:
        store.close()
    sent = {r[1] for r in results}
    held: list[str] = []
    for record in records.values():
        held += [i for i in record["orders"]["order_id"] if str(i).startswith("kill-")]
    assert sorted(held) == sorted(sent)  # every event once, acknowledged or resent
    # and the warehouse: the live workers seal their segments when the service stops;
    # ingest seals the killed worker's open segment itself (its process is gone)
    orphaned = [
        line
        for path in (ws.home / "outbox" / "orders").glob(f"*-{victim}-*{OPEN_SUFFIX}")
        for line in path.read_text().splitlines()
    ]
    stop(server)
    from click.testing import CliRunner
    from serving_harness import environment

    from features.warehouse import connect
    from rapport.cli import main

    with environment(RAPPORT_HOME=str(ws.home)):
        loaded = CliRunner().invoke(main, ["ingest", "--outbox"])
        assert loaded.exit_code == 0, loaded.output
        con = connect(Settings(home=ws.home).warehouse_path, read_only=True)
        try:
            rows = con.con.execute(
                "SELECT order_id FROM orders WHERE order_id LIKE 'kill-%'"
            ).fetchall()
        finally:
            con.disconnect()
    missing = sent - {r[0] for r in rows}
    files = sorted(str(p.relative_to(ws.home)) for p in (ws.home / "outbox").rglob("*"))
    assert not missing, (sorted(missing), victim, len(orphaned), files, loaded.output)
    slowest = max(r[3] for r in results)
    print(
        f"\nworker {victim} SIGKILLed with {len(results)} /events requests in the run: "
        f"{len(unanswered)} unanswered (connection dropped, resent: 200), "
        f"{sum(r[2] == '200' for r in after)} answered 200 after the kill, slowest request "
        f"{slowest:.2f} s, new worker up {replaced - killed_at:.1f} s after the kill; "
        f"{len(acked)} acknowledged events all in the outbox, the store and (after ingest) "
        f"the warehouse ({len(orphaned)} of them in the killed worker's open segment)"
    )
