"""Materialize: the online records give the batch build's features, with the metadata the
service needs (the warehouse's stored segment model among it), whatever the number of
partitions."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sample_data import assert_features_equal, cutoff, load_tables, random_tables

from features.batch import build, micros
from features.online import materialize as mat
from features.online.kept import KeptAggregates
from features.online.record import evaluate
from features.online.store import open_store, stamp_of
from features.segments import SegmentModel, fit_segments
from features.spec import default_spec
from features.tables.segments import NoSegmentsError, snapshot_segments
from features.warehouse import connect, raw

AS_OF = cutoff(400)


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Any:
    con = connect(tmp_path_factory.mktemp("wh") / "warehouse.duckdb")
    load_tables(con, random_tables(seed=11, customers=60, events=600))
    # the snapshot at the same cutoff stores the segment model (`rapport features` does)
    snapshot_segments(raw(con), build(con, AS_OF), AS_OF, default_spec().version, AS_OF)
    return con


def online_frame(store: Any, customer_ids: list[str], as_of: Any) -> pd.DataFrame:
    rows = [evaluate(store.get(cid), as_of) for cid in customer_ids]
    frame = pd.DataFrame(rows, columns=["customer_id", *default_spec().names])
    return frame.astype({"customer_id": "string"})


def canonical(record: dict) -> dict:
    """A record with its events sorted by id (materialize keeps no order)."""
    out = {"customer": record["customer"]}
    for table, columns in record.items():
        if table == "customer":
            continue
        ids = next(iter(columns.values()))
        order = sorted(range(len(ids)), key=ids.__getitem__)
        out[table] = {c: [values[i] for i in order] for c, values in columns.items()}
    return out


def test_records_give_the_batch_features(con: Any) -> None:
    store = open_store("sqlite:///:memory:")
    written = mat.materialize(con, store, AS_OF)
    batch = build(con, AS_OF)
    assert written == len(batch) == store.count() > 0
    for as_of in (AS_OF, cutoff(200)):  # earlier cutoffs too: the evaluator filters by time
        expected = build(con, as_of)
        ids = [c for c in expected["customer_id"] if store.get(c) is not None]
        assert_features_equal(
            online_frame(store, ids, as_of),
            expected.set_index("customer_id").loc[ids].reset_index(),
            f"as of {as_of:%Y-%m-%d}",
        )


def _bits(value: Any) -> Any:
    return struct.pack("<d", value) if isinstance(value, float) else value


def test_records_are_stamped_with_their_aggregates_as_of_the_cutoff(con: Any) -> None:
    """A load stamps every record (:func:`features.online.kept.stamp`): a worker's first
    score of a customer reads the aggregates instead of computing them, and gets the
    evaluator's features."""
    store = open_store("sqlite:///:memory:")
    mat.materialize(con, store, AS_OF)
    ids = list(store.get_many(list(build(con, AS_OF)["customer_id"])))
    kept = KeptAggregates()
    for customer_id in ids:
        encoded = store.get_encoded(customer_id) or b""
        assert (stamp_of(encoded) or {}).get("as_of") == micros(AS_OF)
        later = AS_OF + timedelta(minutes=5)
        got, want = (
            kept.evaluate(customer_id, encoded, later),
            evaluate(store.get(customer_id), later),
        )
        assert list(got) == list(want)
        assert all(_bits(got[k]) == _bits(want[k]) for k in want), customer_id
    assert kept.computed == 0 and ids


def test_only_the_past_is_loaded(con: Any) -> None:
    store = open_store("sqlite:///:memory:")
    mat.materialize(con, store, AS_OF)
    tables = random_tables(seed=11, customers=60, events=600)
    later = tables["customers"][tables["customers"]["signup_at"] >= AS_OF]["customer_id"]
    assert len(later) and all(store.get(c) is None for c in later)
    limit = micros(AS_OF)
    for cid in build(con, AS_OF)["customer_id"]:
        record = store.get(cid) or {}
        assert all(t < limit for t in record["orders"]["ordered_at"])
        assert all(t < limit for t in record["interactions"]["occurred_at"])


