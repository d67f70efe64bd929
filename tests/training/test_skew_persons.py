"""The monitor's live/batch skew check after ``rapport resolve``: a merged person's online
record holds every member's events and the earliest signup, and the batch rebuild of its
sampled vector merges them the same way (:func:`features.resolve.person_tables`), so a
clean sample agrees; a skewed one is still caught."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
from sample_data import cutoff, load_tables, random_tables

from features.batch import build
from features.online import materialize as mat
from features.online.record import evaluate
from features.online.store import open_store
from features.resolve import clusters_as_of, resolve
from features.spec import default_spec
from features.tables.feature_samples import encode, load_outbox_samples, sample_row
from features.tables.segments import snapshot_segments
from features.warehouse import connect, raw
from training.monitor_drift import check_skew

AS_OF = cutoff(400)


def _mismatches(checks: pd.DataFrame, subject: str) -> tuple[float, str]:
    row = checks[(checks["check"] == "mismatches") & (checks["subject"] == subject)]
    assert len(row) == 1, checks.to_string()
    return float(row["value"].iloc[0]), str(row["level"].iloc[0])


def test_a_merged_persons_live_vector_agrees_with_its_batch_rebuild(tmp_path: Path) -> None:
    spec = default_spec()
    con = connect(tmp_path / "warehouse.duckdb")
    load_tables(con, random_tables(seed=11, customers=60, events=600))
    db = raw(con)
    snapshot_segments(db, build(con, AS_OF), AS_OF, spec.version, AS_OF)
    # two records with split histories, one e-mail: resolve merges them into the first
    both = db.execute(
        "SELECT customer_id FROM orders WHERE ordered_at < $t GROUP BY 1 HAVING count(*) >= 2 "
        "INTERSECT SELECT customer_id FROM interactions WHERE occurred_at < $t GROUP BY 1 "
        "ORDER BY 1",
        {"t": AS_OF},
    ).fetchall()
    person, member = str(both[0][0]), str(both[-1][0])
    db.execute(
        "UPDATE customers SET email = 'one.person@example.com' WHERE customer_id IN (?, ?)",
        [person, member],
    )
    assert resolve(con, AS_OF - timedelta(days=30)).merges == 2
    # the sampled persons' clusters alone, as the monitor reads them per instant
    everyone = clusters_as_of(con, AS_OF)
    theirs = clusters_as_of(con, AS_OF, [person])
    assert (
        set(map(tuple, theirs.to_numpy()))
        == set(map(tuple, everyone[everyone["cluster_id"] == person].to_numpy()))
        == {(person, person), (member, person)}
    )
    alone = build(con, AS_OF).set_index("customer_id")
    plain = next(c for c in alone.index if c not in (person, member))
    store = open_store("sqlite:///:memory:")
    mat.materialize(con, store, AS_OF)
    live = {c: evaluate(store.get(c), AS_OF) for c in (person, member, plain)}
    # the person's live vector is the merged history, not the cluster id's own records
    own = alone.loc[person, "orders_all"]
    assert live[person]["orders_all"] == own + alone.loc[member, "orders_all"] > own

    outbox = tmp_path / "samples.jsonl"

    def sample(sample_id: str, customer: str, features: dict) -> str:
        row = encode(sample_row(sample_id, customer, AS_OF, spec.version, features))
        return json.dumps({**row, "computed_at": AS_OF.isoformat()})

    lines = [sample(f"S-{c}", c, live[c]) for c in live]
    outbox.write_text("\n".join(lines) + "\n")
    assert load_outbox_samples(db, [outbox], datetime.now(UTC)) == 3
    checks = check_skew(con, spec=spec)
    assert checks[checks["check"] == "samples"]["value"].iloc[0] == 3
    assert _mismatches(checks, "all") == (0.0, "ok"), checks.to_string()

    # a genuinely skewed vector of the merged person is still an alert naming the feature
    skewed = {**live[person], "orders_all": live[person]["orders_all"] + 1}
    outbox.write_text(sample("S-skewed", person, skewed) + "\n")
    assert load_outbox_samples(db, [outbox], datetime.now(UTC)) == 1
    checks = check_skew(con, spec=spec)
    assert _mismatches(checks, "all") == (1.0, "alert"), checks.to_string()
    assert _mismatches(checks, "orders_all") == (1.0, "alert")
    con.disconnect()
