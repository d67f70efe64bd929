"""Online feature store: one opaque JSON record per customer, read and updated while serving.

The scoring service reads a customer's record (attributes plus recent events, built by
:mod:`features.online.record`), and posted events change it through :meth:`OnlineStore.update`,
an atomic read-modify-write, so several threads and worker processes never lose an event.
The store never looks inside a record beyond checking that it is a dict.

Two backends behind one :class:`OnlineStore` protocol, chosen by URL in :func:`open_store`:

* ``sqlite:///path`` (default, one file; ``sqlite:////abs/path`` for an absolute path,
  ``sqlite:///:memory:`` for tests): WAL mode, ``synchronous=FULL`` so a write is on disk
  once the call returns, ``BEGIN IMMEDIATE`` around each update so concurrent processes
  queue on the file lock instead of overwriting each other.
* ``redis://host:port/db``: keys ``rapport:rec:<customer_id>``, metadata in the hash
  ``rapport:meta``, the identifier index in ``rapport:idx:<hash>`` (with the set
  ``rapport:idc:<customer_id>`` of each customer's hashes, for ``rapport forget``),
  updates with WATCH/MULTI/EXEC optimistic retries. Redis acknowledges a write before it is
  on disk unless the server runs with ``appendonly yes`` and ``appendfsync always``;
  :func:`open_store` warns when it can see that it does not.

Besides the records, the store keeps the **identifier index**: the keyed hash of a
normalised identifier (:func:`features.identity.hash_identifier`, never the value) ->
the customer it names, which lets ``/events`` and ``/score`` take an e-mail or a phone
in place of a customer id (:mod:`features.online.identifiers`).

Records are stored as compact ASCII JSON bytes (NaN allowed, as Python's json writes it).
Measured: zlib halves the size but slows a bulk load by 40 %, so records are not compressed.

A record may carry a **stamp** (key :data:`STAMP`, written last): values a writer derived
from the record (:func:`features.online.kept.stamp`: its raw aggregates as of the write),
with the digest of the record's bytes they were derived from (:func:`record_digest`).
:func:`decode_record` drops it, except for an update function (:meth:`OnlineStore.update`),
which gets it when it was made from exactly the bytes read, so a writer stamping the record
again reuses what its change leaves as it was; :func:`stamp_of` reads it (without decoding
the record) only while the digest matches the bytes stored before it, so a stamp never
outlives the record it was made from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import redis

from features.durable import fsync_paths

log = logging.getLogger(__name__)

Record = dict[str, Any]
UpdateFn = Callable[[Record | None], Record]
_T = TypeVar("_T")

#: how long a SQLite writer waits for another process's write lock before failing
BUSY_TIMEOUT_MS = 30_000
#: ids per ``IN (...)`` query / ``MGET``, well under SQLite's variable limit
READ_CHUNK = 900
REDIS_RECORD_PREFIX = "rapport:rec:"
REDIS_META_KEY = "rapport:meta"
REDIS_INDEX_PREFIX = "rapport:idx:"
REDIS_INDEX_OWNER_PREFIX = "rapport:idc:"
#: WATCH/MULTI/EXEC attempts before an update on a very hot key gives up
REDIS_MAX_ATTEMPTS = 200
#: seconds to connect to Redis / to wait for an answer before the store is "unavailable"
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_TIMEOUT_S = 30.0
#: records per MSET in a bulk load (~2.5 MB commands)
REDIS_MSET_SIZE = 1000
#: for new SQLite files: 2-3 records of ~2.5 KB per page instead of one per 4 KB page
SQLITE_PAGE_SIZE = 8192
#: page cache during a bulk load: keeps the primary-key index in memory for unsorted ids
BULK_CACHE_KIB = 256 * 1024

# no circular-reference check: records are trees by contract, and the check costs ~30 %
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
#: the key of a record's stamp (see the module doc): no event table or attribute is named so
STAMP = "~stamp"
#: where the stamp starts in the stored bytes (a quote inside a JSON string is escaped, so
#: these bytes appear only as the top-level key, the last one)
_STAMP_MARK = b',"~stamp":'


@runtime_checkable
class OnlineStore(Protocol):
    """Per-customer records for live scoring; every backend behaves the same."""

    url: str

    def get(self, customer_id: str) -> Record | None:
        """The customer's record, or None when the store has none."""
        ...

    def get_encoded(self, customer_id: str) -> bytes | None:
        """The customer's record as stored (:func:`encode_record`'s bytes, which
        :func:`decode_record` reads), or None: the live scorer keeps what it computed from a
        record under these bytes (:class:`features.online.kept.KeptAggregates`)."""
        ...

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Record]:
        """Records of the ids the store has; missing ids are absent from the result."""
        ...

    def put_many(self, records: Iterable[tuple[str, Record]], batch_size: int = 10_000) -> int:
        """Bulk load (materialize), replacing existing records; returns how many were written.

        Durable once it returns, but a crash in the middle leaves a partial load.
        """
        ...

    def update(self, customer_id: str, fn: UpdateFn) -> Record:
        """Atomically replace a record by ``fn(current or None)``; durable once it returns.

        ``fn`` may be called more than once (Redis retries on conflict), so it must only
        compute the new record. An exception in ``fn`` leaves the record unchanged.
        ``current`` carries the stamp it was stored with (:data:`STAMP`), when made from
        exactly its bytes: ``fn`` stamps the record it returns again
        (:func:`features.online.kept.stamp`, which reuses it) or returns it unchanged; a
        stale stamp is never read (:func:`stamp_of` checks its digest).
        """
        ...

    def delete(self, customer_id: str) -> bool:
        """Remove the customer's record (``rapport forget``); durable once it returns.
        True when there was one."""
        ...

    def get_identifiers(self, keys: Sequence[str]) -> dict[str, str]:
        """The customer each identifier hash names; unknown hashes are absent."""
        ...

    def put_identifiers(self, entries: Iterable[tuple[str, str]], replace: bool = True) -> int:
        """Index ``(hash, customer_id)`` pairs, durably; ``replace=False`` keeps the
        customer a hash already names (a live claim). Returns how many were written."""
        ...

    def delete_identifiers(self, customer_id: str, keys: Sequence[str] = ()) -> int:
        """Remove every hash naming the customer and the hashes ``keys`` (the person's own
        identifiers, which name their cluster when they were merged) for ``rapport
        forget``; returns how many."""
        ...

    def set_meta(self, key: str, value: str) -> None:
        """Store a piece of metadata (feature-set version, materialized_at, ...)."""
        ...

    def get_meta(self, key: str) -> str | None:
        """The metadata value, or None when never set."""
        ...

    def count(self) -> int:
        """How many customer records the store holds."""
        ...

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...


