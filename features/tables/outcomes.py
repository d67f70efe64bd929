"""Decision outcomes: every version kept, one current outcome per decision.

Why a module of its own: outcomes arrive from four places at different times, and
training, off-policy evaluation and ``rapport impact`` must all see the same answer to
"what happened after this decision?". They read it through :func:`decision_outcomes`.

Sources (column ``source``):

- ``feedback``: ``POST /feedback``, through ``<home>/outbox/feedback`` and ``rapport
  ingest --outbox``;
- ``file``: the ``outcomes`` contract file (``decision_id, outcome, revenue,
  responded_at``, optional ``recorded_at``) loaded by ``rapport ingest``;
- ``campaign_log``: an outcome written inline in a campaign-log row (still valid input);
- ``attribution``: from orders (:func:`attribute`): an order placed within the action's
  ``attribution_days`` after a decision, strictly after it, is that decision's
  conversion. **Last touch**: an order counts for the customer's latest decision before
  it whose window it falls in, whatever the action (``no_action`` and control decisions
  included, with the same window rule, so treated and control are measured alike). The
  decision's revenue is the sum of the orders it won, ``responded_at`` the first of them.
  A decision whose window has closed (ends at or before the latest order loaded) without
  an order gets ``outcome = false, revenue = 0``; one whose window is still open stays
  unknown.

Rules:

- ``outcome_history`` keeps every version, never updated or deleted. A row is a *replay*
  (nothing changes) when the same source already stated the same content for the
  decision (for feedback: the same content *and* the same ``recorded_at``, i.e. the same
  accepted call), or when it states the same outcome and revenue as the decision's latest
  version of its tier (a client retrying a feedback; the first ``responded_at`` stays).
  Anything else is a new version; a new version after an earlier
  one of the same tier is flagged ``correction``.
- ``outcomes`` holds the current version per decision: explicit outcomes (feedback, file,
  campaign_log) take precedence over attribution; among them the latest ``recorded_at``
  wins (ties: the latest version).
- An outcome for a decision the campaign log does not hold (yet) is quarantined with a
  reason *and* kept in ``outcome_pending``: every later ingest retries it, and once the
  decision has arrived it lands and leaves the quarantine. ``POST /feedback`` cannot know
  whether a decision it is told about exists (decisions are written behind the answer),
  so it accepts the outcome and this rule does the matching.

All functions take the raw DuckDB connection inside the caller's transaction
(:mod:`features.ingest` calls :func:`record`, :func:`retry_pending`,
:func:`record_inline` and :func:`attribute` in its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from features.warehouse import raw, table_names

HISTORY, CURRENT, PENDING = "outcome_history", "outcomes", "outcome_pending"
#: the outbox folder ``POST /feedback`` appends to (outcome rows, see features.contract)
FEEDBACK = "feedback"
SOURCES = ("feedback", "file", "campaign_log", "attribution")
EXPLICIT = ("feedback", "file", "campaign_log")
#: the attribution window of an action that declares none (days), see models.catalog
DEFAULT_ATTRIBUTION_DAYS = 14
#: quarantine reason kind of an outcome whose decision is not (yet) in the campaign log
UNKNOWN_DECISION = "unknown decision"

_COLS = "decision_id, outcome, revenue, responded_at, source, recorded_at"
_CAND = "_rapport_outcome_candidates"
_NEW = "_rapport_outcome_new"


@dataclass(frozen=True)
class Attribution:
    """Attribution windows: days per action, ``default_days`` for any other action
    (``no_action`` and control decisions use the default)."""

    default_days: int = DEFAULT_ATTRIBUTION_DAYS
    days: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for action, n in {"(default)": self.default_days, **self.days}.items():
            if not 1 <= int(n) <= 365:
                raise ValueError(f"attribution window of {action} must be 1..365 days, got {n}")


@dataclass
class Versions:
    """What one load did to the outcomes."""

    read: int = 0
    new: int = 0
    corrections: int = 0
    replays: int = 0

    def __iadd__(self, other: Versions) -> Versions:
        self.read += other.read
        self.new += other.new
        self.corrections += other.corrections
        self.replays += other.replays
        return self


def ensure_tables(db: duckdb.DuckDBPyConnection) -> None:
    """Create the outcome tables (empty) if they do not exist yet."""
    typed = (
        "decision_id VARCHAR, outcome BOOLEAN, revenue DOUBLE, responded_at TIMESTAMPTZ, "
        "source VARCHAR, recorded_at TIMESTAMPTZ"
    )
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {HISTORY} ({typed}, version INTEGER, "
        "correction BOOLEAN, version_key UBIGINT, ingested_at TIMESTAMPTZ)"
    )
    db.execute(f"CREATE TABLE IF NOT EXISTS {CURRENT} ({typed})")
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {PENDING} ({typed}, row_json VARCHAR, reason VARCHAR, "
        "first_seen TIMESTAMPTZ)"
    )


def _ts(now: datetime) -> str:
    return f"TIMESTAMPTZ '{now.isoformat()}'"


def record(db: duckdb.DuckDBPyConnection, rows_sql: str, now: datetime) -> Versions:
    """Add the outcome rows ``rows_sql`` selects (columns :data:`_COLS`, decisions known)
    as versions, by the rules of the module docstring, and refresh the current outcomes."""
    ensure_tables(db)
    (read,) = _one(db, f"SELECT count(*) FROM ({rows_sql})")
    if not read:
        return Versions()
    key = (
        "hash(decision_id, source, outcome, revenue, responded_at, "
        "CASE WHEN source = 'feedback' THEN recorded_at END)"
    )
    tier = "CASE WHEN source = 'attribution' THEN 1 ELSE 0 END"
    rank = "CASE source WHEN 'feedback' THEN 0 WHEN 'file' THEN 1 ELSE 2 END"
    db.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_CAND} AS
        SELECT DISTINCT {_COLS}, {key} AS version_key, {tier} AS tier, {rank} AS rank
        FROM ({rows_sql})
    """)
    db.execute(f"DELETE FROM {_CAND} WHERE version_key IN (SELECT version_key FROM {HISTORY})")
    # the chain per (decision, tier): the stored latest version, then the new rows in time
    db.execute(f"""
        CREATE OR REPLACE TEMP TABLE {_NEW} AS
        WITH stored AS (
            SELECT * FROM (
                SELECT {_COLS}, version_key, {tier} AS tier, 0 AS rank, 0 AS fresh,
                       row_number() OVER (PARTITION BY decision_id, {tier}
                                          ORDER BY recorded_at DESC, version DESC) AS rn
                FROM {HISTORY} WHERE decision_id IN (SELECT decision_id FROM {_CAND}))
            WHERE rn = 1
        ),
        chain AS (
            SELECT {_COLS}, version_key, tier, rank, 0 AS fresh FROM stored
            UNION ALL SELECT {_COLS}, version_key, tier, rank, 1 AS fresh FROM {_CAND}
        ),
        lagged AS (
            SELECT *, lag(hash(outcome, revenue)) OVER w AS prev_content,
                   lag(decision_id) OVER w AS prev_id
            FROM chain
            WINDOW w AS (PARTITION BY decision_id, tier
                         ORDER BY recorded_at, fresh, rank DESC, version_key)
        )
        SELECT {_COLS}, version_key, prev_id IS NOT NULL AS correction FROM lagged
        WHERE fresh = 1 AND (prev_id IS NULL
                             OR prev_content <> hash(outcome, revenue))
    """)
    db.execute(f"""
        INSERT INTO {HISTORY}
        SELECT {_COLS},
            coalesce((SELECT max(version) FROM {HISTORY} h WHERE h.decision_id = n.decision_id),
                     0) + row_number() OVER (PARTITION BY decision_id
                                             ORDER BY recorded_at, version_key),
            correction, version_key, {_ts(now)}
        FROM {_NEW} n
    """)
    new, corrections = _one(db, f"SELECT count(*), count(*) FILTER (correction) FROM {_NEW}")
    _refresh_current(db)
    for temp in (_CAND, _NEW):
        db.execute(f"DROP TABLE IF EXISTS {temp}")
    return Versions(int(read), int(new), int(corrections), int(read) - int(new))


