"""A customer's raw aggregates kept between live scores, while they cannot have changed.

:func:`features.online.record.evaluate` aggregates every event of a record as of an
instant (~70 window and condition masks over a few dozen events); the features then follow
from those raw aggregates, the instant (recencies, tenure) and the customer's attributes.
The raw aggregates depend on the instant only through which events lie inside each
window. So :class:`KeptAggregates` keeps them per customer, with a 128-bit digest of the
record's stored bytes (:meth:`features.online.store.OnlineStore.get_encoded`): a posted
event, a logged decision that counts or a reload of the store gives other bytes, so the
entry is computed again -- with, per distinct window start and end, the earliest event
at or after it. A later instant whose window edges, computed exactly as the evaluator
computes them, stay at or below those events leaves every event on its side of every
edge: every mask, so every raw aggregate, is the same, and the features are computed
from the kept ones with the evaluator's own finishing steps -- bit for bit its values
(``tests/features/online/test_kept.py``). An earlier instant or one past a bound is
evaluated afresh (and kept).

A repeat score of a customer (the same call, a transfer, a second contact the same day)
then skips decoding the record and aggregating its events.

**Stamped records.** So that a customer's *first* score in a worker does not aggregate
their events either, the writers store the same entry with the record, computed as they
write it (:func:`stamp`: the raw aggregates as of the write, their bounds, the
customer's attributes and the digest of the record's bytes, under the record's
:data:`features.online.store.STAMP`): a load of
the store (:func:`features.online.materialize.merge_live`, as of the load's cutoff), a
posted event, a logged decision that counts and a replay of the outbox
(:func:`features.online.events.apply_events` and the others through one record update).
:meth:`KeptAggregates.evaluate` takes a stamp made from exactly the stored bytes (the
digest, checked by :func:`features.online.store.stamp_of`, which reads the stamp
without decoding the record) with the spec in use, and only
while it holds at the instant scored, as a kept entry; otherwise it computes as before.
A record written without a stamp, or changed after it (its stamp's digest no longer
matches), is computed at its first score, as before. A writer stamping a record again
takes the tables it did not change from the stamp the store's update hands it, while
they hold (:func:`stamp`'s ``previous``).

Memory and erasure: an entry holds the aggregates, the window bounds and the customer's
attributes, never the record (so a long history costs no more); at most
:data:`KEPT_RECORDS` customers a worker, least recently used dropped beyond. A customer
erased by ``rapport forget`` (another process) has no record in the store any more: the
service then drops the entry (:meth:`KeptAggregates.drop`) on the next request naming
them, and otherwise the entry ages out of the bound; it is never served, since its digest
can match no stored record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from features.batch import MICROS_PER_DAY, micros
from features.online.record import Record, _aggregates, _finished, _plan
from features.online.store import STAMP, decode_record, record_digest, stamp_of
from features.spec import FeatureSpec, default_spec

#: customers whose aggregates a worker keeps (~1.5 KB each; least recently used dropped
#: beyond)
KEPT_RECORDS = 8192


@dataclass(frozen=True, slots=True)
class _Kept:
    digest: bytes
    as_of_us: float
    raw: np.ndarray
    #: per distinct window start, then per distinct window end (the plan's tables in
    #: turn, all starts before all ends): the earliest event at or after it
    edges: np.ndarray
    customer: Mapping[str, Any]


class KeptAggregates:
    """:func:`features.online.record.evaluate` over stored records, with each record's raw
    aggregates kept while they hold (see the module doc). Thread-safe."""

    def __init__(self, spec: FeatureSpec | None = None, size: int = KEPT_RECORDS) -> None:
        self.spec = spec or default_spec()
        self.size = size
        self._plan = plan = _plan(self.spec)
        #: the window edges' distances from the instant, starts then ends: the
        #: evaluator's ``days * MICROS_PER_DAY`` (so ``as_of - offset`` is its edge)
        self._offsets = np.concatenate([plan.start_days, plan.end_days]) * MICROS_PER_DAY
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()
        #: evaluations that aggregated the events, and those that read the aggregates the
        #: record's writer stamped (the others read the ones kept in this worker)
        self.computed = 0
        self.read_stamps = 0

    def evaluate(self, customer_id: str, encoded: bytes, as_of: datetime) -> dict[str, Any]:
        """``evaluate(decode_record(encoded), as_of, spec)`` of the customer's stored record
        ``encoded``: the same dict, bit for bit."""
        plan = self._plan
        as_of_us = micros(as_of)
        digest = hashlib.blake2b(encoded, digest_size=16).digest()
        with self._lock:
            kept = self._kept.pop(customer_id, None)
            if kept is not None:
                self._kept[customer_id] = kept  # most recently used last
        if kept is not None and kept.digest == digest and self._holds(kept, as_of_us):
            return _finished(kept.customer, kept.raw, as_of_us, plan)
        fresh = _entry(stamp_of(encoded), self.spec, digest)
        if fresh is not None and self._holds(fresh, as_of_us):
            self.read_stamps += 1
        else:
            record = decode_record(encoded)
            bounds: list[tuple[np.ndarray, np.ndarray]] = []
            raw = _aggregates(record, as_of_us, plan, bounds)
            edges = np.concatenate([*(b[0] for b in bounds), *(b[1] for b in bounds)])
            fresh = _Kept(digest, as_of_us, raw, edges, record["customer"])
            self.computed += 1
        with self._lock:
            self._kept.pop(customer_id, None)
            self._kept[customer_id] = fresh
            while len(self._kept) > self.size:
                del self._kept[next(iter(self._kept))]
        return _finished(fresh.customer, fresh.raw, as_of_us, plan)

    def drop(self, customer_id: str) -> None:
        """Forget the customer's entry (their record is gone from the store: erased)."""
        with self._lock:
            self._kept.pop(customer_id, None)

    def _holds(self, kept: _Kept, as_of_us: float) -> bool:
        """Are the kept aggregates the ones at ``as_of_us``? The window bounds are the
        evaluator's expressions (``as_of - days * MICROS_PER_DAY``, the same floats): a
        bound only rises with the instant, so events below it at the kept instant stay
        below, and the earliest event at or above it at the kept instant decides the rest."""
        if as_of_us < kept.as_of_us:
            return False
        # _edges_hold's comparisons, starts and ends in one (a few us of each first score)
        return bool((kept.edges >= as_of_us - self._offsets).all())

    def forget(self) -> None:
        """Drop every kept aggregate (a bench timing the computed path)."""
        with self._lock:
            self._kept.clear()