class StoreClosedError(RuntimeError):
    """Raised when a closed store is used (a bug in the caller's lifecycle)."""


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached now (Redis down, a network partition): the caller
    answers "try again" (the service: 503 with Retry-After). The message names no host;
    the cause is chained for the one log line the service writes per outage."""


def _reachable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Redis connection and timeout errors -> :class:`StoreUnavailableError`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError("the online store is unreachable") from exc

    return wrapper


def open_store(url: str) -> OnlineStore:
    """Open the online store named by ``url`` (``sqlite:///...`` or ``redis://...``)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite" and url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return SQLiteStore(url)
    if scheme in ("redis", "rediss"):
        return RedisStore(url)
    raise ValueError(
        f"unsupported online store URL {redact_url(url)!r}: expected "
        "'sqlite:///relative/path.sqlite', 'sqlite:////absolute/path.sqlite', "
        "'sqlite:///:memory:' or 'redis://host:port/db'"
    )


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def encode_record(customer_id: str, record: Record) -> bytes:
    """Compact JSON bytes, the stamp (if any) last; rejects non-dict records and non-str ids
    with the id in the message."""
    if not isinstance(customer_id, str):
        raise TypeError(f"customer_id must be a str, got {type(customer_id).__name__}")
    if not isinstance(record, dict):
        raise TypeError(
            f"record for customer {customer_id!r} must be a dict, got {type(record).__name__}"
        )
    if STAMP in record and next(reversed(record)) != STAMP:
        record = {**_unstamped(record), STAMP: record[STAMP]}
    return _ENCODER.encode(record).encode()


def decode_record(data: bytes, stamped: bool = False) -> Record:
    """Inverse of :func:`encode_record`, without the stamp; with ``stamped``, the stamp
    kept under :data:`STAMP` when it was made from exactly these bytes (what an update
    function gets: a writer stamping the record again reuses it,
    :func:`features.online.kept.stamp`)."""
    record: Record = json.loads(data)
    found = record.pop(STAMP, None)
    if stamped and found is not None and _made_from(data, found):
        record[STAMP] = found
    return record


def _unstamped(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != STAMP} if STAMP in record else record


def _digest(*parts: bytes | memoryview) -> str:
    found = hashlib.blake2b(digest_size=16)
    for part in parts:
        found.update(part)
    return found.hexdigest()


def record_digest(record: Record) -> str:
    """The digest of the record's stored bytes, its stamp aside: what a stamp made from
    this record carries (``"digest"``) for :func:`stamp_of` to check."""
    return _digest(_ENCODER.encode(_unstamped(record)).encode())


def stamp_of(data: bytes) -> dict[str, Any] | None:
    """The stamp of the record stored in ``data``, read without decoding the record, or
    None when it has none or one made from other bytes (changed after it was stamped)."""
    cut = data.rfind(_STAMP_MARK)  # the bytes before it, closed, are the record unstamped
    if cut < 0:
        return None
    try:
        stamp = json.loads(data[cut + len(_STAMP_MARK) : -1])
    except ValueError:  # not a stamp this module wrote
        return None
    return stamp if _made_from(data, stamp, cut) else None


def _made_from(data: bytes, stamp: Any, cut: int | None = None) -> bool:
    """Was ``stamp`` (read from ``data``, its mark at ``cut``) made from these bytes?"""
    cut = data.rfind(_STAMP_MARK) if cut is None else cut
    return (
        cut >= 0
        and isinstance(stamp, dict)
        and stamp.get("digest") == _digest(memoryview(data)[:cut], b"}")
    )


def _batches(items: Iterable[tuple[str, Record]], size: int) -> Iterator[list[tuple[str, bytes]]]:
    """Encoded ``(id, bytes)`` batches of at most ``size`` items (generators welcome)."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield [(cid, encode_record(cid, rec)) for cid, rec in batch]


def _chunks(ids: Sequence[str], size: int = READ_CHUNK) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]


def _apply(customer_id: str, fn: UpdateFn, current: Record | None) -> Record:
    new = fn(current)
    if not isinstance(new, dict):
        raise TypeError(
            f"update function for customer {customer_id!r} returned "
            f"{type(new).__name__}, expected a dict"
        )
    return new


# --------------------------------------------------------------------------- SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (customer_id TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identifiers (key TEXT PRIMARY KEY, customer_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS identifiers_customer ON identifiers (customer_id);
"""


class SQLiteStore:
    """SQLite file (or in-memory) store; one connection per thread, each with its own lock.

    An in-memory database exists only inside its connection, so all threads share one
    connection there and its lock serialises them. Connections of finished threads are
    closed when the next one opens, and none is carried across fork(): a forked worker
    opens its own on first use.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        target = url.removeprefix("sqlite:///")
        self._memory = target == ":memory:"
        self._path = target if self._memory else str(Path(target).expanduser().absolute())
        if not self._memory:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._registry_lock = threading.Lock()
        # (owning thread, connection); the shared in-memory connection has no owner
        self._connections: list[tuple[threading.Thread | None, sqlite3.Connection]] = []
        self._local = threading.local()
        self._shared: tuple[sqlite3.Connection, threading.Lock] | None = None
        self._pid = os.getpid()
        self._closed = False
        with self._connection() as conn:
            conn.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # close() may run on another thread
            )
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"cannot open online store {self._path}: {exc}") from exc
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if not self._memory:
            conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # no-op once the file exists
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        owner = None if self._memory else threading.current_thread()
        with self._registry_lock:
            self._close_connections(lambda thread: thread is not None and not thread.is_alive())
            self._connections.append((owner, conn))
        return conn

    def _close_connections(self, which: Callable[[threading.Thread | None], bool]) -> None:
        """Close the registered connections whose owner matches (caller holds the lock)."""
        for owner, conn in [(o, c) for o, c in self._connections if which(o)]:
            self._connections.remove((owner, conn))
            conn.close()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, locked for the duration of the block."""
        if self._closed:
            raise StoreClosedError(f"online store {self.url} is closed")
        if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use
            self._pid, self._connections = os.getpid(), []
            self._local, self._shared = threading.local(), None
        pair: tuple[sqlite3.Connection, threading.Lock] | None
        pair = self._shared if self._memory else getattr(self._local, "pair", None)
        if pair is None:
            pair = (self._connect(), threading.Lock())
            if self._memory:
                self._shared = pair
            else:
                self._local.pair = pair
        conn, lock = pair
        with lock:
            yield conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, mode: str = "") -> Iterator[None]:
        conn.execute(f"BEGIN {mode}")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def get(self, customer_id: str) -> Record | None:
        data = self.get_encoded(customer_id)
        return None if data is None else decode_record(data)

    def get_encoded(self, customer_id: str) -> bytes | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT record FROM records WHERE customer_id = ?", (customer_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def _select_in(self, sql: str, keys: Sequence[str]) -> list[tuple[Any, Any]]:
        """``sql`` run over ``keys`` in chunks, its ``{marks}`` the chunk's placeholders."""
        rows: list[tuple[Any, Any]] = []
        with self._connection() as conn:
            for chunk in _chunks(keys):
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(sql.format(marks=marks), chunk).fetchall()
        return rows

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Record]:
        rows = self._select_in(
            "SELECT customer_id, record FROM records WHERE customer_id IN ({marks})",
            customer_ids,
        )
        return {cid: decode_record(data) for cid, data in rows}

    def put_many(self, records: Iterable[tuple[str, Record]], batch_size: int = 10_000) -> int:
        """Bulk load in large transactions without fsync, then one fsync at the end."""
        written = 0
        with self._connection() as conn:
            default_cache = conn.execute("PRAGMA cache_size").fetchone()[0]
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
            try:
                for batch in _batches(records, batch_size):
                    with self._transaction(conn):
                        conn.executemany(
                            "INSERT OR REPLACE INTO records (customer_id, record) VALUES (?, ?)",
                            batch,
                        )
                    written += len(batch)
            finally:
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA cache_size={default_cache}")
        if not self._memory:
            fsync_paths(self._path, self._path + "-wal")  # what synchronous=OFF skipped
        return written

    def update(self, customer_id: str, fn: UpdateFn) -> Record:
        batch = getattr(self._local, "batch", None)
        if batch is not None:  # inside this thread's batch(): its transaction commits
            return self._replace(batch, customer_id, fn)
        with self._connection() as conn, self._transaction(conn, "IMMEDIATE"):
            return self._replace(conn, customer_id, fn)

    @staticmethod
    def _replace(conn: sqlite3.Connection, customer_id: str, fn: UpdateFn) -> Record:
        row = conn.execute(
            "SELECT record FROM records WHERE customer_id = ?", (customer_id,)
        ).fetchone()
        new = _apply(customer_id, fn, None if row is None else decode_record(row[0], stamped=True))
        conn.execute(
            "INSERT OR REPLACE INTO records (customer_id, record) VALUES (?, ?)",
            (customer_id, encode_record(customer_id, new)),
        )
        return new

    @contextmanager
    def batch(self) -> Iterator[None]:
        """This thread's :meth:`update` calls inside the block share one transaction (one
        write lock, one fsync): all their records change or, on an exception, none."""
        if getattr(self._local, "batch", None) is not None:
            yield  # already in a batch: the outer one commits
            return
        with self._connection() as conn, self._transaction(conn, "IMMEDIATE"):
            self._local.batch = conn
            try:
                yield
            finally:
                self._local.batch = None

    def delete(self, customer_id: str) -> bool:
        with self._connection() as conn, self._transaction(conn, "IMMEDIATE"):
            gone = conn.execute("DELETE FROM records WHERE customer_id = ?", (customer_id,))
            return gone.rowcount > 0

    def get_identifiers(self, keys: Sequence[str]) -> dict[str, str]:
        return dict(
            self._select_in("SELECT key, customer_id FROM identifiers WHERE key IN ({marks})", keys)
        )

    def put_identifiers(self, entries: Iterable[tuple[str, str]], replace: bool = True) -> int:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        written = 0
        with self._connection() as conn:
            iterator = iter(entries)
            while batch := list(islice(iterator, 10_000)):
                with self._transaction(conn, "IMMEDIATE"):
                    done = conn.executemany(
                        f"{verb} INTO identifiers (key, customer_id) VALUES (?, ?)", batch
                    )
                written += max(done.rowcount, 0)
        return written

    def delete_identifiers(self, customer_id: str, keys: Sequence[str] = ()) -> int:
        with self._connection() as conn, self._transaction(conn, "IMMEDIATE"):
            gone = conn.execute("DELETE FROM identifiers WHERE customer_id = ?", (customer_id,))
            own = conn.executemany("DELETE FROM identifiers WHERE key = ?", [(k,) for k in keys])
            return max(gone.rowcount, 0) + max(own.rowcount, 0)

    def set_meta(self, key: str, value: str) -> None:
        with self._connection() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def count(self) -> int:
        with self._connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def close(self) -> None:
        with self._registry_lock:
            self._closed = True
            if os.getpid() == self._pid:  # else they are the parent's, inherited by fork
                self._close_connections(lambda thread: True)


