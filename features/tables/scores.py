"""The warehouse tables of batch scoring and target lists, read by training and serving.

``rapport score`` (:mod:`training.scoring`) appends every run's scores to ``scores`` and
records the run in ``score_runs``; target lists (:mod:`training.targets`, the service's
``POST /targets``) read the latest run back from here and skip anyone in
``suppressions``. Reading needs only a read-only DuckDB connection, so the service may
do it; nothing here imports ``models`` or ``training``.

Every target list is kept for audit in ``target_lists`` (one row: definition, scoring run,
totals, stats) and ``target_list_members`` (rank, customer, action, expected value, cost)
by :func:`record_lists`, the one writer of both tables: ``rapport targets`` calls it
directly; lists made by the service (which never writes the warehouse) travel as JSON
lines through ``<home>/outbox/target_lists`` (:func:`outbox_lines`), and ``rapport ingest
--outbox`` reads them back (:func:`read_outbox_lists`) and calls it too.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.batch import as_utc

SCORES = "scores"
RUNS = "score_runs"
SUPPRESSIONS = "suppressions"
TARGET_LISTS = "target_lists"
TARGET_MEMBERS = "target_list_members"

RUNS_DDL = f"""CREATE TABLE IF NOT EXISTS {RUNS} (
    run_id VARCHAR PRIMARY KEY, as_of TIMESTAMPTZ, scored_at TIMESTAMPTZ, rows BIGINT,
    seconds DOUBLE, churn_version VARCHAR, value_version VARCHAR, nba_version VARCHAR,
    feature_set VARCHAR, catalog_version VARCHAR, catalog_json VARCHAR, segments_json VARCHAR
)"""
SUPPRESSIONS_DDL = f"""CREATE TABLE IF NOT EXISTS {SUPPRESSIONS} (
    customer_id VARCHAR NOT NULL, reason VARCHAR, added_at TIMESTAMPTZ DEFAULT now()
)"""

#: the audit tables' columns and types (one place: DDL, inserts and the outbox reader)
LIST_TYPES: dict[str, str] = {
    "list_id": "VARCHAR",
    "name": "VARCHAR",
    "created_at": "TIMESTAMPTZ",
    "run_id": "VARCHAR",
    "scores_as_of": "TIMESTAMPTZ",
    "features_as_of": "TIMESTAMPTZ",
    "definition": "VARCHAR",
    "filter": "VARCHAR",
    "action": "VARCHAR",
    "budget": "DOUBLE",
    "top": "BIGINT",
    "sort": "VARCHAR",
    "customers": "BIGINT",
    "total_expected_value": "DOUBLE",
    "total_cost": "DOUBLE",
    "basis": "VARCHAR",
    "budget_method": "VARCHAR",
    "stats": "VARCHAR",
    "output": "VARCHAR",
}
MEMBER_TYPES: dict[str, str] = {
    "list_id": "VARCHAR",
    "rank": "BIGINT",
    "customer_id": "VARCHAR",
    "action": "VARCHAR",
    "channel": "VARCHAR",
    "expected_value": "DOUBLE",
    "cost": "DOUBLE",
}
LISTS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TARGET_LISTS} ("
    + ", ".join(
        f"{col} {kind}" + (" PRIMARY KEY" if col == "list_id" else "")
        for col, kind in LIST_TYPES.items()
    )
    + ")"
)
MEMBERS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TARGET_MEMBERS} ("
    + ", ".join(f"{col} {kind}" for col, kind in MEMBER_TYPES.items())
    + ")"
)
#: the outbox folder (``<home>/outbox/<this>``) of the lists the service made
OUTBOX_LISTS = "target_lists"
#: what every list id looks like (``new_list_id``); the download route accepts nothing else
LIST_ID = re.compile(r"tl-[0-9]{8}T[0-9]{6}-[0-9a-f]{6}")


class NoScoresError(LookupError):
    """Nothing scored yet (the message says what to run)."""


@dataclass(frozen=True)
class RunInfo:
    """One scoring run: when, with which models, feature set and action catalog."""

    run_id: str
    as_of: datetime
    scored_at: datetime
    rows: int
    versions: dict[str, str]
    feature_set: str
    #: the action catalog the run arbitrated with (``Catalog.model_dump`` JSON)
    catalog: dict[str, Any]

    @property
    def has_uplift(self) -> bool:
        return "nba" in self.versions


def tables(db: Any) -> set[str]:
    return {r[0] for r in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def latest_run(db: Any, run_id: str | None = None) -> RunInfo:
    """The latest scoring run (or ``run_id``) of a raw DuckDB connection; NoScoresError
    when there is none."""
    if RUNS not in tables(db):
        raise NoScoresError("no scores in the warehouse yet: run `rapport score`")
    where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
    row = db.execute(
        "SELECT run_id, as_of, scored_at, rows, churn_version, value_version, nba_version, "
        f"feature_set, catalog_json FROM {RUNS} {where} ORDER BY scored_at DESC LIMIT 1",
        params,
    ).fetchone()
    if row is None:
        raise NoScoresError(
            f"no scoring run {run_id!r}" if run_id else "no scores yet: run `rapport score`"
        )
    kinds = ("churn", "value", "nba")
    versions = {k: str(v) for k, v in zip(kinds, row[4:7], strict=True) if v is not None}
    return RunInfo(
        run_id=row[0],
        as_of=as_utc(row[1]),
        scored_at=as_utc(row[2]),
        rows=int(row[3]),
        versions=versions,
        feature_set=row[7],
        catalog=json.loads(row[8]),
    )


def load_scores(db: Any, run: RunInfo) -> pd.DataFrame:
    """One run's scores, one row per customer."""
    query = db.execute(f"SELECT * FROM {SCORES} WHERE run_id = ?", [run.run_id])
    return query.to_arrow_table().to_pandas()


