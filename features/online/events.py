"""Live writes: events, decisions and feedback, durable before the service answers.

Every write goes to two places, in this order:

1. the **outbox** (``<home>/outbox/<table>/*.jsonl``): JSON lines in the contract's
   columns, flushed and fsync'ed before the call returns, picked up by ``rapport ingest``
   (:func:`features.outbox_ingest.ingest_outbox`), so nothing acknowledged is lost on the way to
   the warehouse;
2. the customer's **online record** (:mod:`features.online.store`), through the store's
   atomic ``update``, so the next ``/score`` sees the event (read-your-writes).

If step 2 fails after step 1 (the online store went down), the lines are taken back out
of the still open outbox segment (:meth:`Outbox.retract`) and the caller gets an error
(the service: 503), so a refused event never reaches the warehouse; the caller retries
with the same ids, which ingest collapses (same id, same content) and the record, which
skips ids it already holds, takes once.

Outbox files are *segments*: each process appends to its own
``<table>/<time>-<host>-<pid>-<n>.jsonl.open`` and renames it to ``.jsonl`` ("seals" it)
when it is older than ``seal_after`` seconds, larger than ``max_bytes``, or the service
stops. Ingest reads sealed files only, so it never sees a half-written one. Segments left
open by a process that died are sealed by the next service start on the same host
(:func:`recover_segments`), minus a torn last line, which was never acknowledged.

Decisions (``/score``) are the exception: they are written *behind* the answer by a
:class:`DecisionBuffer` (group commit: one outbox fsync and one record update per customer
for every decision gathered while the previous write ran), because two fsyncs per score
cost more than the whole score. A customer's next score waits for their pending decisions
(read-your-writes of the contact policy holds); a crash can lose the decisions of the last
few milliseconds, never an event.

A load of the online store (``rapport materialize``, the cycle) replaces records from the
warehouse while the service keeps acknowledging events. It first keeps the outbox's
position (:func:`begin_load`: a :class:`Watermark` in ``outbox/loads/``), merges what the
outbox holds into each record it writes, then replays what was acknowledged after the
watermark (:func:`replay_since`) and drops it (:func:`end_load`). A load killed before
that leaves its watermark, and :func:`recover_loads` (the service every few seconds, the
next load at its end) replays from it, so the live view never goes back.

Feedback goes to ``outbox/feedback/*.jsonl`` only: ``{decision_id, outcome, revenue,
responded_at, recorded_at}``, rows of the outcomes contract
(:data:`features.contract.OUTCOMES`) that ``rapport ingest --outbox`` turns into versions
of the decision's outcome (:mod:`features.tables.outcomes`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.batch import micros
from features.contract import TABLES
from features.durable import fsync_paths, pid_alive, replace_durably
from features.online.kept import stamp
from features.online.record import Record, append_events, counted, record_columns
from features.online.store import STAMP, redact_url
from features.spec import FeatureSpec, default_spec
from features.tables.feature_samples import FEATURE_SAMPLES, encode
from features.tables.outcomes import FEEDBACK
from features.timeutil import as_utc

OPEN_SUFFIX = ".jsonl.open"
SEALED_SUFFIX = ".jsonl"
#: the UTC time that starts the names of segments and load watermarks (they sort by it)
TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"
#: seal segments this old (seconds): how long an event may wait for ``rapport ingest``
SEAL_AFTER_S = 30.0
#: and this large (bytes)
MAX_SEGMENT_BYTES = 64 * 1024 * 1024


class UnknownCustomerError(LookupError):
    """Events or decisions for customers the online store does not know."""

    def __init__(self, customer_ids: Sequence[str]) -> None:
        self.customer_ids = list(customer_ids)
        shown = ", ".join(repr(c) for c in self.customer_ids[:10])
        more = f" and {len(self.customer_ids) - 10} more" if len(self.customer_ids) > 10 else ""
        super().__init__(f"unknown customer(s) {shown}{more}")


class ConflictError(ValueError):
    """An event id already known with different content (the warehouse would quarantine it)."""


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json_line(row: Mapping[str, Any]) -> bytes:
    """One outbox line: timestamps as ISO 8601 UTC (microseconds kept), NaN as null."""
    clean = {k: _json_value(v) for k, v in row.items()}
    return (json.dumps(clean, separators=(",", ":"), allow_nan=False) + "\n").encode()


# --------------------------------------------------------------------------- outbox
@dataclass
class _Segment:
    path: Path
    handle: Any
    opened: float
    size: int = 0


@dataclass(frozen=True)
class Mark:
    """Where one append went: its segment and byte range."""

    table: str
    path: Path
    start: int
    end: int


class Outbox:
    """Append-only JSON-lines segments per table, owned by this process.

    ``append`` returns once the lines are on disk (write, flush, fsync). Thread-safe; each
    worker process has its own segments (the pid is in the name).
    """

    def __init__(
        self,
        root: Path,
        seal_after: float = SEAL_AFTER_S,
        max_bytes: int = MAX_SEGMENT_BYTES,
    ) -> None:
        self.root = Path(root)
        self.seal_after = seal_after
        self.max_bytes = max_bytes
        self._segments: dict[str, _Segment] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._owner = f"{_host()}-{os.getpid()}"

    def append(
        self, table: str, rows: Sequence[Mapping[str, Any]], seal: bool = True
    ) -> Mark | None:
        """Durably append ``rows`` (contract columns) to ``table``'s current segment.

        ``seal=False`` keeps the segment open even when it is due, so that :meth:`retract`
        can still take the lines back (the periodic :meth:`seal` closes it later)."""
        if not rows:
            return None
        data = b"".join(to_json_line(r) for r in rows)
        with self._lock:
            segment = self._segments.get(table) or self._open(table)
            mark = Mark(table, segment.path, segment.size, segment.size + len(data))
            segment.handle.write(data)
            segment.handle.flush()
            os.fsync(segment.handle.fileno())
            segment.size += len(data)
            if seal and self._due(segment, time.monotonic()):
                self._seal(table)
        return mark

    def retract(self, mark: Mark | None) -> bool:
        """Take back the lines of one :meth:`append` (its request failed after it): only
        while they are the last lines of a still open segment, which ingest never reads.
        Returns whether they were taken back."""
        if mark is None:
            return True
        with self._lock:
            segment = self._segments.get(mark.table)
            if segment is None or segment.path != mark.path or segment.size != mark.end:
                return False
            segment.handle.truncate(mark.start)
            segment.handle.flush()
            os.fsync(segment.handle.fileno())
            segment.size = mark.start
        return True

    def seal(self, force: bool = False) -> int:
        """Seal the segments that are due (all with ``force``); returns how many."""
        now = time.monotonic()
        with self._lock:
            due = [t for t, s in self._segments.items() if force or self._due(s, now)]
            for table in due:
                self._seal(table)
        return len(due)

    def close(self) -> None:
        """Seal everything (service shutdown)."""
        self.seal(force=True)

    def _due(self, segment: _Segment, now: float) -> bool:
        return now - segment.opened >= self.seal_after or segment.size >= self.max_bytes

    def _open(self, table: str) -> _Segment:
        folder = self.root / table
        folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        stamp = datetime.now(UTC).strftime(TIME_FORMAT)
        path = folder / f"{stamp}-{self._owner}-{self._count}{OPEN_SUFFIX}"
        handle = path.open("ab")
        fsync_paths(folder)  # the new file's name is durable too
        segment = _Segment(path, handle, time.monotonic())
        self._segments[table] = segment
        return segment

    def _seal(self, table: str) -> None:
        segment = self._segments.pop(table)
        segment.handle.close()
        _seal_file(segment.path)


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _seal_file(path: Path) -> Path:
    sealed = path.with_name(path.name.removesuffix(OPEN_SUFFIX) + SEALED_SUFFIX)
    os.replace(path, sealed)
    fsync_paths(path.parent)
    return sealed


def _truncate_torn_line(path: Path) -> None:
    """Drop a last line without its newline: its write never completed, so never acked."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def recover_segments(root: Path) -> list[Path]:
    """Seal the open segments of dead processes of this host; returns the sealed files.

    Segments of live processes and of other hosts (a shared folder) are left alone.
    """
    host, sealed = _host(), []
    for path in sorted(Path(root).glob(f"*/*{OPEN_SUFFIX}")):
        parts = path.name.removesuffix(OPEN_SUFFIX).split("-")
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        if pid_alive(int(parts[2])):
            continue
        _truncate_torn_line(path)
        sealed.append(_seal_file(path))
    return sealed