# --------------------------------------------------------------------------- Redis


class RedisStore:
    """Redis store; redis-py's connection pool is thread-safe and resets itself after fork."""

    def __init__(self, url: str) -> None:
        self.url = url
        # fail fast when the server is gone or hangs, instead of hanging the caller
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
        )
        self._closed = False
        try:
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise ConnectionError(
                f"cannot reach Redis online store {redact_url(url)}: {exc}"
            ) from exc
        self._warn_if_not_durable()

    def __repr__(self) -> str:
        return f"RedisStore({redact_url(self.url)!r})"

    def _warn_if_not_durable(self) -> None:
        """Acknowledged writes survive a crash only with appendonly yes + appendfsync always."""
        try:
            config = self._client.config_get("append*")
        except redis.ResponseError as exc:  # CONFIG disabled on managed servers
            log.info("cannot check durability of Redis %s: %s", redact_url(self.url), exc)
            return
        found = {_text(key): _text(value) for key, value in dict(config).items()}
        if found.get("appendonly") != "yes" or found.get("appendfsync") != "always":
            log.warning(
                "Redis online store %s runs with appendonly=%s appendfsync=%s: acknowledged "
                "writes can be lost in a crash; set 'appendonly yes' and 'appendfsync always'",
                redact_url(self.url),
                found.get("appendonly"),
                found.get("appendfsync"),
            )

    def _client_or_raise(self) -> Any:
        if self._closed:
            raise StoreClosedError(f"online store {redact_url(self.url)} is closed")
        return self._client

    @_reachable
    def get(self, customer_id: str) -> Record | None:
        data = self.get_encoded(customer_id)
        return None if data is None else decode_record(data)

    @_reachable
    def get_encoded(self, customer_id: str) -> bytes | None:
        data = self._client_or_raise().get(REDIS_RECORD_PREFIX + customer_id)
        return None if data is None else bytes(data)

    def _mget(self, prefix: str, keys: Sequence[str], decode: Callable[[Any], _T]) -> dict[str, _T]:
        """MGETs of ``prefix + key`` in chunks: the keys found, with their values decoded."""
        client = self._client_or_raise()
        out: dict[str, _T] = {}
        for chunk in _chunks(keys):
            values = client.mget([prefix + key for key in chunk])
            out.update(
                (key, decode(value))
                for key, value in zip(chunk, values, strict=True)
                if value is not None
            )
        return out

    def _watched(self, key: str, body: Callable[[Any], _T], what: str) -> _T:
        """``body(pipe)`` with ``key`` WATCHed, run again while other writers change it."""
        with self._client_or_raise().pipeline(transaction=True) as pipe:
            for attempt in range(REDIS_MAX_ATTEMPTS):
                try:
                    pipe.watch(key)
                    return body(pipe)
                except redis.WatchError:
                    time.sleep(min(0.001 * attempt, 0.05))  # back off on a hot key
        raise RuntimeError(
            f"{what} in {redact_url(self.url)} kept conflicting "
            f"with other writers ({REDIS_MAX_ATTEMPTS} attempts)"
        )

    @_reachable
    def get_many(self, customer_ids: Sequence[str]) -> dict[str, Record]:
        return self._mget(REDIS_RECORD_PREFIX, customer_ids, decode_record)

    @_reachable
    def put_many(self, records: Iterable[tuple[str, Record]], batch_size: int = 10_000) -> int:
        """MSETs in a pipeline: with appendfsync always, Redis fsyncs once per command batch
        it reads, so one big command costs one fsync where single SETs cost one each."""
        client = self._client_or_raise()
        written = 0
        for batch in _batches(records, batch_size):
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(batch), REDIS_MSET_SIZE):
                chunk = batch[start : start + REDIS_MSET_SIZE]
                pipe.mset({REDIS_RECORD_PREFIX + cid: data for cid, data in chunk})
            pipe.execute()
            written += len(batch)
        return written

    @_reachable
    def update(self, customer_id: str, fn: UpdateFn) -> Record:
        key = REDIS_RECORD_PREFIX + customer_id

        def replace(pipe: Any) -> Record:
            data = pipe.get(key)
            new = _apply(
                customer_id, fn, None if data is None else decode_record(data, stamped=True)
            )
            pipe.multi()
            pipe.set(key, encode_record(customer_id, new))
            pipe.execute()
            return new

        return self._watched(key, replace, f"update of customer {customer_id!r}")

    @_reachable
    def delete(self, customer_id: str) -> bool:
        return bool(self._client_or_raise().delete(REDIS_RECORD_PREFIX + customer_id))

    @_reachable
    def get_identifiers(self, keys: Sequence[str]) -> dict[str, str]:
        return self._mget(REDIS_INDEX_PREFIX, keys, _text)

    @_reachable
    def put_identifiers(self, entries: Iterable[tuple[str, str]], replace: bool = True) -> int:
        """A pipeline of SETs (SET NX for a claim) and SADDs to each customer's set."""
        client = self._client_or_raise()
        written = 0
        iterator = iter(entries)
        while batch := list(islice(iterator, REDIS_MSET_SIZE)):
            pipe = client.pipeline(transaction=False)
            for key, customer_id in batch:
                pipe.set(REDIS_INDEX_PREFIX + key, customer_id, nx=not replace)
                pipe.sadd(REDIS_INDEX_OWNER_PREFIX + customer_id, key)
            results = pipe.execute()
            written += sum(1 for done in results[0::2] if done)
        return written

    @_reachable
    def delete_identifiers(self, customer_id: str, keys: Sequence[str] = ()) -> int:
        """The hashes in the customer's set that still name them (a later load may have
        given one to another customer) and ``keys``, deleted with the set in one
        transaction."""
        owned = REDIS_INDEX_OWNER_PREFIX + customer_id
        given = [REDIS_INDEX_PREFIX + k for k in keys]

        def delete_mine(pipe: Any) -> int:
            listed = [REDIS_INDEX_PREFIX + _text(k) for k in pipe.smembers(owned)]
            owners = pipe.mget(listed) if listed else []
            mine = {
                k
                for k, v in zip(listed, owners, strict=True)
                if v is not None and _text(v) == customer_id
            }
            held = pipe.mget(given) if given else []
            mine |= {k for k, v in zip(given, held, strict=True) if v is not None}
            pipe.multi()
            if mine:
                pipe.delete(*sorted(mine))
            pipe.delete(owned)
            pipe.execute()
            return len(mine)

        return self._watched(owned, delete_mine, "deleting the identifiers of a customer")

    @_reachable
    def set_meta(self, key: str, value: str) -> None:
        self._client_or_raise().hset(REDIS_META_KEY, key, value)

    @_reachable
    def get_meta(self, key: str) -> str | None:
        value = self._client_or_raise().hget(REDIS_META_KEY, key)
        return None if value is None else _text(value)

    @_reachable
    def count(self) -> int:
        """Scans the record keys: O(number of records), fine for reports, not per request."""
        client = self._client_or_raise()
        return sum(1 for _ in client.scan_iter(match=REDIS_RECORD_PREFIX + "*", count=10_000))

    def close(self) -> None:
        self._closed = True
        self._client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
