"""Each batch writer of the live data SIGKILLed at several moments (issue 22, item 1):
``rapport ingest --outbox`` and ``rapport materialize`` in their own processes, killed
and checked in turn against the ids the service acknowledged. After every kill the
online store holds every acknowledged event and the warehouse holds each at most once;
after the commands are run again to the end, the warehouse holds each sealed one exactly
once. (The cycle's kill tests are in ``tests/training/test_cycle.py``, a killed service
worker in ``test_worker_death.py``, a killed snapshot publisher in
``tests/features/test_snapshots.py``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from serving_harness import Workspace, prepare_workspace

pytestmark = pytest.mark.slow

#: seconds after a writer opened its target at which it is killed
KILL_AFTER = (0.0, 0.05, 0.2, 0.5)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return prepare_workspace(tmp_path_factory.mktemp("killwriters"), customers=600, seed=13)


def run(home: Path, args: list[str], kill: tuple[Path, float] | None = None) -> int:
    """Run a CLI command; with ``kill`` (a file, seconds), SIGKILL it that long after it
    opened the file (the warehouse it writes, the store it loads): mid-write."""
    env = {**os.environ, "RAPPORT_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rapport.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if kill is not None:
        target, after = kill
        while proc.poll() is None and not _holds(proc.pid, target):
            time.sleep(0.005)
        time.sleep(after)
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=600)


def _holds(pid: int, path: Path) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


def store_ids(home: Path, customers: list[str]) -> set[str]:
    from features.online.store import open_store
    from rapport.settings import Settings

    store = open_store(Settings(home=home).online_store_url)
    try:
        records = store.get_many(customers)
    finally:
        store.close()
    return {str(i) for r in records.values() for i in r["orders"]["order_id"]}


def warehouse_ids(home: Path) -> list[str]:
    from features.warehouse import connect
    from rapport.settings import Settings

    con = connect(Settings(home=home).warehouse_path)  # read-write: replays a killed WAL
    try:
        rows = con.con.execute("SELECT order_id FROM orders WHERE order_id LIKE 'ack-%'")
        return [r[0] for r in rows.fetchall()]
    finally:
        con.disconnect()


def test_killed_writers_leave_the_old_or_the_new_state(ws: Workspace) -> None:
    from features.online.events import Outbox, apply_events
    from features.online.store import open_store
    from rapport.settings import Settings

    settings = Settings(home=ws.home)
    customers = sorted(set(ws.customers))
    now = datetime.now(UTC)

    def order(n: int) -> dict[str, object]:
        return {
            "order_id": f"ack-{n}",
            "customer_id": customers[n % len(customers)],
            "ordered_at": now - timedelta(hours=1 + n % 48),
            "amount": 12.5,
        }

    store = open_store(settings.online_store_url)
    sealed, running = Outbox(settings.outbox_dir), Outbox(settings.outbox_dir)
    try:
        for n in range(300):  # a past segment the service sealed: ingest loads it
            apply_events(store, sealed, {"orders": [order(n)]})
        sealed.close()
        for n in range(300, 400):  # the running service's open segment: ingest waits
            apply_events(store, running, {"orders": [order(n)]})
    finally:
        store.close()
    acked = {f"ack-{n}" for n in range(400)}
    loads = {f"ack-{n}" for n in range(300)}

    outcomes = []
    targets = {"ingest": settings.warehouse_path, "materialize": ws.home / "online.sqlite"}
    for delay in KILL_AFTER:
        for command in (["ingest", "--outbox"], ["materialize"]):
            code = run(ws.home, command, kill=(targets[command[0]], delay))
            assert code in (-signal.SIGKILL, 0), (command, code)
            outcomes.append(f"{command[0]} at {delay} s: {'killed' if code else 'finished'}")
            missing = acked - store_ids(ws.home, customers)
            assert not missing, (command, delay, sorted(missing)[:5])
            loaded = warehouse_ids(ws.home)
            assert len(loaded) == len(set(loaded)) and set(loaded) <= loads, (command, delay)

    assert run(ws.home, ["ingest", "--outbox"]) == 0
    assert run(ws.home, ["materialize"]) == 0
    assert sorted(warehouse_ids(ws.home)) == sorted(loads)
    assert acked <= store_ids(ws.home, customers)
    running.close()
    print("\n" + "; ".join(outcomes))