def test_metadata_for_the_service(con: Any) -> None:
    store = open_store("sqlite:///:memory:")
    messages: list[str] = []
    written = mat.materialize(con, store, AS_OF, progress=messages.append)
    assert store.get_meta(mat.META_FEATURE_SET) == default_spec().version
    assert store.get_meta(mat.META_AS_OF) == AS_OF.isoformat()
    assert store.get_meta(mat.META_CUSTOMERS) == str(written)
    assert store.get_meta(mat.META_MATERIALIZED_AT) is not None
    segments = SegmentModel.from_json(store.get_meta(mat.META_SEGMENTS) or "")
    assert segments == fit_segments(build(con, AS_OF))
    version = store.get_meta(mat.META_SEGMENTS_VERSION)
    assert version and version.startswith(f"{AS_OF:%Y%m%d}-")
    assert any("records written" in m for m in messages)
    known = len(build(con, AS_OF))
    assert any(f"segments {version} (fitted on {known} customers" in m for m in messages)


def test_the_stored_segment_model_is_served_not_refitted(con: Any, tmp_path: Path) -> None:
    empty = connect(tmp_path / "empty.duckdb")
    load_tables(empty, random_tables(seed=11, customers=60, events=600))
    with pytest.raises(NoSegmentsError, match="run `rapport score` or `rapport features`"):
        mat.materialize(empty, open_store("sqlite:///:memory:"), AS_OF)
    # the current version is the one stored last, whatever its snapshot's cutoff
    later, now = cutoff(500), datetime.now(UTC)
    newer = snapshot_segments(raw(empty), build(empty, later), later, "fs", now)
    older = snapshot_segments(raw(empty), build(empty, AS_OF), AS_OF, "fs", now + timedelta(1))
    store = open_store("sqlite:///:memory:")
    mat.materialize(empty, store, later)
    assert store.get_meta(mat.META_SEGMENTS_VERSION) == older.version  # stored last
    assert store.get_meta(mat.META_SEGMENTS) == older.model.to_json()
    mat.materialize(empty, store, later, segments=newer.version)
    assert store.get_meta(mat.META_SEGMENTS_VERSION) == newer.version
    with pytest.raises(NoSegmentsError, match="'nope'"):
        mat.materialize(empty, store, later, segments="nope")


