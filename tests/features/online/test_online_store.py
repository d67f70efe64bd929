"""Online store backends: same behaviour on SQLite (file and memory) and Redis.

The Redis tests start their own ``redis-server`` (AOF on, fsync always) on a free port in
a temporary folder and stop it afterwards; without ``redis-server`` on PATH they fail.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from redis_harness import RedisServer, free_port

from features.online.store import (
    READ_CHUNK,
    REDIS_META_KEY,
    REDIS_RECORD_PREFIX,
    OnlineStore,
    SQLiteStore,
    StoreClosedError,
    decode_record,
    open_store,
)

FORK = mp.get_context("fork")
WORKERS, INCREMENTS = 4, 50


def _url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite-file":
        return f"sqlite:///{tmp_path / 'online.sqlite'}"
    if kind == "sqlite-memory":
        return "sqlite:///:memory:"
    server: RedisServer = request.getfixturevalue("redis_server")
    with server.client() as client:
        client.flushall()
    return server.url


ALL = ["sqlite-file", "sqlite-memory", pytest.param("redis", marks=pytest.mark.redis)]
SHARED = ["sqlite-file", pytest.param("redis", marks=pytest.mark.redis)]  # across processes


@pytest.fixture(params=ALL)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    opened = open_store(_url(request.param, tmp_path, request))
    yield opened
    opened.close()


@pytest.fixture(params=SHARED)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request.param, tmp_path, request)


def _record(i: int) -> dict[str, Any]:
    """A record shaped like features.online.record's: attributes plus columnar events."""
    return {
        "customer": {"customer_id": f"C{i}", "signup_at": 1_700_000_000_000_000 + i,
                     "region": "nörth ☃", "email_opt_in": True, "sms_opt_in": None},
        "orders": {"order_id": [f"O{i}-1", f"O{i}-2"],
                   "ordered_at": [1_710_000_000_123_456, 1_720_000_000_654_321],
                   "amount": [12.5, -3.25], "category": ["books", None]},
        "interactions": {"interaction_id": [], "occurred_at": []},
    }  # fmt: skip


def _increment(record: dict[str, Any] | None) -> dict[str, Any]:
    record = record or {"n": 0}
    record["n"] += 1
    return record


def _increment_many(url: str, store: OnlineStore | None) -> None:
    """A worker: the store inherited through fork, or its own when None."""
    own = store is None
    store = open_store(url) if store is None else store
    for _ in range(INCREMENTS):
        store.update("hot", _increment)
    if own:
        store.close()


# --------------------------------------------------------------------------- both backends


def test_round_trip(store: OnlineStore) -> None:
    assert store.get("C1") is None
    assert store.put_many([("C1", _record(1)), ("C2", _record(2))]) == 2
    assert store.get("C1") == _record(1)
    assert store.get("C2") == _record(2)
    assert store.count() == 2
    # the stored bytes: what the live scorer keeps aggregates under (features.online.kept)
    assert store.get_encoded("C3") is None
    encoded = store.get_encoded("C1")
    assert isinstance(encoded, bytes) and decode_record(encoded) == _record(1)
    store.update("C1", lambda record: {**(record or {}), "orders": {}})
    assert store.get_encoded("C1") != encoded  # changed record, other bytes


def test_delete_removes_one_record_and_says_whether_it_was_there(store: OnlineStore) -> None:
    store.put_many([("c1", {"a": 1}), ("c2", {"a": 2})])
    assert store.delete("c1") is True
    assert store.get("c1") is None and store.get("c2") == {"a": 2}
    assert store.delete("c1") is False and store.count() == 1


def test_put_many_streams_batches_and_replaces(store: OnlineStore) -> None:
    written = store.put_many(((f"C{i}", _record(i)) for i in range(25)), batch_size=7)
    assert written == 25
    replaced = {**_record(20), "replaced": True}
    store.put_many([("C20", replaced), ("C99", _record(99))], batch_size=1)
    assert store.count() == 26
    assert store.get("C20") == replaced
    assert store.get("C19") == _record(19)


