"""Load the online store from the warehouse: one record per customer, as of a cutoff.

A record (format in :mod:`features.online.record`) holds a customer's attributes and *all* their
events before the cutoff -- some features look at the whole history (``orders_all``,
``days_since_first_order``), so nothing can be trimmed. DuckDB does the heavy lifting:
per partition of the customers (by hash, about two million events each, so memory stays
bounded), one query groups every event table into a per-customer ``list(struct)`` -- in
no particular order, nothing in the evaluator depends on it -- joins them to the
customers and streams the result as Arrow batches. Each batch is flattened column by
column (a handful of ``to_pylist`` calls per batch, not per customer), cut into records by
the list offsets and handed to ``store.put_many``.

Besides the records, the store's identifier index gets every customer's identifiers as
keyed hashes (:func:`features.online.identifiers.load_index`), and its metadata gets the
feature-set version, the cutoff, the time of the load, the customer count and the
warehouse's current segment model (the RFM / ABC cut points the latest ``rapport score`` or
``rapport features`` fitted and stored, :mod:`features.tables.segments`) with its
version, which the service needs to segment one customer exactly as the batch did.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.contract import CUSTOMER_ATTRIBUTES, CUSTOMERS, TABLES
from features.online.events import (
    begin_load,
    end_load,
    outbox_events,
    recover_loads,
    replay_since,
)
from features.online.identifiers import IdentityIndex, load_index
from features.online.kept import stamp
from features.online.record import Record, append_events, record_columns
from features.online.store import open_store, redact_url
from features.resolve import CHANGES, clusters_as_of_sql
from features.spec import FeatureSpec, default_spec
from features.tables.segments import load_version
from features.timeutil import as_utc
from features.warehouse import raw, table_names
from rapport.settings import Settings, get_settings

#: metadata keys the service reads
META_FEATURE_SET = "feature_set_version"
META_AS_OF = "as_of"
META_MATERIALIZED_AT = "materialized_at"
META_CUSTOMERS = "customers"
META_SEGMENTS = "segments"
META_SEGMENTS_VERSION = "segments_version"
#: customers per Arrow batch: large enough to amortise the per-batch conversions
BATCH_ROWS = 20_000
#: events per query: DuckDB's ordered list aggregates hold a partition's events in memory
#: (all 31M events of the 1M-customer demo at once needed more than 19 GB)
EVENTS_PER_PARTITION = 2_000_000

Progress = Callable[[str], None]


#: the query's names for the merged persons' members and their first signup
_PERSONS, _FIRST = "_rapport_persons", "_rapport_first_signup"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value_sql(table: str, column: str) -> str:
    """The column as a record stores it: timestamps as integer epoch microseconds."""
    if TABLES[table].column(column).type == "timestamp":
        return f"epoch_us({_ident(column)})"
    return _ident(column)


def records_sql(spec: FeatureSpec, parts: int = 1, part: int = 0, persons: bool = False) -> str:
    """One row per customer known before ``$as_of``, with one ``list(struct)`` per source,
    for the customers with ``hash(customer_id) % parts = part``.

    ``persons`` (the warehouse holds ``identity_changes``): a merged person's record, the
    one of their cluster id, holds the events of every record of the cluster and the
    earliest signup, as :func:`features.resolve.person_tables` (``keep_members``) builds
    them for the batch -- with the clusters resolution knew at ``$as_of``
    (:func:`features.resolve.clusters_as_of`: a merge learned later changes nothing).
    The other records of the cluster keep their own record and events.

    The partition is written as literals: as parameters, DuckDB does not push the filter
    into the scans and each partition costs a full pass (10x slower).
    """
    mine = f"hash(customer_id) % {int(parts)} = {int(part)}"
    ctes, joins, selects = [], [], []
    if persons:  # members whose cluster id names another customer, as of the cutoff
        ctes.append(
            f"{_PERSONS} AS (SELECT k.customer_id, k.cluster_id FROM "
            f"({clusters_as_of_sql('$as_of')}) k JOIN customers c ON c.customer_id = "
            "k.cluster_id WHERE k.cluster_id <> k.customer_id)"
        )
    for table, columns in record_columns(spec).items():
        time_col = TABLES[table].time_column
        fields = ", ".join(f"{_ident(c)}: {_value_sql(table, c)}" for c in columns)
        source = _ident(table)
        if persons:  # each event also under its record's cluster id
            source = (
                f"(SELECT * FROM {source} UNION ALL BY NAME SELECT e.* REPLACE "
                f"(p.cluster_id AS customer_id) FROM {source} e JOIN {_PERSONS} p "
                "ON p.customer_id = e.customer_id)"
            )
        ctes.append(
            f"{_ident('ev_' + table)} AS (SELECT customer_id, list({{{fields}}}) "
            f"AS events FROM {source} WHERE {_ident(time_col)} < $as_of AND {mine} "
            "GROUP BY customer_id)"
        )
        joins.append(f"LEFT JOIN {_ident('ev_' + table)} USING (customer_id)")
        selects.append(f"{_ident('ev_' + table)}.events AS {_ident(table)}")
    signup = "signup_at"
    if persons:  # a person signed up with their first record
        ctes.append(
            f"{_FIRST} AS (SELECT p.cluster_id AS customer_id, min(c.signup_at) AS first "
            f"FROM {_PERSONS} p JOIN customers c ON c.customer_id = p.customer_id GROUP BY 1)"
        )
        joins.append(f"LEFT JOIN {_FIRST} USING (customer_id)")
        signup = f"least(signup_at, {_FIRST}.first)"
    attrs = ", ".join(
        (f"epoch_us({signup})" if c == "signup_at" else _value_sql(CUSTOMERS.name, c))
        + f" AS {_ident(c)}"
        for c in CUSTOMER_ATTRIBUTES
    )
    return (
        "WITH "
        + ", ".join(ctes)
        + f" SELECT {attrs}, {', '.join(selects)} FROM customers "
        + " ".join(joins)
        + f" WHERE {signup} < $as_of AND {mine}"
    )


def records_of_batch(batch: pa.RecordBatch, spec: FeatureSpec) -> Iterator[tuple[str, Record]]:
    """Arrow rows -> ``(customer_id, record)``; each event column is converted once."""
    attrs = {c: batch.column(c).to_pylist() for c in CUSTOMER_ATTRIBUTES}
    sources: dict[str, tuple[list[int], dict[str, list[Any]]]] = {}
    for table, columns in record_columns(spec).items():
        events = batch.column(table)
        assert isinstance(events, pa.ListArray)
        # null lists (no events) have equal offsets, so slicing gives empty lists
        offsets = events.offsets.to_pylist()
        flat = events.flatten()
        sources[table] = (offsets, {c: flat.field(c).to_pylist() for c in columns})
    for i, customer_id in enumerate(attrs["customer_id"]):
        record: Record = {"customer": {c: values[i] for c, values in attrs.items()}}
        for table, (offsets, values) in sources.items():
            start, end = offsets[i], offsets[i + 1]
            record[table] = {c: column[start:end] for c, column in values.items()}
        yield customer_id, record


def iter_records(
    con: Any, as_of: datetime, spec: FeatureSpec | None = None, batch_rows: int = BATCH_ROWS
) -> Iterator[tuple[str, Record]]:
    """Every customer's record as of ``as_of``, streamed from the warehouse.

    The next partition's query runs in a thread while this one's records are consumed
    (DuckDB releases the GIL), which hides most of the query time.
    """
    spec = spec or default_spec()
    db = raw(con)
    events = sum(_count(db, table) for table in record_columns(spec))
    parts = max(1, -(-events // EVENTS_PER_PARTITION))
    params = {"as_of": as_utc(as_of)}
    tables = table_names(db)
    persons = CHANGES in tables  # resolution has run: merged persons' records

    def fetch(part: int) -> pa.Table:
        sql = records_sql(spec, parts, part, persons)
        return db.cursor().execute(sql, params).to_arrow_table()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fetch, 0)
        for part in range(parts):
            table = pending.result()
            if part + 1 < parts:
                pending = pool.submit(fetch, part + 1)
            for batch in table.to_batches(batch_rows):
                yield from records_of_batch(batch, spec)


def _count(db: Any, table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()
    return int(row[0]) if row else 0


@dataclass
class Tally:
    """Records written and acknowledged events merged into them (adds up over writers)."""

    written: int = 0
    replayed: int = 0


def merge_live(
    records: Iterable[tuple[str, Record]],
    live: Mapping[str, Mapping[str, Any]],
    tally: Tally,
    as_of: datetime,
    spec: FeatureSpec,
) -> Iterator[tuple[str, Record]]:
    """Each record with the acknowledged events of its customer that the warehouse does
    not hold yet (``live``, from :func:`features.online.events.outbox_events`) appended,
    counted in ``tally``, and stamped with its aggregates as of the load's cutoff
    ``as_of`` (:func:`features.online.kept.stamp`: a customer's first score reads them)."""
    for customer_id, record in records:
        for table, rows in live.get(customer_id, {}).items():
            tally.replayed += append_events(record, table, rows)
        tally.written += 1
        yield customer_id, stamp(record, as_of, spec)


#: builds and writes every record elsewhere (Spark): (cutoff, spec, live events) -> tally
Loader = Callable[[datetime, FeatureSpec, Mapping[str, Any]], Tally]


def materialize(
    con: Any,
    store: Any,
    as_of: datetime | str | None = None,
    spec: FeatureSpec | None = None,
    progress: Progress | None = None,
    segments: str | None = None,
    outbox: Path | None = None,
    identity: IdentityIndex | None = None,
    load: Loader | None = None,
) -> int:
    """Replace the store's records by the warehouse's state at ``as_of`` (default: now).

    ``outbox``: the service's outbox folder; when loading as of now, its position is
    kept first (a watermark, :func:`features.online.events.begin_load`), what it holds and
    the warehouse does not yet (events acknowledged since the last ``ingest --outbox``)
    is merged into each record before it is written
    (:func:`features.online.events.outbox_events`), and what was acknowledged after the
    watermark is replayed once the records are written
    (:func:`features.online.events.replay_since`), so the live view never goes back. A
    load killed before that leaves its watermark behind, and the running service (or the
    next load) replays from it (:func:`features.online.events.recover_loads`).

    ``con`` is the DuckDB warehouse (an Ibis backend; read-only is enough) and ``store``
    an :class:`features.online.store.OnlineStore`. ``segments``: the stored segment model
    version to serve (default: the current one; :class:`NoSegmentsError` when the
    warehouse holds none). Records of customers no longer in the warehouse are not
    deleted. ``identity``: the workspace's key and phone region, to load the identifier
    index (:func:`features.online.identifiers.load_index`; none without it). Returns the
    number of records written.

    ``load`` builds and writes the records instead of this process (Spark's executors,
    :func:`features.spark.record_loader`), given the cutoff, the spec and the
    acknowledged events to merge; the watermark, the outbox replay and the metadata stay
    here.
    """
    spec = spec or default_spec()
    cutoff = as_utc(as_of) if as_of is not None else datetime.now(UTC)
    say = progress or (lambda _: None)
    stored = load_version(raw(con), segments)
    say(f"{stored.describe()} for the live service")
    say(f"loading customer records as of {cutoff:%Y-%m-%d %H:%M} UTC into the online store")
    # the outbox's position, durable before the warehouse is read: what is acknowledged
    # after it is replayed once the records are written, by this load or, when it dies
    # first, by the service or the next load (recover_loads)
    mark = begin_load(outbox, store.url) if outbox is not None and as_of is None else None
    # acknowledged, not ingested yet: merged into each record before it is written, so a
    # load killed midway leaves every record old or new, each with these events
    live = outbox_events(outbox, spec) if outbox is not None and mark is not None else {}

    if load is not None:
        tally = load(cutoff, spec, live)
    else:
        tally = Tally()

        def counted() -> Iterator[tuple[str, Record]]:
            for item in merge_live(iter_records(con, cutoff, spec), live, tally, cutoff, spec):
                if tally.written % 100_000 == 0:
                    say(f"{tally.written:,} records")
                yield item

        with _no_cyclic_gc():
            store.put_many(counted())
    written, replayed = tally.written, tally.replayed
    if outbox is not None and mark is not None:
        replayed += replay_since(store, outbox, mark, spec)  # acknowledged during the load
        say(f"{replayed:,} events acknowledged since the last ingest replayed from the outbox")
    if identity is not None:
        indexed = load_index(con, store, identity, cutoff)
        say(f"{indexed:,} identifiers indexed (keyed hashes)")
    store.set_meta(META_FEATURE_SET, spec.version)
    store.set_meta(META_AS_OF, cutoff.isoformat())
    store.set_meta(META_CUSTOMERS, str(written))
    store.set_meta(META_SEGMENTS, stored.model.to_json())
    store.set_meta(META_SEGMENTS_VERSION, stored.version)
    # written last: the service rebuilds its scorer when this stamp moves
    store.set_meta(META_MATERIALIZED_AT, datetime.now(UTC).isoformat())
    if outbox is not None and mark is not None:
        end_load(mark)
        recover_loads(store, outbox, spec)  # earlier loads killed midway: covered by this one
    say(f"{written:,} records written (feature set {spec.version}, segments {stored.version})")
    return written


@dataclass(frozen=True)
class Loaded:
    """What :func:`load_online_store` did."""

    records: int
    segments: str
    seconds: float
    store: str  # the store's address, without a password


def load_online_store(
    con: Any,
    as_of: datetime | str | None = None,
    segments: str | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
    load: Loader | None = None,
) -> Loaded:
    """The one way the live service's store is loaded (``rapport materialize`` and the
    cycle's ``materialize`` step): the configured store (``settings.online_store_url``)
    replaced from the warehouse, then, when loading as of now, the service's outbox
    replayed onto it (:func:`materialize` with ``settings.outbox_dir``), so the events
    acknowledged since the last ``ingest --outbox`` (or while a cycle ran) stay in the
    live view; the identifier index loaded with the workspace's key. ``load``: the records
    built and written elsewhere (``rapport materialize`` with RAPPORT_ENGINE=spark:
    :func:`features.spark.record_loader`)."""
    settings = settings or get_settings()
    store = open_store(settings.online_store_url)
    start = time.perf_counter()
    try:
        written = materialize(
            con,
            store,
            as_of,
            progress=progress,
            segments=segments,
            outbox=settings.outbox_dir,
            identity=IdentityIndex.of(settings),
            load=load,
        )
        served = store.get_meta(META_SEGMENTS_VERSION) or ""
    finally:
        store.close()
    seconds = time.perf_counter() - start
    return Loaded(written, served, seconds, redact_url(settings.online_store_url))


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Records are trees (no reference cycles), so the cyclic collector finds nothing in
    them; with millions of fresh lists it ran again and again (a third of the load time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