def suppressed_ids(db: Any) -> set[str]:
    """Customer ids in the warehouse's ``suppressions`` table (empty without one)."""
    if SUPPRESSIONS not in tables(db):
        return set()
    rows = db.execute(f"SELECT DISTINCT customer_id FROM {SUPPRESSIONS}").fetchall()
    return {str(r[0]) for r in rows if r[0] is not None}


# --------------------------------------------------------------------------- audit
def new_list_id() -> str:
    """``tl-<UTC time>-<6 hex>``, e.g. ``tl-20250101T120000-3fa2c1``."""
    return datetime.now(UTC).strftime("tl-%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _typed_select(types: Mapping[str, str], source: str) -> str:
    cols = ", ".join(f"CAST({_quoted(c)} AS {t}) AS {_quoted(c)}" for c, t in types.items())
    return f"SELECT {cols} FROM {source}"


def record_lists(db: Any, lists: Any, members: Any) -> tuple[int, int]:
    """Keep target lists for audit: ``lists`` rows of ``target_lists`` (:data:`LIST_TYPES`),
    ``members`` rows of ``target_list_members`` (:data:`MEMBER_TYPES`), as anything DuckDB
    can scan (pandas, Arrow). One transaction on a raw DuckDB connection; lists already
    recorded (by ``list_id``) are skipped with their members, so replays change nothing.
    Returns how many lists and members were new."""
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute(LISTS_DDL)
        db.execute(MEMBERS_DDL)
        db.register("_rapport_new_lists", lists)
        db.register("_rapport_new_members", members)
        new = (
            f"(SELECT list_id FROM _rapport_new_lists WHERE list_id NOT IN "
            f"(SELECT list_id FROM {TARGET_LISTS}))"
        )
        db.execute(
            f"CREATE OR REPLACE TEMP TABLE _rapport_list_ids AS SELECT DISTINCT list_id FROM {new}"
        )
        (count,) = db.execute(
            f"INSERT INTO {TARGET_LISTS} BY NAME "
            + _typed_select(LIST_TYPES, "_rapport_new_lists")
            + " WHERE list_id IN (SELECT list_id FROM _rapport_list_ids)"
        ).fetchone()
        (added,) = db.execute(
            f"INSERT INTO {TARGET_MEMBERS} BY NAME "
            + _typed_select(MEMBER_TYPES, "_rapport_new_members")
            + " WHERE list_id IN (SELECT list_id FROM _rapport_list_ids)"
        ).fetchone()
        db.execute("DROP TABLE _rapport_list_ids")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    finally:
        for view in ("_rapport_new_lists", "_rapport_new_members"):
            db.unregister(view)
    return int(count), int(added)


def outbox_lines(row: Mapping[str, Any], members: pd.DataFrame) -> list[dict[str, Any]]:
    """One list as outbox rows: its members (``kind: member``), then its ``target_lists``
    row (``kind: list``) with the number of members, so a reader can tell a complete list
    (header present, member count matching) from a torn one."""
    columns = [c for c in MEMBER_TYPES if c != "list_id"]
    lines = [
        {"kind": "member", "list_id": row["list_id"], **member}
        for member in members[columns].to_dict(orient="records")
    ]
    lines.append({"kind": "list", **{c: row.get(c) for c in LIST_TYPES}, "members": len(members)})
    return lines


@dataclass
class OutboxLists:
    """Complete lists read from outbox files (Arrow tables) and the ids of torn ones."""

    lists: Any
    members: Any
    complete: int
    incomplete: list[str]


def read_outbox_lists(db: Any, paths: Sequence[Path]) -> OutboxLists:
    """The complete lists in outbox files written from :func:`outbox_lines`; lists whose
    header is missing or whose member count differs are left out and named."""
    listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    types = {"kind": "VARCHAR", **LIST_TYPES, **MEMBER_TYPES, "members": "BIGINT"}
    spec = ", ".join(f"'{c}': '{t}'" for c, t in types.items())
    db.execute(
        "CREATE OR REPLACE TEMP TABLE _rapport_outbox_lists AS SELECT * FROM "
        f"read_json([{listing}], format = 'newline_delimited', columns = {{{spec}}})"
    )
    try:
        db.execute(
            "CREATE OR REPLACE TEMP TABLE _rapport_outbox_complete AS "
            "SELECT h.list_id FROM (SELECT DISTINCT list_id, members FROM "
            "_rapport_outbox_lists WHERE kind = 'list') h LEFT JOIN (SELECT list_id, "
            "count(*) AS n FROM _rapport_outbox_lists WHERE kind = 'member' GROUP BY list_id) m "
            "USING (list_id) WHERE coalesce(m.n, 0) = h.members"
        )
        ok = "list_id IN (SELECT list_id FROM _rapport_outbox_complete)"
        lists = db.execute(
            f"SELECT DISTINCT ON (list_id) {', '.join(map(_quoted, LIST_TYPES))} "
            f"FROM _rapport_outbox_lists WHERE kind = 'list' AND {ok}"
        ).to_arrow_table()
        members = db.execute(
            f"SELECT {', '.join(map(_quoted, MEMBER_TYPES))} FROM _rapport_outbox_lists "
            f"WHERE kind = 'member' AND {ok} ORDER BY list_id, rank"
        ).to_arrow_table()
        torn = db.execute(
            "SELECT DISTINCT list_id FROM _rapport_outbox_lists WHERE list_id NOT IN "
            "(SELECT list_id FROM _rapport_outbox_complete) ORDER BY list_id"
        ).fetchall()
    finally:
        db.execute("DROP TABLE IF EXISTS _rapport_outbox_lists")
        db.execute("DROP TABLE IF EXISTS _rapport_outbox_complete")
    return OutboxLists(lists, members, lists.num_rows, [str(r[0]) for r in torn])