def test_identifier_index_puts_claims_reads_and_forgets(store: OnlineStore) -> None:
    assert store.put_identifiers([("h1", "C1"), ("h2", "C1"), ("h3", "C2")]) == 3
    assert store.get_identifiers(["h1", "h3", "h9"]) == {"h1": "C1", "h3": "C2"}
    # a live claim keeps the customer a hash already names; a load replaces it
    assert store.put_identifiers([("h3", "C9"), ("h4", "C9")], replace=False) == 1
    assert store.get_identifiers(["h3", "h4"]) == {"h3": "C2", "h4": "C9"}
    store.put_identifiers([("h2", "C2")])
    assert store.get_identifiers(["h2"]) == {"h2": "C2"}
    # forget: every hash naming C1 (h2 now names C2), nobody else's; the records untouched
    store.put_many([("C1", {"a": 1})])
    assert store.delete_identifiers("C1") == 1
    assert store.get_identifiers(["h1", "h2", "h3", "h4"]) == {"h2": "C2", "h3": "C2", "h4": "C9"}
    assert store.delete_identifiers("C1") == 0 and store.get("C1") == {"a": 1}
    assert store.delete_identifiers("C2") == 2
    assert store.get_identifiers(["h2", "h3", "h4"]) == {"h4": "C9"}
    # a merged person's own hashes name their cluster: forgetting them names those too
    store.put_identifiers([("h5", "K1"), ("h6", "K1"), ("h7", "C5")])
    assert store.delete_identifiers("C5", ["h5", "h8"]) == 2
    assert store.get_identifiers(["h4", "h5", "h6", "h7"]) == {"h4": "C9", "h6": "K1"}


def test_put_many_rejects_non_dict_naming_the_customer(store: OnlineStore) -> None:
    with pytest.raises(TypeError, match=r"'C7'.*list"):
        store.put_many([("C6", _record(6)), ("C7", [1, 2])])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        store.put_many([("C1", _record(1))], batch_size=0)


def test_get_many_returns_present_ids_only(store: OnlineStore) -> None:
    n = READ_CHUNK + 100  # more ids than one query takes
    store.put_many((f"C{i}", _record(i)) for i in range(n))
    wanted = [f"C{i}" for i in range(0, n + 50, 2)] + ["C0", "nobody"]
    got = store.get_many(wanted)
    assert set(got) == {f"C{i}" for i in range(0, n, 2)}
    assert got["C42"] == _record(42)
    assert store.get_many([]) == {}


def test_update_creates_then_modifies(store: OnlineStore) -> None:
    seen: list[list[int] | None] = []

    def add_order(record: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(None if record is None else list(record["orders"]))
        new = record or {"orders": []}
        new["orders"].append(len(new["orders"]))
        return new

    assert store.update("C1", add_order) == {"orders": [0]}
    assert store.update("C1", add_order) == {"orders": [0, 1]}
    assert seen == [None, [0]]
    assert store.get("C1") == {"orders": [0, 1]}
    assert store.count() == 1


def test_failed_update_leaves_record_unchanged(store: OnlineStore) -> None:
    store.put_many([("C1", _record(1))])

    def boom(record: dict[str, Any] | None) -> dict[str, Any]:
        raise ValueError("bad event")

    with pytest.raises(ValueError, match="bad event"):
        store.update("C1", boom)
    with pytest.raises(TypeError, match=r"'C1'.*list"):
        store.update("C1", lambda record: [record])  # type: ignore[arg-type, return-value]
    assert store.get("C1") == _record(1)
    assert store.update("C1", _increment_or_set)["n"] == 1  # no transaction left open


def _increment_or_set(record: dict[str, Any] | None) -> dict[str, Any]:
    return {**(record or {}), "n": (record or {}).get("n", 0) + 1}


def test_meta(store: OnlineStore) -> None:
    assert store.get_meta("feature_set_version") is None
    store.set_meta("feature_set_version", "v1")
    store.set_meta("materialized_at", "2024-05-01T00:00:00+00:00")
    store.set_meta("feature_set_version", "v2")
    assert store.get_meta("feature_set_version") == "v2"
    assert store.get_meta("materialized_at") == "2024-05-01T00:00:00+00:00"
    assert store.count() == 0  # metadata is not a customer


def test_concurrent_thread_updates_lose_nothing(store: OnlineStore) -> None:
    threads = [threading.Thread(target=_increment_many, args=("", store)) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = store.get("hot")
    assert record is not None and record["n"] == WORKERS * INCREMENTS


def test_concurrent_process_updates_lose_nothing(shared_url: str) -> None:
    parent = open_store(shared_url)
    parent.put_many([("other", _record(0))])  # the parent has used its connection
    # half the workers open their own store, half use the one inherited through fork
    procs = [
        FORK.Process(target=_increment_many, args=(shared_url, parent if i % 2 else None))
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0] * WORKERS
    record = parent.get("hot")
    assert record is not None and record["n"] == WORKERS * INCREMENTS
    assert parent.count() == 2
    parent.close()


def test_closed_store_refuses_use(store: OnlineStore) -> None:
    store.close()
    with pytest.raises(StoreClosedError, match="closed"):
        store.get("C1")


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    ["postgres://db/rapport", "sqlite://relative.sqlite", "sqlite:///", "online.sqlite", ""],
)
def test_bad_url_names_the_supported_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported online store URL.*sqlite:///.*redis://"):
        open_store(url)


def test_bad_url_message_hides_password() -> None:
    with pytest.raises(ValueError) as err:
        open_store("mysql://rapport:s3cret@db:3306/x")
    assert "s3cret" not in str(err.value)
    assert "rapport:***@db" in str(err.value)


def test_unreachable_redis_fails_at_open() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectionError, match=f"cannot reach Redis.*{port}"):
        open_store(f"redis://127.0.0.1:{port}/0")