def _refresh_current(db: duckdb.DuckDBPyConnection) -> None:
    """Recompute the current outcome of the decisions that got a new version."""
    touched = f"(SELECT DISTINCT decision_id FROM {_NEW})"
    db.execute(f"DELETE FROM {CURRENT} WHERE decision_id IN {touched}")
    db.execute(f"""
        INSERT INTO {CURRENT}
        SELECT {_COLS} FROM (
            SELECT *, row_number() OVER (
                PARTITION BY decision_id
                ORDER BY source = 'attribution', recorded_at DESC, version DESC) AS rn
            FROM {HISTORY} WHERE decision_id IN {touched})
        WHERE rn = 1
    """)


def hold(db: duckdb.DuckDBPyConnection, rows_sql: str, now: datetime) -> None:
    """Keep outcome rows of unknown decisions (``rows_sql``: :data:`_COLS`, ``row_json``,
    ``reason``) for :func:`retry_pending`, once each."""
    ensure_tables(db)
    db.execute(f"""
        INSERT INTO {PENDING}
        SELECT DISTINCT {_COLS}, row_json, reason, {_ts(now)} FROM ({rows_sql}) s
        WHERE NOT EXISTS (SELECT 1 FROM {PENDING} p
                          WHERE p.row_json = s.row_json AND p.source = s.source)
    """)


