"""Each batch writer of the live data SIGKILLed at several moments (issue 22, item 1):
``rapport ingest --outbox`` and ``rapport materialize`` in their own processes, killed
and checked in turn against the ids the service acknowledged. After every kill the
online store holds every acknowledged event and the warehouse holds each at most once;
after the commands are run again to the end, the warehouse holds each sealed one exactly
once. Then ``rapport materialize`` under a running service, stopped after each step of
the load while ``/events`` acknowledges events and killed at each step in turn: the
service finishes the killed load, so its live view holds every acknowledged event.
(The cycle's kill tests are in ``tests/training/test_cycle.py``, a killed service
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

import httpx
import pytest
from serving_harness import Workspace, serving, workspace_fixture

pytestmark = pytest.mark.slow

#: seconds after a writer opened its target at which it is killed
KILL_AFTER = (0.0, 0.05, 0.2, 0.5)


ws = workspace_fixture("killwriters", customers=600, seed=13)


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


def warehouse_ids(home: Path, like: str = "ack-%") -> list[str]:
    from features.warehouse import connect
    from rapport.settings import Settings

    con = connect(Settings(home=home).warehouse_path)  # read-write: replays a killed WAL
    try:
        rows = con.con.execute("SELECT order_id FROM orders WHERE order_id LIKE ?", [like])
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


# --------------------------------------------------------------------------- step by step
#: the steps of a load of the online store, in order, after each of which the load below
#: stops itself: its watermark kept, half the records written, all written, the events
#: acknowledged meanwhile replayed, the store's metadata stamped
STEPS = ("watermark", "half", "written", "replayed", "stamped")
#: customers in the load's batches: "half" comes after three committed batches
HALF = 300


def stepped_materialize() -> None:
    """``rapport materialize``, stopping itself (SIGSTOP, after printing the step's name)
    after each of :data:`STEPS`, so the test acknowledges events and kills it at exact
    points. Run in its own process by :func:`load_by_steps`."""
    import features.online.materialize as load
    from features.online.store import SQLiteStore
    from rapport.cli import main

    def pause(step: str) -> None:
        print(step, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)

    begin, replay, end, put_many = (
        load.begin_load,
        load.replay_since,
        load.end_load,
        SQLiteStore.put_many,
    )

    def begin_load(*args: object, **kwargs: object) -> object:
        mark = begin(*args, **kwargs)  # type: ignore[arg-type]
        pause("watermark")
        return mark

    def stepped_put_many(self: SQLiteStore, records: object, batch_size: int = 100) -> int:
        def halted() -> object:
            for n, item in enumerate(records):  # type: ignore[attr-defined]
                if n == HALF:  # pulled between two batches: no transaction open
                    pause("half")
                yield item

        return put_many(self, halted(), batch_size=100)  # type: ignore[arg-type]

    def replay_since(*args: object, **kwargs: object) -> int:
        pause("written")
        applied = replay(*args, **kwargs)  # type: ignore[arg-type]
        pause("replayed")
        return applied

    def end_load(*args: object, **kwargs: object) -> None:
        pause("stamped")
        end(*args, **kwargs)  # type: ignore[arg-type]

    load.begin_load, load.replay_since, load.end_load = begin_load, replay_since, end_load  # type: ignore[assignment]
    SQLiteStore.put_many = stepped_put_many  # type: ignore[assignment,method-assign]
    main(["materialize"])


def load_by_steps(home: Path, kill_at: str, at_step: object) -> str:
    """Run :func:`stepped_materialize`; at each step call ``at_step(step)`` while the load
    is stopped, then let it go on, or SIGKILL it at ``kill_at``. Returns how it ended."""
    tests = Path(__file__).resolve().parents[1]
    code = (
        f"import sys; sys.path[:0] = [{str(tests)!r}, {str(tests / 'serving')!r}]; "
        "import test_kill_writers; test_kill_writers.stepped_materialize()"
    )
    env = {**os.environ, "RAPPORT_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        for step in STEPS:
            line = proc.stdout.readline().decode().strip()
            assert line == step, (line, proc.stderr.read().decode()[-3000:] if not line else "")
            while _state(proc.pid) != "T":  # stopped itself
                time.sleep(0.005)
            at_step(step)  # type: ignore[operator]
            if step == kill_at:
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(timeout=60) == -signal.SIGKILL
                return f"killed after {step}"
            proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
        return "finished"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]


def watermarks(home: Path) -> list[Path]:
    """The watermarks of loads not finished (features.online.events.begin_load)."""
    return list((home / "outbox" / "loads").glob("*.json"))


ws_live = workspace_fixture("killload", customers=600, seed=17)


def test_a_load_killed_at_any_step_leaves_every_acknowledged_event_live(
    ws_live: Workspace,
) -> None:
    """Found by issue 22: ``rapport materialize`` replaced the records of customers whose
    events ``/events`` acknowledged during the load, and a load killed before its replay
    lost those events from the live view until the next load."""
    home = ws_live.home
    customers = sorted(set(ws_live.customers))
    acked: set[str] = set()
    figures: list[str] = []
    headers = {"Authorization": f"Bearer {ws_live.keys['events']}"}
    env = {"RAPPORT_RELOAD_SECONDS": "0.3"}

    with serving(home, env=env) as server, httpx.Client(base_url=server.url) as client:

        def post_events(step: str) -> None:
            # customers the load wrote already and customers it has still to write
            for n in range(0, len(customers), 25):
                order_id = f"live-{len(acked)}"
                order = {
                    "order_id": order_id,
                    "customer_id": customers[n],
                    "ordered_at": datetime.now(UTC).isoformat(),
                    "amount": 7.5,
                }
                response = client.post(
                    "/events", json={"orders": [order]}, headers=headers, timeout=60
                )
                assert response.status_code == 200, response.text
                acked.add(order_id)

        for kill_at in STEPS:
            ended = load_by_steps(home, kill_at, post_events)
            lost = first = len(acked - store_ids(home, customers))
            deadline = time.monotonic() + 60  # the service finishes the killed load
            while time.monotonic() < deadline and (watermarks(home) or lost):
                time.sleep(0.2)
                lost = len(acked - store_ids(home, customers))
            missing = acked - store_ids(home, customers)
            assert not missing, (kill_at, len(missing), sorted(missing)[:5])
            assert not watermarks(home), kill_at
            figures.append(f"{ended}: {first} of {len(acked)} missing, then 0")
        # and a load to its end keeps them all, with no watermark left behind
        assert load_by_steps(home, "", post_events) == "finished"
        assert acked <= store_ids(home, customers)
        assert not watermarks(home)
        assert "online-store load died" in server.log_text()

    # the service stopped (its segments sealed): the warehouse takes each exactly once
    assert run(home, ["ingest", "--outbox"]) == 0
    loaded = warehouse_ids(home, "live-%")
    assert sorted(loaded) == sorted(acked)
    print("\n" + "; ".join(figures))