def test_relative_sqlite_path_is_resolved_and_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///sub/dir/online.sqlite")
    store.put_many([("C1", _record(1))])
    monkeypatch.chdir("/")
    found: list[dict[str, Any] | None] = []
    reader = threading.Thread(target=lambda: found.append(store.get("C1")))
    reader.start()
    reader.join()
    assert found == [_record(1)]  # a new thread's connection opens the same absolute path
    store.close()
    assert (tmp_path / "sub" / "dir" / "online.sqlite").is_file()


# --------------------------------------------------------------------------- SQLite


def test_sqlite_file_is_wal_and_full_sync_after_bulk_load(tmp_path: Path) -> None:
    path = tmp_path / "online.sqlite"
    store = open_store(f"sqlite:///{path}")
    assert isinstance(store, SQLiteStore)
    store.put_many((f"C{i}", _record(i)) for i in range(50))
    with store._connection() as conn:  # the pragma is per connection: ask the store's own
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 50


def test_sqlite_forked_child_does_not_reuse_parent_connection(tmp_path: Path) -> None:
    """SQLite connections must not cross fork(): a worker forked from a loaded app reconnects."""
    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    assert isinstance(store, SQLiteStore)
    with store._connection() as conn:
        parent_conn = conn

    def child() -> None:
        with store._connection() as conn:
            os._exit(0 if conn is not parent_conn else 1)

    proc = FORK.Process(target=child)
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 0
    store.close()


def _write_then_wait(url: str, done: Connection) -> None:
    store = open_store(url)
    store.put_many((f"C{i}", _record(i)) for i in range(100))
    store.update("C1", _increment_or_set)
    store.set_meta("materialized_at", "now")
    done.send("written")
    time.sleep(60)  # killed long before this ends


def test_sqlite_acknowledged_writes_survive_kill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'online.sqlite'}"
    receiver, sender = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=_write_then_wait, args=(url, sender))
    proc.start()
    assert receiver.poll(timeout=30), "the writer process never reported back"
    assert receiver.recv() == "written"
    os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    proc.join(timeout=10)
    assert proc.exitcode == -signal.SIGKILL
    store = open_store(url)
    assert store.count() == 100
    assert store.get("C1") == {**_record(1), "n": 1}
    assert store.get_meta("materialized_at") == "now"
    store.close()


# --------------------------------------------------------------------------- Redis


@pytest.mark.redis
def test_redis_layout(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    store.put_many([("C1", _record(1))])
    store.set_meta("feature_set_version", "v3")
    with redis_server.client() as client:
        assert client.exists(f"{REDIS_RECORD_PREFIX}C1") == 1
        assert client.hget(REDIS_META_KEY, "feature_set_version") == b"v3"
    store.close()


@pytest.mark.redis
def test_redis_acknowledged_writes_survive_server_kill(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.flushall()
    store = open_store(redis_server.url)
    store.put_many((f"C{i}", _record(i)) for i in range(100))
    store.update("C1", _increment_or_set)
    store.set_meta("materialized_at", "now")
    store.close()
    redis_server.kill()
    redis_server.start()  # replays the AOF
    store = open_store(redis_server.url)
    assert store.count() == 100
    assert store.get("C1") == {**_record(1), "n": 1}
    assert store.get_meta("materialized_at") == "now"
    store.close()


@pytest.mark.redis
def test_redis_warns_unless_fsync_always(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="features.online.store"):
        open_store(redis_server.url).close()
        assert caplog.records == []
        with redis_server.client() as client:
            client.config_set("appendfsync", "everysec")
            try:
                open_store(redis_server.url).close()
            finally:
                client.config_set("appendfsync", "always")
    assert len(caplog.records) == 1
    assert "appendfsync=everysec" in caplog.text and "appendfsync always" in caplog.text