def retry_pending(db: duckdb.DuckDBPyConnection, now: datetime, quarantine: str) -> Versions:
    """Land the pending outcomes whose decision has arrived; take them out of
    ``quarantine`` and of :data:`PENDING`."""
    ensure_tables(db)
    arrived = f"{PENDING} WHERE decision_id IN (SELECT decision_id FROM campaign_log)"
    (count,) = _one(db, f"SELECT count(*) FROM {arrived}")
    if not count:
        return Versions()
    done = record(db, f"SELECT {_COLS} FROM {arrived}", now)
    db.execute(f"""
        DELETE FROM {quarantine} q USING (SELECT row_json, reason FROM {arrived}) p
        WHERE q.table_name = 'outcomes' AND q.row_json = p.row_json AND q.reason = p.reason
    """)
    db.execute(f"DELETE FROM {arrived}")
    return done


def record_inline(db: duckdb.DuckDBPyConnection, now: datetime) -> Versions:
    """Campaign-log rows written with their outcome become ``campaign_log`` versions
    (recorded at their response time, else their decision time)."""
    ensure_tables(db)
    rows = f"""
        SELECT decision_id, outcome, revenue, responded_at, 'campaign_log' AS source,
               coalesce(responded_at, decided_at) AS recorded_at
        FROM campaign_log c WHERE outcome IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {HISTORY} h
            WHERE h.decision_id = c.decision_id AND h.source = 'campaign_log')
    """
    return record(db, rows, now)


def attribute(
    db: duckdb.DuckDBPyConnection, now: datetime, windows: Attribution | None = None
) -> Versions:
    """Outcomes from orders by last touch within each action's window (module docstring)."""
    ensure_tables(db)
    windows = windows or Attribution()
    db.execute("CREATE OR REPLACE TEMP TABLE _rapport_windows (action VARCHAR, days INTEGER)")
    if windows.days:
        db.executemany(
            "INSERT INTO _rapport_windows VALUES (?, ?)",
            [(a, int(n)) for a, n in windows.days.items()],
        )
    default = windows.default_days
    days = (
        f"CASE WHEN {_group_sql(db, 'c')} = 'control' THEN {default} "
        f"ELSE coalesce(w.days, {default}) END"
    )
    rows = f"""
        WITH d AS (
            SELECT c.decision_id, c.customer_id, c.decided_at,
                   c.decided_at + to_days({days}) AS ends
            FROM campaign_log c LEFT JOIN _rapport_windows w ON w.action = c.action
        ),
        touch AS (
            SELECT o.ordered_at, o.amount, d.decision_id,
                   row_number() OVER (PARTITION BY o.order_id
                                      ORDER BY d.decided_at DESC, d.decision_id DESC) AS rn
            FROM orders o JOIN d ON d.customer_id = o.customer_id
                 AND o.ordered_at > d.decided_at AND o.ordered_at <= d.ends
        ),
        won AS (
            -- rounded to cents: a parallel sum's last bits differ between runs
            SELECT decision_id, round(sum(amount), 2) AS revenue, min(ordered_at) AS responded_at
            FROM touch WHERE rn = 1 GROUP BY decision_id
        )
        SELECT d.decision_id, won.decision_id IS NOT NULL AS outcome,
               coalesce(won.revenue, 0.0) AS revenue, won.responded_at,
               'attribution' AS source, {_ts(now)} AS recorded_at
        FROM d LEFT JOIN won ON won.decision_id = d.decision_id
        WHERE won.decision_id IS NOT NULL
           OR d.ends <= (SELECT max(ordered_at) FROM orders)
    """
    done = record(db, rows, now)
    db.execute("DROP TABLE _rapport_windows")
    return done


def _group_sql(db: duckdb.DuckDBPyConnection, alias: str) -> str:
    """The campaign log's ``group`` column when it has one, else NULL."""
    cols = {r[0] for r in db.execute("DESCRIBE campaign_log").fetchall()}
    return f'{alias}."group"' if "group" in cols else "NULL::VARCHAR"


def _db(con: Any) -> duckdb.DuckDBPyConnection:
    return con if isinstance(con, duckdb.DuckDBPyConnection) else raw(con)


