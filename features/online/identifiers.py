"""The online identifier index: an e-mail, a phone, a card, a cookie or a name with postcode
-> one customer, live.

Events rarely carry the company's customer id (a chat has the e-mail the person typed, the
call center a phone number). ``POST /events`` and ``POST /score`` therefore take an
identifier in place of ``customer_id``, and this module answers which customer it names,
from the index the online store keeps (:meth:`features.online.store.OnlineStore.get_identifiers`):

* **keyed hashes only**: an identifier is normalised (:mod:`features.identity`) and hashed
  with the workspace's secret key (:func:`features.identity.hash_identifier`); the store
  never holds a value, and nothing here logs or quotes one;
* **loaded by materialize** (:func:`load_index`, called by
  :func:`features.online.materialize.materialize`): who an identifier names is
  :func:`features.resolve.identifier_owners`'s answer (the one ingest uses for event files
  too): the customer's cluster (``identity_clusters``, the latest ``rapport resolve``) or,
  never resolved, the customer. An e-mail, a card or a mobile held by several clusters
  names the smallest (the exact rules of :mod:`features.resolve` make them one person); a
  cookie, a landline or a name with postcode held by several is *ambiguous* (devices and
  household phones are shared; a father and son may share a name and an address) and
  answers 409. A load adds and replaces entries; it does not remove the
  entries of identifiers no longer in the warehouse (``rapport forget`` removes a person's,
  :meth:`OnlineStore.delete_identifiers`);
* **provisional customers** (:func:`route_events`): an event whose identifiers nobody holds
  creates a customer whose id derives from the first identifier's hash
  (:func:`features.identity.provisional_id`: the same for every worker and retry), with an
  empty online record, its identifiers claimed in the index, and a ``customers`` row in
  the outbox (the identifiers as sent) that ``rapport ingest --outbox`` loads, so that
  the next ``rapport resolve`` can merge it with the person it belongs to; after the
  next materialize the identifiers name the merged cluster.

An identifier names the customer; it does not add identifiers to a known customer (an
event with a known e-mail and a new phone does not index the phone): links are learned by
``rapport resolve``, with their evidence, never silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from features.batch import micros
from features.contract import IDENTIFIER_FIELDS, TABLES
from features.identity import (
    PROVISIONAL_PREFIX,
    check_region,
    describe,
    hash_identifier,
    identifier_values,
    identity_key,
    normalise_one,
    provisional_id,
)
from features.online.record import Record, empty_record, record_columns
from features.resolve import (  # noqa: F401  (the error: part of this API)
    AmbiguousIdentifierError,
    identifier_owners,
    named_owner,
)
from features.spec import FeatureSpec, default_spec
from features.timeutil import as_utc
from rapport.settings import Settings


class UnusableIdentifierError(ValueError):
    """An identifier that is not one in normal form (an e-mail without a domain, a phone
    number that is not valid in the region); the message names the kind only."""


@dataclass(frozen=True)
class IdentityIndex:
    """What a process needs to hash identifiers as the index does: the workspace's key and
    the default phone region."""

    key: bytes = field(repr=False)  # a secret: never in a traceback's locals
    region: str

    @classmethod
    def of(cls, settings: Settings) -> IdentityIndex:
        """The workspace's (the key file is created on first use)."""
        return cls(identity_key(settings.identity_key_path), check_region(settings.phone_region))

    def hashes(self, identifiers: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(kind, hash)`` of the identifiers given (column -> value, not None: ``name``
        and ``postcode`` make one), in the order of :data:`features.contract.IDENTIFIERS`;
        raises :class:`UnusableIdentifierError`."""
        return [
            (kind, self.hash_one(kind, value))
            for kind, value in identifier_values(identifiers).items()
        ]

    def hash_one(self, kind: str, value: Any) -> str:
        """The keyed hash of one identifier of ``kind`` as given (a name with postcode:
        the pair); :class:`UnusableIdentifierError` when it has no normal form."""
        normal = normalise_one(kind, value, self.region)
        if normal is None:
            raise UnusableIdentifierError(f"{kind}: not a usable {describe(kind)}")
        return hash_identifier(self.key, kind, normal)


# --------------------------------------------------------------------------- load
def index_entries(con: Any, index: IdentityIndex, as_of: datetime) -> Iterator[tuple[str, str]]:
    """``(hash, customer_id)`` for every identifier of the customers who signed up before
    ``as_of``: who it names is :func:`features.resolve.identifier_owners`'s answer."""
    owners = identifier_owners(con, index.region, as_utc(as_of))
    for kind, named in owners.items():
        for value, customer in zip(named.index, named, strict=True):
            yield hash_identifier(index.key, kind, str(value)), str(customer)


def load_index(con: Any, store: Any, index: IdentityIndex, as_of: datetime) -> int:
    """Add the warehouse's identifiers to the store's index (:func:`index_entries`);
    returns how many were written."""
    return int(store.put_identifiers(index_entries(con, index, as_of), replace=True))


# --------------------------------------------------------------------------- lookup
def lookup(store: Any, index: IdentityIndex, identifiers: Mapping[str, Any]) -> str | None:
    """The customer the identifiers name, or None when none of them is known."""
    return _owner(store, index.hashes(identifiers))[0]


def _owner(store: Any, hashed: Sequence[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(customer, the kind that named them) of already hashed identifiers."""
    found = store.get_identifiers([h for _, h in hashed])
    return named_owner([k for k, _ in hashed], {k: found[h] for k, h in hashed if h in found})


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class EventRoute:
    """Where one event went."""

    table: str
    id: str
    customer_id: str
    #: ``customer_id`` when the event carried it, else the identifier kind that named the
    #: customer, or ``provisional`` when none did and a provisional customer was created
    matched_by: str
    provisional: bool


@dataclass
class Routed:
    """Events with their customer: contract rows (identifiers taken out), the routes, and
    the ``customers`` rows of provisional customers for the outbox."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    routes: list[EventRoute] = field(default_factory=list)
    customers: list[dict[str, Any]] = field(default_factory=list)
    #: provisional customers this call created (undone when the write fails)
    created: list[str] = field(default_factory=list)


def route_events(
    store: Any,
    index: IdentityIndex,
    rows_by_table: Mapping[str, Sequence[Mapping[str, Any]]],
    now: datetime | None = None,
    spec: FeatureSpec | None = None,
) -> Routed:
    """Give every event row its customer: its ``customer_id``, or the customer its
    identifiers name, or a provisional customer (created here: record and index claims;
    call :func:`undo` if writing the events then fails). Raises
    :class:`AmbiguousIdentifierError` or :class:`UnusableIdentifierError` and leaves
    nothing created."""
    spec = spec or default_spec()
    now = as_utc(now or datetime.now(UTC))
    hashed: dict[tuple[str, int], list[tuple[str, str]]] = {}
    first_seen: dict[str, datetime] = {}
    for table, rows in rows_by_table.items():
        for i, row in enumerate(rows):
            if row.get("customer_id") is not None:
                continue
            pairs = index.hashes(row)
            if not pairs:
                raise UnusableIdentifierError(
                    f"{table}: an event has neither customer_id nor an identifier"
                )
            hashed[(table, i)] = pairs
            _owner(store, pairs)  # every ambiguity refused before anything is created
            at = as_utc(row[TABLES[table].time_column])
            first = pairs[0][1]
            first_seen[first] = min(first_seen.get(first, at), at)
    routed = Routed()
    try:
        _route(store, rows_by_table, hashed, first_seen, now, spec, routed)
    except BaseException:
        # identifiers made ambiguous by a customer created for an earlier event of the
        # request (or the store failed): nothing of this call is left behind
        with contextlib.suppress(Exception):
            undo(store, routed)
        raise
    return routed


def _route(
    store: Any,
    rows_by_table: Mapping[str, Sequence[Mapping[str, Any]]],
    hashed: Mapping[tuple[str, int], list[tuple[str, str]]],
    first_seen: Mapping[str, datetime],
    now: datetime,
    spec: FeatureSpec,
    routed: Routed,
) -> None:
    for table, rows in rows_by_table.items():
        out = routed.rows.setdefault(table, [])
        for i, row in enumerate(rows):
            clean = {k: v for k, v in row.items() if k not in IDENTIFIER_FIELDS}
            event_id = str(row[TABLES[table].id_column])
            if (table, i) not in hashed:
                customer, how, provisional = str(row["customer_id"]), "customer_id", False
            else:
                pairs = hashed[(table, i)]
                found, kind = _owner(store, pairs)
                if found is not None:
                    customer, how = found, str(kind)
                else:
                    signup = min(first_seen[pairs[0][1]], now)
                    customer = _provisional(store, row, pairs, signup, spec, routed)
                    how = "provisional"
                provisional = customer.startswith(PROVISIONAL_PREFIX)
            clean["customer_id"] = customer
            out.append(clean)
            routed.routes.append(EventRoute(table, event_id, customer, how, provisional))


def _provisional(
    store: Any,
    row: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    signup: datetime,
    spec: FeatureSpec,
    routed: Routed,
) -> str:
    """Create (or find) the provisional customer of an event's identifiers."""
    customer = provisional_id(pairs[0][1])
    record = store.get(customer)
    created = False
    if record is None:
        fresh = empty_record({"customer_id": customer, "signup_at": int(micros(signup))}, spec)

        def create(current: Record | None) -> Record:
            nonlocal created
            created = current is None  # else another request created it meanwhile
            return fresh if current is None else current

        record = store.update(customer, create)
        if created:
            routed.created.append(customer)
    store.put_identifiers([(h, customer) for _, h in pairs], replace=False)
    emitted = any(c["customer_id"] == customer for c in routed.customers)
    if not emitted and (created or not _has_events(record, spec)):  # row maybe not out yet
        signup_at = datetime.fromtimestamp(record["customer"]["signup_at"] / 1e6, UTC)
        routed.customers.append(
            {
                "customer_id": customer,
                "signup_at": signup_at,
                **{c: row[c] for c in IDENTIFIER_FIELDS if row.get(c) is not None},
            }
        )
    return customer


def _has_events(record: Record, spec: FeatureSpec) -> bool:
    return any(record[t][TABLES[t].id_column] for t in record_columns(spec) if t in record)


def undo(store: Any, routed: Routed, spec: FeatureSpec | None = None) -> None:
    """Remove the provisional customers :func:`route_events` created (their events were
    refused and taken back from the outbox): their records and index claims, so that the
    client's retry creates them again with their ``customers`` row. One that already holds
    events (another request reused it and was acknowledged meanwhile) is kept."""
    spec = spec or default_spec()
    for customer in routed.created:
        record = store.get(customer)
        if record is not None and _has_events(record, spec):
            continue
        store.delete_identifiers(customer)
        store.delete(customer)