def test_partitions_change_nothing(con: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = dict(mat.iter_records(con, AS_OF))
    monkeypatch.setattr(mat, "EVENTS_PER_PARTITION", 100)
    parts = dict(mat.iter_records(con, AS_OF, batch_rows=7))
    assert sorted(parts) == sorted(whole)
    assert all(canonical(parts[c]) == canonical(whole[c]) for c in whole)


def test_replaces_records_in_a_file_store(con: Any, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    store.put_many([("C0000", {"customer": {"customer_id": "C0000"}, "stale": True})])
    mat.materialize(con, store, AS_OF)
    record = store.get("C0000") or {}
    assert "stale" not in record and record["customer"]["customer_id"] == "C0000"


def test_events_acknowledged_since_the_last_ingest_survive_a_materialize(
    con: Any, tmp_path: Path
) -> None:
    """An event the service acknowledged (outbox + record) but `ingest --outbox` has not
    loaded yet: a new materialize replays it, so the live view never goes back (issue 22:
    a customer's orders_all went 8 -> 9 -> 8)."""
    from features.online.events import Outbox, apply_events

    store = open_store("sqlite:///:memory:")
    outbox = Outbox(tmp_path / "outbox")
    mat.materialize(con, store, outbox=outbox.root)
    customer = raw(con).execute("SELECT min(customer_id) FROM customers").fetchone()[0]
    now = datetime.now(UTC)
    before = evaluate(store.get(customer), now)["orders_all"]
    order = {"order_id": "live-1", "customer_id": customer, "ordered_at": now - timedelta(1)}
    order |= {"amount": 9.5, "margin": None, "category": None, "channel": "web"}
    apply_events(store, outbox, {"orders": [order]})  # open segment, not sealed, not ingested
    assert evaluate(store.get(customer), now)["orders_all"] == before + 1
    messages: list[str] = []
    mat.materialize(con, store, outbox=outbox.root, progress=messages.append)
    assert evaluate(store.get(customer), now)["orders_all"] == before + 1
    assert any("1 events acknowledged since the last ingest replayed" in m for m in messages)
    outbox.close()  # sealed now: still replayed, and only once
    mat.materialize(con, store, outbox=outbox.root)
    assert evaluate(store.get(customer), now)["orders_all"] == before + 1


class Wraps:
    """A store whose ``put_many`` a subclass replaces; every other call goes to ``store``."""

    store: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class DiesMidway(Wraps):
    """A store whose load dies (as a killed process would) after ``after`` records."""

    def __init__(self, store: Any, after: int) -> None:
        self.store, self.after = store, after

    def put_many(self, items: Any) -> None:
        def until_death() -> Any:
            for n, item in enumerate(items):
                if n == self.after:
                    return
                yield item

        self.store.put_many(until_death())
        raise SystemExit("killed")


def test_a_load_killed_midway_keeps_the_acknowledged_events_in_every_record(
    con: Any, tmp_path: Path
) -> None:
    """Every record a dying materialize wrote already holds the events acknowledged since
    the last ingest (merged before the write, not replayed after it); the ones it did not
    reach are the old records, which hold them too."""
    from features.online.events import Outbox, apply_events

    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    outbox = Outbox(tmp_path / "outbox")
    mat.materialize(con, store, outbox=outbox.root)
    customers = [r[0] for r in raw(con).execute("SELECT customer_id FROM customers").fetchall()]
    now = datetime.now(UTC)
    for n, customer in enumerate(customers):
        order = {"order_id": f"live-{n}", "customer_id": customer}
        order |= {"ordered_at": now - timedelta(1), "amount": 9.5, "channel": "web"}
        order |= {"margin": None, "category": None}
        apply_events(store, outbox, {"orders": [order]})
    with pytest.raises(SystemExit):
        mat.materialize(con, DiesMidway(store, len(customers) // 2), outbox=outbox.root)
    held = store.get_many(customers)
    missing = [
        c for n, c in enumerate(customers) if f"live-{n}" not in held[c]["orders"]["order_id"]
    ]
    assert not missing


class AcksThenDies(Wraps):
    """A store whose load sees ``/events`` acknowledge an event for each customer it has
    not written yet (after the load's watermark), then dies before the replay."""

    def __init__(self, store: Any, ack: Any) -> None:
        self.store, self.ack = store, ack

    def put_many(self, items: Any) -> None:
        self.ack()
        self.store.put_many(items)
        raise SystemExit("killed")


def test_a_load_killed_before_its_replay_is_finished_from_its_watermark(
    con: Any, tmp_path: Path
) -> None:
    """Events acknowledged after the load's watermark, before their records were written,
    are overwritten by the load; killed before it replays them, the load leaves its
    watermark, and `recover_loads` (the service, every few seconds, or the next load)
    puts them back, also when `ingest --outbox` took their segment meanwhile."""
    import json
    import subprocess
    import sys

    from features.online.events import LOADS, Outbox, apply_events, recover_loads

    store = open_store(f"sqlite:///{tmp_path / 'online.sqlite'}")
    outbox = Outbox(tmp_path / "outbox")
    mat.materialize(con, store, outbox=outbox.root)
    customers = [r[0] for r in raw(con).execute("SELECT customer_id FROM customers").fetchall()]
    now = datetime.now(UTC)

    def ack() -> None:
        for n, customer in enumerate(customers):
            order = {"order_id": f"late-{n}", "customer_id": customer}
            order |= {"ordered_at": now - timedelta(1), "amount": 9.5, "channel": "web"}
            order |= {"margin": None, "category": None}
            apply_events(store, outbox, {"orders": [order]})

    def live_ids() -> set[str]:
        held = store.get_many(customers)
        return {i for r in held.values() for i in r["orders"]["order_id"] if i.startswith("late")}

    with pytest.raises(SystemExit):
        mat.materialize(con, AcksThenDies(store, ack), outbox=outbox.root)
    acked = {f"late-{n}" for n in range(len(customers))}
    lost = len(acked - live_ids())
    assert lost == len(acked)  # every record overwritten: what the watermark is for
    (marker,) = (outbox.root / LOADS).glob("*.json")
    assert recover_loads(store, outbox.root) == []  # its process (this one) still runs
    stray = outbox.root / LOADS / "0-not-a-watermark.json"
    stray.write_text(json.dumps({"store": "x"}))  # parses, but is not one of ours
    assert recover_loads(store, outbox.root) == [] and stray.exists()  # skipped, kept
    stray.unlink()
    # the load's process is gone, and ingest moved the segment to done/ meanwhile
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "pid": gone.pid}))
    outbox.close()
    for path in (outbox.root / "orders").glob("*.jsonl"):
        (path.parent / "done").mkdir(exist_ok=True)
        path.replace(path.parent / "done" / path.name)
    assert recover_loads(store, outbox.root) == [lost]
    assert live_ids() == acked
    assert not list((outbox.root / LOADS).glob("*.json"))


def test_a_merged_persons_record_holds_every_member_history(tmp_path: Path) -> None:
    """Issue 20: after ``rapport resolve`` merged two records with split histories, the
    cluster id's online record gives the batch features of the merged customer
    (:func:`features.resolve.merge_histories`); a merge learned after the cutoff of a load
    changes nothing; the other member keeps its own record."""
    from features.resolve import clusters_as_of, merge_histories, resolve

    con = connect(tmp_path / "warehouse.duckdb")
    load_tables(con, random_tables(seed=11, customers=60, events=600))
    db = raw(con)
    snapshot_segments(db, build(con, AS_OF), AS_OF, default_spec().version, AS_OF)
    counts = db.execute(
        "SELECT customer_id FROM orders WHERE ordered_at < $t GROUP BY 1 HAVING count(*) >= 2 "
        "INTERSECT SELECT customer_id FROM interactions WHERE occurred_at < $t GROUP BY 1 "
        "ORDER BY 1",
        {"t": AS_OF},
    ).fetchall()
    first, second = str(counts[0][0]), str(counts[-1][0])
    db.execute(
        "UPDATE customers SET email = 'one.person@example.com' WHERE customer_id IN (?, ?)",
        [first, second],
    )
    learned = AS_OF - timedelta(days=30)
    assert resolve(con, learned).merges == 2
    merged = connect(tmp_path / "merged.duckdb")
    merge_histories(con, merged, clusters_as_of(con, AS_OF))
    expected = build(merged, AS_OF).set_index("customer_id")
    alone = build(con, AS_OF).set_index("customer_id")
    store = open_store("sqlite:///:memory:")
    mat.materialize(con, store, AS_OF)
    person = online_frame(store, [first], AS_OF)
    assert_features_equal(person, expected.loc[[first]].reset_index(), "the merged person")
    assert person.loc[0, "orders_all"] == alone.loc[[first, second], "orders_all"].sum()
    assert_features_equal(
        online_frame(store, [second], AS_OF), alone.loc[[second]].reset_index(), "the member"
    )
    # loaded as of a cutoff before the merge was learned: the records as they were
    before = learned - timedelta(days=1)
    earlier = open_store("sqlite:///:memory:")
    mat.materialize(con, earlier, before)
    own = build(con, before).set_index("customer_id")
    assert_features_equal(
        online_frame(earlier, [first], before), own.loc[[first]].reset_index(), "before"
    )
    merged.disconnect()
