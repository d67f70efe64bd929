"""A customer's raw aggregates kept between live scores, while they cannot have changed.

:func:`features.online.record.evaluate` aggregates every event of a record as of an
instant (~70 window and condition masks over a few dozen events); the features then follow
from those raw aggregates, the instant (recencies, tenure) and the customer's attributes.
The raw aggregates depend on the instant only through which events lie inside each
window. So :class:`KeptAggregates` keeps them per customer, with a 128-bit digest of the
record's stored bytes (:meth:`features.online.store.OnlineStore.get_encoded`): a posted
event, a logged decision that counts or a reload of the store gives other bytes, so the
entry is computed again -- with,
per aggregation, the earliest event inside its window's start and the earliest at or
after its end. A later instant whose window bounds, computed exactly as the evaluator
computes them, stay at or below those events leaves every event on its side of both
bounds: every mask, so every raw aggregate, is the same, and the features are computed
from the kept ones with the evaluator's own finishing steps -- bit for bit its values
(``tests/features/online/test_kept.py``). An earlier instant or one past a bound is
evaluated afresh (and kept).

A repeat score of a customer (the same call, a transfer, a second contact the same day)
then skips decoding the record and aggregating its events.

Memory and erasure: an entry holds the aggregates, the window bounds and the customer's
attributes, never the record (so a long history costs no more); at most
:data:`KEPT_RECORDS` customers a worker, least recently used dropped beyond. A customer
erased by ``rapport forget`` (another process) has no record in the store any more: the
service then drops the entry (:meth:`KeptAggregates.drop`) on the next request naming
them, and otherwise the entry ages out of the bound; it is never served, since its digest
can match no stored record.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from features.batch import MICROS_PER_DAY, micros
from features.online.record import _aggregates, _finished, _plan
from features.online.store import decode_record
from features.spec import FeatureSpec, default_spec

#: customers whose aggregates a worker keeps (~1.5 KB each; least recently used dropped
#: beyond)
KEPT_RECORDS = 8192


@dataclass(frozen=True, slots=True)
class _Kept:
    digest: bytes
    as_of_us: float
    raw: np.ndarray
    #: per aggregation (the plan's tables in turn): earliest event inside the window's
    #: start, earliest at or after its end
    started: np.ndarray
    ended: np.ndarray
    customer: Mapping[str, Any]


class KeptAggregates:
    """:func:`features.online.record.evaluate` over stored records, with each record's raw
    aggregates kept while they hold (see the module doc). Thread-safe."""

    def __init__(self, spec: FeatureSpec | None = None, size: int = KEPT_RECORDS) -> None:
        self.spec = spec or default_spec()
        self.size = size
        self._plan = _plan(self.spec)
        self._kept: dict[str, _Kept] = {}
        self._lock = threading.Lock()
        #: evaluations that aggregated the events (the others read kept aggregates)
        self.computed = 0

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
            return _finished(kept.customer, kept.raw.copy(), as_of_us, plan)
        record = decode_record(encoded)
        bounds: list[tuple[np.ndarray, np.ndarray]] = []
        raw = _aggregates(record, as_of_us, plan, bounds)
        started = np.concatenate([b[0] for b in bounds])
        ended = np.concatenate([b[1] for b in bounds])
        customer = record["customer"]
        fresh = _Kept(digest, as_of_us, raw.copy(), started, ended, customer)
        with self._lock:
            self._kept.pop(customer_id, None)
            self._kept[customer_id] = fresh
            while len(self._kept) > self.size:
                del self._kept[next(iter(self._kept))]
        self.computed += 1
        return _finished(customer, raw, as_of_us, plan)

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
        plan = self._plan
        lower = as_of_us - plan.lower_days * MICROS_PER_DAY
        upper = as_of_us - plan.upper_days * MICROS_PER_DAY
        return bool((kept.started >= lower).all() and (kept.ended >= upper).all())

    def forget(self) -> None:
        """Drop every kept aggregate (a bench timing the computed path)."""
        with self._lock:
            self._kept.clear()