def stamp(
    record: Record,
    as_of: datetime,
    spec: FeatureSpec | None = None,
    previous: Mapping[str, Any] | None = None,
    changed: Collection[str] = (),
) -> Record:
    """Store with ``record`` (in place; returned) its raw aggregates as of ``as_of``, what
    :meth:`KeptAggregates.evaluate` would keep for it, under the record's
    :data:`~features.online.store.STAMP` with the digest of its bytes: the writers call it
    last, on the record they write (the module doc).

    ``previous``: the stamp of this record before the writer appended events to the tables
    ``changed`` only (made from exactly the bytes the writer read: the store's update gives
    it, :meth:`features.online.store.OnlineStore.update`). Each other table's aggregates
    and window bounds are taken from it while they hold at ``as_of``
    (:meth:`KeptAggregates._holds`' test, table by table: no event crossed one of its
    window edges since), so a logged decision aggregates the campaign log alone; the
    stamp is the same, bit for bit, as one computed from every event
    (``tests/features/online/test_kept.py``)."""
    spec = spec or default_spec()
    plan = _plan(spec)
    record.pop(STAMP, None)
    as_of_us = micros(as_of)
    earlier = _entry(previous, spec, b"") if previous is not None else None
    if earlier is not None and as_of_us < earlier.as_of_us:
        earlier = None  # bounds only rise with the instant: an earlier stamp tells nothing
    raw = np.empty(len(plan.agg_names))
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    starts, ends = 0, plan.start_days.size  # where each table's are in ``edges``
    for name, table_plan, rows in plan.tables:
        start_days, end_days = table_plan.start_days, table_plan.end_days
        if earlier is not None and name not in changed:
            started = earlier.edges[starts : starts + start_days.size]
            ended = earlier.edges[ends : ends + end_days.size]
            if _edges_hold(started, ended, start_days, end_days, as_of_us):
                raw[rows] = earlier.raw[rows]
                bounds.append((started, ended))
            else:
                raw[rows] = table_plan.aggregate(record.get(name) or {}, as_of_us, bounds)
        else:
            raw[rows] = table_plan.aggregate(record.get(name) or {}, as_of_us, bounds)
        starts, ends = starts + start_days.size, ends + end_days.size
    values = np.concatenate([raw, *(b[0] for b in bounds), *(b[1] for b in bounds)])
    record[STAMP] = {
        "digest": record_digest(record),
        "spec": spec.version,
        "as_of": as_of_us,
        "values": base64.b64encode(values.astype("<f8").tobytes()).decode("ascii"),
        "customer": record["customer"],  # what finishing the features reads besides
    }
    return record


def _edges_hold(
    started: np.ndarray,
    ended: np.ndarray,
    start_days: np.ndarray,
    end_days: np.ndarray,
    as_of_us: float,
) -> bool:
    """Do the earliest events at or after each window start and end (kept at an earlier
    instant) stay at or above the edges at ``as_of_us``? The edges are the evaluator's
    expressions (``as_of - days * MICROS_PER_DAY``, the same floats)."""
    lower = as_of_us - start_days * MICROS_PER_DAY
    upper = as_of_us - end_days * MICROS_PER_DAY
    return bool((started >= lower).all() and (ended >= upper).all())


def _entry(stamp: Mapping[str, Any] | None, spec: FeatureSpec, digest: bytes) -> _Kept | None:
    """The kept entry a record's stamp holds (:func:`stamp`), if made with this spec."""
    if stamp is None or stamp.get("spec") != spec.version:
        return None
    # binascii: base64.b64decode's own checks cost a few us of each first score
    values = np.frombuffer(binascii.a2b_base64(stamp["values"]), dtype="<f8")
    plan = _plan(spec)
    aggs, starts = len(plan.agg_names), plan.start_days.size
    if values.size != aggs + starts + plan.end_days.size:
        return None
    return _Kept(digest, float(stamp["as_of"]), values[:aggs], values[aggs:], stamp["customer"])