# --------------------------------------------------------------------------- records
def _record_row(table: str, row: Mapping[str, Any], spec: FeatureSpec) -> dict[str, Any]:
    """A contract row in the record's form: kept columns only, timestamps as epoch µs."""
    out: dict[str, Any] = {}
    for col in record_columns(spec)[table]:
        value = row.get(col)
        if isinstance(value, datetime):
            value = int(micros(value))
        out[col] = value
    return out


def _stored_row(record: Record, table: str, event_id: str) -> dict[str, Any] | None:
    columns = record[table]
    ids = columns[TABLES[table].id_column]
    if event_id not in ids:
        return None
    i = ids.index(event_id)
    return {c: values[i] for c, values in columns.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
    return bool(a == b)


def check_conflicts(record: Record, table: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """How many rows the record already holds identically; raise on a different copy."""
    id_col = TABLES[table].id_column
    known = 0
    for row in rows:
        stored = _stored_row(record, table, row[id_col])
        if stored is None:
            continue
        differs = [c for c, v in stored.items() if not _same(v, row.get(c))]
        if differs:
            raise ConflictError(
                f"{table}: {id_col} {row[id_col]!r} is already recorded with different "
                f"{', '.join(differs)}"
            )
        known += 1
    return known


@dataclass
class WriteResult:
    accepted: int = 0
    new: int = 0
    duplicates: int = 0
    customers: list[str] = field(default_factory=list)


def _by_customer(
    rows_by_table: Mapping[str, Sequence[Mapping[str, Any]]], spec: FeatureSpec
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for table, rows in rows_by_table.items():
        for row in rows:
            per = grouped.setdefault(str(row["customer_id"]), {})
            per.setdefault(table, []).append(_record_row(table, row, spec))
    return grouped


def apply_events(
    store: Any,
    outbox: Outbox,
    rows_by_table: Mapping[str, Sequence[Mapping[str, Any]]],
    spec: FeatureSpec | None = None,
    customers: Sequence[Mapping[str, Any]] = (),
) -> WriteResult:
    """Validate against the store, append to the outbox (durable), then to the records.

    ``customers``: rows of customers created live (provisional ones,
    :mod:`features.online.identifiers`), appended to the outbox before the events and
    taken back with them. Raises :class:`UnknownCustomerError` or :class:`ConflictError`
    before writing anything.
    """
    spec = spec or default_spec()
    grouped = _by_customer(rows_by_table, spec)
    records = store.get_many(list(grouped))
    unknown = [c for c in grouped if c not in records]
    if unknown:
        raise UnknownCustomerError(unknown)
    result = WriteResult(customers=list(grouped))
    for customer_id, tables in grouped.items():
        for table, kept in tables.items():
            result.duplicates += check_conflicts(records[customer_id], table, kept)
    marks = [outbox.append("customers", customers, seal=False)]
    for table, rows in rows_by_table.items():
        marks.append(outbox.append(table, rows, seal=False))
        result.accepted += len(rows)
    try:
        for customer_id, tables in grouped.items():
            result.new += _append_to_record(store, customer_id, tables, spec)
    except Exception:
        # refused means not kept: the lines leave the outbox again (records already
        # changed keep the events; the client's retry with the same ids finds them there)
        for mark in reversed(marks):
            outbox.retract(mark)
        raise
    return result


def _append_to_record(
    store: Any, customer_id: str, tables: Mapping[str, list[dict]], spec: FeatureSpec
) -> int:
    """Add events to the customer's record, stamped with its aggregates as of now (the
    next score reads them: :func:`features.online.kept.stamp`); returns how many were new."""
    added = 0

    def change(current: Record | None) -> Record:
        nonlocal added
        if current is None:  # deleted since the check: the outbox still has the events
            raise UnknownCustomerError([customer_id])
        # the stamp it was stored with: the tables no event joins keep their aggregates
        previous = current.pop(STAMP, None)
        added = sum(append_events(current, table, rows) for table, rows in tables.items())
        return stamp(current, datetime.now(UTC), spec, previous, tables.keys())

    store.update(customer_id, change)
    return added


# --------------------------------------------------------------------------- replay
#: the outbox tables whose rows change a customer's record
RECORD_TABLES = ("orders", "interactions", "campaign_log")


def _parsed(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """An outbox line back in contract form (ISO timestamps -> datetimes)."""
    for column in TABLES[table].columns:
        value = row.get(column.name)
        if column.type == "timestamp" and isinstance(value, str):
            row[column.name] = datetime.fromisoformat(value)
    return row


def _segment_paths(root: Path, table: str, done: bool = False) -> list[Path]:
    folder = Path(root) / table / ("done" if done else "")
    return sorted([*folder.glob(f"*{SEALED_SUFFIX}"), *folder.glob(f"*{OPEN_SUFFIX}")])


def _stem(path: Path) -> str:
    """A segment's name without its suffix: the same while open, sealed and done."""
    return path.name.removesuffix(OPEN_SUFFIX).removesuffix(SEALED_SUFFIX)


def _segment_bytes(path: Path) -> bytes:
    """A segment's bytes, followed through its life (open, sealed, ingested into ``done/``)
    when it moved since it was listed."""
    sealed = _stem(path) + SEALED_SUFFIX
    for candidate in (path, path.parent / sealed, path.parent / "done" / sealed):
        try:
            return candidate.read_bytes()
        except FileNotFoundError:
            continue
    return b""


def _read_events(
    paths: Iterable[tuple[str, Path]], spec: FeatureSpec
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The record rows of outbox segments ``(table, path)``, per customer and table. A torn
    last line of an open segment is skipped (its write never completed: never acknowledged)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for table, path in paths:
        for line in _segment_bytes(path).splitlines():
            try:
                row = _parsed(table, json.loads(line))
            except ValueError:  # a line still being written: never acknowledged
                continue
            if table != "campaign_log" or counted(table, row, spec):
                rows.setdefault(table, []).append(row)
    return _by_customer(rows, spec)


def outbox_events(
    root: Path, spec: FeatureSpec | None = None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What the outbox holds and the warehouse does not yet (every line not in a ``done/``
    folder), as record rows per customer and table."""
    paths = [(t, p) for t in RECORD_TABLES for p in _segment_paths(root, t)]
    return _read_events(paths, spec or default_spec())


def _apply_grouped(
    store: Any, grouped: Mapping[str, Mapping[str, list[dict]]], spec: FeatureSpec
) -> int:
    records = store.get_many(list(grouped))
    applied = 0
    for customer_id, tables in grouped.items():
        if customer_id in records:  # cold-start decisions have no record to change
            applied += _append_to_record(store, customer_id, tables, spec)
    return applied


# --------------------------------------------------------------------------- loads
#: folder of the outbox holding one watermark file per load of the online store under way
LOADS = "loads"
#: a segment named (opened) this long before a watermark may still be missing from its
#: listing (its name is stamped just before the file is made): its lines count as after
WATERMARK_SLACK_S = 60.0


@dataclass(frozen=True)
class Watermark:
    """Where the outbox stood when a load of the online store began (before it read the
    warehouse): the segments not ingested then. Everything acknowledged after it is in
    those segments (wherever ingest moved them since) or in segments opened later; the
    load replays that onto the records once they are written. Kept durably in
    ``<outbox>/loads/`` until the load ends, so a load killed midway is finished by whoever
    finds its file with its process gone (:func:`recover_loads`)."""

    path: Path
    store: str
    host: str
    pid: int
    taken_at: datetime
    segments: frozenset[str]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "store": self.store,
                "host": self.host,
                "pid": self.pid,
                "taken_at": self.taken_at.isoformat(),
                "segments": sorted(self.segments),
            }
        ).encode()

    @classmethod
    def read(cls, path: Path) -> Watermark:
        data = json.loads(path.read_bytes())
        return cls(
            path,
            data["store"],
            data["host"],
            int(data["pid"]),
            datetime.fromisoformat(data["taken_at"]),
            frozenset(data["segments"]),
        )

    def after(self, root: Path) -> list[tuple[str, Path]]:
        """The segments that may hold lines acknowledged after the watermark: every one not
        ingested yet, and those ingested since that were listed or opened after it."""
        since = self.taken_at.timestamp() - WATERMARK_SLACK_S
        found = []
        for table in RECORD_TABLES:
            found += [(table, p) for p in _segment_paths(root, table)]
            for path in _segment_paths(root, table, done=True):
                stem = _stem(path)
                if stem in self.segments or _opened_at(stem) >= since:
                    found.append((table, path))
        return found


def _opened_at(stem: str) -> float:
    """When a segment was opened, from its name (``<time>-<host>-<pid>-<n>``)."""
    try:
        stamp = datetime.strptime(stem.split("-", 1)[0], TIME_FORMAT)
    except ValueError:
        return float("inf")  # not ours: read it, replays are idempotent
    return stamp.replace(tzinfo=UTC).timestamp()


def begin_load(root: Path, store_url: str) -> Watermark:
    """Take the outbox's watermark and keep it durably before a load of ``store_url``."""
    store_url = redact_url(store_url)
    taken_at = datetime.now(UTC)
    segments = frozenset(_stem(p) for t in RECORD_TABLES for p in _segment_paths(root, t))
    folder = Path(root) / LOADS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{taken_at.strftime(TIME_FORMAT)}-{_host()}-{os.getpid()}.json"
    mark = Watermark(path, store_url, _host(), os.getpid(), taken_at, segments)
    replace_durably(path, mark.to_json())
    return mark


def replay_since(store: Any, root: Path, mark: Watermark, spec: FeatureSpec | None = None) -> int:
    """Apply what was acknowledged after ``mark`` to the records of ``store`` (skipping ids
    a record holds); returns the number of events newly applied."""
    spec = spec or default_spec()
    return _apply_grouped(store, _read_events(mark.after(root), spec), spec)


def end_load(mark: Watermark) -> None:
    """The load is complete: its watermark goes."""
    mark.path.unlink(missing_ok=True)
    fsync_paths(mark.path.parent)


def recover_loads(store: Any, root: Path, spec: FeatureSpec | None = None) -> list[int]:
    """Finish the loads of ``store`` whose process died (this host's; another host's load
    is finished by its rerun): replay what was acknowledged after each one's watermark,
    then drop it. Run by the service every few seconds and by every load of the store.
    Returns the events applied per load finished."""
    finished = []
    for path in sorted((Path(root) / LOADS).glob("*.json")):
        try:
            mark = Watermark.read(path)
        except FileNotFoundError:  # another worker finished it
            continue
        except (ValueError, KeyError, TypeError):  # never torn (written by rename): not ours
            continue
        if mark.store != redact_url(store.url) or mark.host != _host() or pid_alive(mark.pid):
            continue
        finished.append(replay_since(store, root, mark, spec))
        end_load(mark)
    return finished


# --------------------------------------------------------------------------- decisions
def new_decision_id() -> str:
    return "d-" + uuid.uuid4().hex


def decision_row(
    decision_id: str,
    customer_id: str,
    decided_at: datetime,
    action: str,
    channel: str,
    propensity: float,
    group: str | None = None,
) -> dict[str, Any]:
    """A campaign-log row for a decision (outcome, revenue, responded_at come later);
    ``group``: control, treated or explore (features/control.py)."""
    return {
        "decision_id": decision_id,
        "customer_id": customer_id,
        "decided_at": decided_at,
        "action": action,
        "channel": channel,
        "propensity": propensity,
        "outcome": None,
        "revenue": None,
        "responded_at": None,
        "group": group,
    }


def log_decisions(
    store: Any,
    outbox: Outbox,
    rows: Sequence[Mapping[str, Any]],
    with_record: Iterable[str],
    spec: FeatureSpec | None = None,
    samples: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Decisions to the outbox's campaign log (and the group's sampled feature vectors,
    :mod:`features.tables.feature_samples`, to its own folder), then to the records of the
    customers in ``with_record``, so the contact policy sees them on the next score.

    Decisions for customers without a record (cold start) go to the outbox only; ingest
    accepts them once the customer is in the warehouse and quarantines them before. So do
    decisions no feature counts (:func:`features.online.record.counted`: ``no_action``), which
    would only grow the record.
    """
    spec = spec or default_spec()
    outbox.append("campaign_log", rows)
    outbox.append(FEATURE_SAMPLES, [encode(s) for s in samples])
    known = set(with_record)
    kept = [r for r in rows if r["customer_id"] in known and counted("campaign_log", r, spec)]
    grouped = _by_customer({"campaign_log": kept}, spec)
    # one transaction for the whole group where the store has batches (SQLite): one write
    # lock and one fsync instead of one per customer; with several workers the
    # per-customer commits queued on the database's write lock
    batch = getattr(store, "batch", None)
    with batch() if batch is not None else contextlib.nullcontext():
        for customer_id, tables in grouped.items():
            _append_to_record(store, customer_id, tables, spec)


class DecisionBuffer:
    """Decisions logged behind the response, in order, in groups (see the module doc).

    ``add`` is cheap and never blocks on disk; ``flush`` writes everything added so far
    (the service runs it in a thread, back to back while decisions keep coming, and
    before a score of a customer with a pending decision). Thread-safe.
    """

    def __init__(self, store: Any, outbox: Outbox, spec: FeatureSpec | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.spec = spec or default_spec()
        self._lock = threading.Lock()  # guards the pending lists
        self._write = threading.Lock()  # one writer at a time: groups land in order
        self._rows: list[Mapping[str, Any]] = []
        #: sampled feature vectors, written with the next group (never waited for)
        self._samples: list[Mapping[str, Any]] = []
        #: customers whose record a pending decision changes: their next score waits
        self._known: set[str] = set()
        #: the group being written (rows, record customers), still pending to callers
        self._flight: tuple[int, set[str]] = (0, set())

    def add(self, rows: Sequence[Mapping[str, Any]], with_record: Iterable[str]) -> None:
        if not rows:
            return
        records = set(with_record)
        changed = {
            str(r["customer_id"])
            for r in rows
            if str(r["customer_id"]) in records and counted("campaign_log", r, self.spec)
        }
        with self._lock:
            self._rows.extend(rows)
            self._known |= changed

    def sample(self, row: Mapping[str, Any]) -> None:
        """Queue one sampled feature vector (:func:`features.tables.feature_samples.sample_row`)."""
        with self._lock:
            self._samples.append(row)

    def pending(self, customer_id: str | None = None) -> bool:
        """Anything not yet written? With ``customer_id``: anything that changes its
        record (a ``no_action`` decision or a cold-start customer's does not)."""
        with self._lock:
            if customer_id is None:
                return bool(self._rows) or self._flight[0] > 0
            return customer_id in self._known or customer_id in self._flight[1]

    def flush(self) -> int:
        """Write every decision added so far; returns how many (0 if none)."""
        with self._write:
            with self._lock:
                rows, known, samples = self._rows, self._known, self._samples
                self._rows, self._known, self._samples = [], set(), []
                self._flight = (len(rows), known)
            try:
                if rows or samples:
                    log_decisions(self.store, self.outbox, rows, known, self.spec, samples)
            except Exception:
                with self._lock:  # keep them, in order, for the next flush
                    self._rows[:0] = rows
                    self._samples[:0] = samples
                    self._known |= known
                raise
            finally:
                with self._lock:
                    self._flight = (0, set())
        return len(rows)


# --------------------------------------------------------------------------- feedback
def record_feedback(
    outbox: Outbox,
    decision_id: str,
    outcome: bool,
    revenue: float | None,
    responded_at: datetime,
    recorded_at: datetime,
) -> None:
    """Durably append one outcome to ``outbox/feedback``."""
    outbox.append(
        FEEDBACK,
        [
            {
                "decision_id": decision_id,
                "outcome": outcome,
                "revenue": revenue,
                "responded_at": responded_at,
                "recorded_at": recorded_at,
            }
        ],
    )