def decision_outcomes(
    con: Any,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    known: bool = False,
    with_outcome: bool = False,
    before: datetime | None = None,
    share: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Every logged decision (decided at or after ``since``, at or before ``until`` and
    strictly before ``before``) with its current outcome; ``known``: only those with a
    group and a known outcome, ``with_outcome``: only those with a known outcome (both
    filtered in the warehouse, not after reading every decision); ``share`` below 1: a
    uniform sample of the decisions, each kept when a hash of its id and ``seed`` falls
    under the share (the same log and seed keep the same decisions), drawn in the
    warehouse so only the sample is read.

    Columns: decision_id, customer_id, decided_at, action, channel, propensity, group
    (null when the campaign log has no such column), outcome, revenue, responded_at,
    outcome_source (null: unknown yet). An inline campaign-log outcome counts even where
    :func:`record_inline` has not run (a warehouse written by other means).
    """
    db = _db(con)
    joined, group, inline, outcome = _current(db)
    conditions = [
        *([] if since is None else [f"c.decided_at >= {_ts(since)}"]),
        *([] if until is None else [f"c.decided_at <= {_ts(until)}"]),
        *([] if before is None else [f"c.decided_at < {_ts(before)}"]),
        *([] if not known else [f"({group}) IS NOT NULL AND ({outcome}) IS NOT NULL"]),
        *([] if not with_outcome else [f"({outcome}) IS NOT NULL"]),
        *([] if share >= 1.0 else [_sampled("c.decision_id", share, seed)]),
    ]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return db.execute(f"""
        SELECT c.decision_id, c.customer_id, c.decided_at, c.action, c.channel, c.propensity,
               {group} AS "group",
               {outcome} AS outcome,
               CASE WHEN {inline} THEN c.revenue ELSE o.revenue END AS revenue,
               CASE WHEN {inline} THEN c.responded_at ELSE o.responded_at END AS responded_at,
               CASE WHEN {inline} THEN 'campaign_log' ELSE o.source END AS outcome_source
        FROM campaign_log c {joined} {where}
        ORDER BY c.decided_at, c.decision_id
    """).df()


def decisions_with_outcome(con: Any, before: datetime | None = None) -> int:
    """How many logged decisions (strictly before ``before``) have a known current
    outcome: what :func:`decision_outcomes` with ``with_outcome`` reads, counted in the
    warehouse (a sample's share is taken of these)."""
    db = _db(con)
    joined, _, _, outcome = _current(db)
    where = f"WHERE ({outcome}) IS NOT NULL"
    if before is not None:
        where += f" AND c.decided_at < {_ts(before)}"
    found = db.execute(f"SELECT count(*) FROM campaign_log c {joined} {where}").fetchone()
    return int(found[0]) if found else 0


def _current(db: duckdb.DuckDBPyConnection) -> tuple[str, str, str, str]:
    """SQL of a decision's current outcome over ``campaign_log c``: the join to the current
    outcomes, the group, when the inline outcome counts, and the outcome (explicit current
    outcome, else the inline one, else attribution)."""
    tables = table_names(db)
    if "campaign_log" not in tables:
        raise LookupError("the warehouse has no campaign_log: run `rapport ingest` first")
    group = _group_sql(db, "c")
    if CURRENT in tables:
        joined = f"LEFT JOIN {CURRENT} o ON o.decision_id = c.decision_id"
    else:
        joined = (
            "LEFT JOIN (SELECT NULL::VARCHAR AS decision_id, NULL::BOOLEAN AS outcome, "
            "NULL::DOUBLE AS revenue, NULL::TIMESTAMPTZ AS responded_at, "
            "NULL::VARCHAR AS source) o ON false"
        )
    inline = (
        "(o.source IS DISTINCT FROM 'feedback' AND o.source IS DISTINCT FROM 'file' "
        "AND c.outcome IS NOT NULL)"
    )
    return joined, group, inline, f"CASE WHEN {inline} THEN c.outcome ELSE o.outcome END"


def _sampled(column: str, share: float, seed: int) -> str:
    """SQL keeping a uniform ``share`` of the rows by a hash of ``column`` and ``seed``."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"a sample's share must be in (0, 1], got {share}")
    return f"hash({column}, {int(seed)}) % 1000000 < {round(share * 1_000_000)}"


def history(con: Any, decision_id: str | None = None) -> pd.DataFrame:
    """Every version (optionally of one decision), oldest first."""
    db = _db(con)
    tables = table_names(db)
    if HISTORY not in tables:
        return pd.DataFrame(columns=[*_COLS.split(", "), "version", "correction", "ingested_at"])
    where, params = ("WHERE decision_id = ?", [decision_id]) if decision_id else ("", [])
    return db.execute(
        f"SELECT * EXCLUDE (version_key) FROM {HISTORY} {where} ORDER BY decision_id, version",
        params,
    ).df()


def _one(db: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    row = db.execute(sql).fetchone()
    assert row is not None
    return row
