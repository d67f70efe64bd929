"""What the pages show, read from the warehouse on a read-only connection per request.

Every reader takes a raw DuckDB connection and returns plain frames / dicts; a table that
does not exist yet gives an empty answer (the page then says which command fills it),
never an error. The readers reuse the table modules' own loaders (``features.tables``);
what is read here directly are the few aggregates no loader offers (KPIs, profiles,
recent events).

:class:`CachedLists` is the list builder's preview source: the
:class:`models.targeting.ListSource` port over :class:`features.tables.lists.WarehouseLists`,
keeping the candidates (a run's scores, and each feature column computed as of its read
in a :class:`FeatureColumns`) so a marketer typing a filter sees the preview change
without a read. Saving a list uses the same candidates (what was previewed is what is
saved; the suppressions are read afresh) and only writes.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.batch import finish, normalize_raw, raw_expression
from features.contract import CONTROL, TABLES
from features.control import ControlGroup
from features.segments import SegmentModel, segment_rule
from features.spec import Agg, Derived, FeatureSpec
from features.tables import analytics as analytics_tables
from features.tables import monitoring as monitoring_tables
from features.tables.cycle import CHANGES as CYCLE_CHANGES
from features.tables.cycle import RUNS as CYCLE_RUNS
from features.tables.cycle import STEPS as CYCLE_STEPS
from features.tables.lists import (
    TARGET_LISTS,
    TARGET_MEMBERS,
    WarehouseLists,
    WarehouseUnavailableError,
)
from features.tables.scores import (
    RUNS,
    SCORES,
    NoScoresError,
    RunInfo,
    latest_run,
    load_scores,
)
from features.tables.segments import NoSegmentsError, load_version
from features.tables.snapshots import FEATURES_FILE
from features.tables.snapshots import published as published_run
from features.timeutil import as_utc
from features.warehouse import connect, raw, table_names
from models.catalog import Catalog
from models.targeting import feature_subset

#: customers of a segment whose churn drivers its profile sums up
REASON_SAMPLE = 300
#: the table the impact job (`rapport impact`) writes; read when present
IMPACT = "impact"
#: what the Results page shows of the latest impact run (the table holds more)
IMPACT_COLUMNS = (
    "period",
    "by",
    "key",
    "treated_customers",
    "control_customers",
    "treated_converted",
    "control_converted",
    "treated_revenue",
    "control_revenue",
    "incremental_value",
    "incremental_value_lo",
    "incremental_value_hi",
)


class WarehouseLock:
    """Readers together, a writer alone, within the page's process: DuckDB refuses a
    read-write connection to a file this process has open read-only (a save beside a
    preview, or beside a background refresh). Readers do not wait for a waiting writer
    (a read may open a second read inside the first); a background read that can be
    done again later (:meth:`yielding`) is interrupted when a writer comes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0
        self._yielding: list[Callable[[], None]] = []
        #: when the latest write ended (monotonic seconds)
        self._written = -math.inf

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def yielding(self, interrupt: Callable[[], None]) -> Iterator[None]:
        """Inside a :meth:`read`: a writer that comes calls ``interrupt`` (which makes the
        read fail soon) rather than wait for the read; refused at once while a writer
        waits."""
        with self._cond:
            if self._waiting:
                raise WarehouseUnavailableError("a save is waiting: read later")
            self._yielding.append(interrupt)
        try:
            yield
        finally:
            with self._cond:
                self._yielding.remove(interrupt)

    @contextlib.contextmanager
    def write(self, timeout: float = 120.0) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                for interrupt in self._yielding:
                    with contextlib.suppress(Exception):
                        interrupt()
                if not self._cond.wait_for(
                    lambda: not self._writing and not self._readers, timeout
                ):
                    raise WarehouseUnavailableError(
                        "the page is still reading the warehouse: try again"
                    )
            finally:
                self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._written = time.monotonic()
                self._cond.notify_all()

    def unwritten_for(self, seconds: float) -> bool:
        """No writer now, none waiting, and none in the last ``seconds``: a background
        read started now is unlikely to be interrupted by the next save of a series."""
        with self._cond:
            busy = self._writing or self._waiting
            return not busy and time.monotonic() - self._written >= seconds


#: the page's one lock on its warehouse connections
WAREHOUSE = WarehouseLock()


@contextlib.contextmanager
def own_lists(path: Path) -> Iterator[WarehouseLists]:
    """A :class:`WarehouseLists` on a read-only connection of its own, under the lock."""
    with WAREHOUSE.read(), WarehouseLists(path) as lists:
        yield lists


@contextlib.contextmanager
def reading(path: Path) -> Iterator[Any]:
    """A raw read-only DuckDB connection to the warehouse for one request."""
    if not Path(path).exists():
        raise WarehouseUnavailableError(f"no warehouse at {path}: run `rapport demo` first")
    with WAREHOUSE.read():
        try:
            con = connect(path, read_only=True)
        except Exception as exc:  # locked by a writer
            raise WarehouseUnavailableError(f"cannot read the warehouse now: {exc}") from None
        try:
            yield raw(con)
        finally:
            con.disconnect()


def _frame(db: Any, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    return db.execute(sql, list(params)).to_arrow_table().to_pandas()


def run_control(db: Any, run: RunInfo) -> ControlGroup | None:
    """The control group (share, salt) the scoring run held out, None if it recorded
    none (runs before the control group)."""
    with contextlib.suppress(Exception):  # no such columns yet
        row = db.execute(
            f"SELECT control_share, control_salt FROM {RUNS} WHERE run_id = ?", [run.run_id]
        ).fetchone()
        if row is not None and row[0] is not None and row[1] is not None:
            return ControlGroup(float(row[0]), str(row[1]))
    return None


def score_run(db: Any) -> RunInfo | None:
    try:
        return latest_run(db)
    except NoScoresError:
        return None


# --------------------------------------------------------------------------- overview
def overview(db: Any) -> dict[str, Any]:
    """KPIs with their trend and the latest scoring, analytics, monitoring and cycle runs
    (the monthly revenue apart: :func:`monthly_revenue`)."""
    have = table_names(db)
    out: dict[str, Any] = {"scores": score_run(db), "analytics": None, "trend": []}
    out["customers"] = (
        db.execute("SELECT count(*) FROM customers").fetchone()[0] if "customers" in have else 0
    )
    try:
        run = analytics_tables.latest_run(db)
    except analytics_tables.NoAnalyticsError:
        run = None
    if run is not None:
        out["analytics"] = run
        retention = _frame(
            db,
            "SELECT period_start, active, retention_rate FROM analytics_retention "
            "WHERE run_id = ? AND dimension = 'overall' ORDER BY period_start",
            [run.run_id],
        )
        equity = _frame(
            db,
            "SELECT equity, previous_equity FROM analytics_equity WHERE run_id = ?",
            [run.run_id],
        )
        out["equity"] = equity.iloc[0].to_dict() if len(equity) else None
        out["trend"] = retention.to_dict(orient="records")
        out["active"] = run.metrics.get("active_customers")
    if out["scores"] is not None:
        churn = db.execute(
            f"SELECT avg(churn_probability), sum(value_mean) FROM {SCORES} WHERE run_id = ?",
            [out["scores"].run_id],
        ).fetchone()
        out["mean_churn"], out["scored_value"] = churn
    out["monitor"] = monitor_status(db)
    out["cycle"] = cycle_status(db)
    return out


def monthly_revenue(db: Any) -> list[dict[str, Any]]:
    """Revenue of the last 13 full calendar months (UTC), oldest first; empty without
    orders."""
    if "orders" not in table_names(db):
        return []
    revenue = _frame(
        db,
        # UTC months through the epoch: 3-8x faster than date_trunc on TIMESTAMPTZ
        "SELECT date_trunc('month', make_timestamp(epoch_us(ordered_at))) AS month, "
        "sum(amount) AS revenue FROM orders GROUP BY 1 ORDER BY 1 DESC LIMIT 14",
    )
    # the latest month is still running: full months only
    return revenue.iloc[1:][::-1].to_dict(orient="records")  # type: ignore[no-any-return]


def monitor_status(db: Any) -> dict[str, Any] | None:
    """The latest monitoring run's row (checks, warnings, alerts), or None."""
    if monitoring_tables.RUNS not in table_names(db):
        return None
    rows = _frame(db, f"SELECT * FROM {monitoring_tables.RUNS} ORDER BY checked_at DESC LIMIT 1")
    return rows.iloc[0].to_dict() if len(rows) else None


def cycle_status(db: Any) -> dict[str, Any] | None:
    """The latest cycle run with its steps and the latest champion change, or None."""
    have = table_names(db)
    if CYCLE_RUNS not in have:
        return None
    runs = _frame(db, f"SELECT * FROM {CYCLE_RUNS} ORDER BY started_at DESC LIMIT 1")
    if not len(runs):
        return None
    run = runs.iloc[0].to_dict()
    if CYCLE_STEPS in have:
        steps = _frame(
            db, f"SELECT * FROM {CYCLE_STEPS} WHERE run_id = ? ORDER BY started_at", [run["run_id"]]
        )
        run["steps"] = steps.to_dict(orient="records")
    if CYCLE_CHANGES in have:
        changes = _frame(db, f"SELECT * FROM {CYCLE_CHANGES} ORDER BY changed_at DESC LIMIT 5")
        run["changes"] = changes.to_dict(orient="records")
    return run


# --------------------------------------------------------------------------- segments
def segment_map(db: Any) -> tuple[Any, pd.DataFrame, pd.DataFrame]:
    """(analytics run or None, segment map, RFM migration matrix as a pivot)."""
    try:
        run = analytics_tables.latest_run(db)
    except analytics_tables.NoAnalyticsError:
        return None, pd.DataFrame(), pd.DataFrame()
    points = _frame(
        db,
        "SELECT * EXCLUDE (run_id) FROM analytics_segment_map WHERE run_id = ? "
        "ORDER BY equity DESC",
        [run.run_id],
    )
    moves = _frame(
        db,
        "SELECT from_state, to_state, probability FROM analytics_migration WHERE run_id = ? "
        "AND kind = 'rfm_segment' AND customer_group = 'all'",
        [run.run_id],
    )
    matrix = pd.DataFrame()
    if len(moves):
        matrix = moves.pivot_table(
            index="from_state", columns="to_state", values="probability", fill_value=0.0
        )
    return run, points, matrix


def segment_profiles(db: Any) -> dict[str, dict[str, Any]]:
    """Every RFM segment's profile in the latest scores, in one pass per part (the page
    keeps them: a run's scores never change): size, value, churn risk, equity, tiers, the
    rule that puts customers there, consent per channel and best actions (with how many of
    each can be reached on its channel with today's consent); ``sample``: up to
    :data:`REASON_SAMPLE` of its customers (a fixed hash order), whose churn drivers the
    page sums up. Empty without scores."""
    run = score_run(db)
    if run is None:
        return {}
    params = [run.run_id]
    sizes = _frame(
        db,
        "SELECT rfm_segment AS segment, count(*) AS customers, avg(value_mean) AS value, "
        "avg(churn_probability) AS churn, sum(value_mean) AS equity "
        f"FROM {SCORES} WHERE run_id = ? GROUP BY 1",
        params,
    )
    catalog = Catalog.model_validate(run.catalog)
    have = _columns(db, "customers")
    consenting = [a for a in catalog.actions if a.consent_field and a.consent_field in have]
    fields = {a.channel: a.consent_field for a in consenting}
    reachable = "true"
    if consenting:
        cases = " ".join(
            f"WHEN '{a.id}' THEN coalesce(c.{a.consent_field}::DOUBLE, 0) > 0" for a in consenting
        )
        reachable = f"CASE s.best_action {cases} ELSE NULL END"
    joined = f"FROM {SCORES} s" + (" LEFT JOIN customers c USING (customer_id)" if have else "")
    joined += " WHERE s.run_id = ?"
    channels = {a.id: a.channel for a in catalog.actions}
    actions = _frame(
        db,
        "SELECT s.rfm_segment AS segment, s.best_action AS action, count(*) AS customers, "
        f"sum(s.expected_value) AS value, count_if({reachable}) AS reachable "
        f"{joined} GROUP BY 1, 2 ORDER BY 1, 3 DESC",
        params,
    )
    actions["channel"] = actions["action"].map(channels)
    tiers = _frame(
        db,
        "SELECT rfm_segment AS segment, abc_tier AS tier, count(*) AS customers "
        f"FROM {SCORES} WHERE run_id = ? GROUP BY 1, 2 ORDER BY 1, 2",
        params,
    )
    consent = pd.DataFrame({"segment": []})
    if fields:
        counts = ", ".join(
            f'count_if(coalesce(c.{name}::DOUBLE, 0) > 0) AS "{channel}"'
            for channel, name in fields.items()
        )
        consent = _frame(
            db, f"SELECT s.rfm_segment AS segment, {counts} {joined} GROUP BY 1", params
        )
    samples = _frame(
        db,
        "SELECT rfm_segment AS segment, list(customer_id ORDER BY h) AS ids FROM ("
        "SELECT rfm_segment, customer_id, hash(customer_id) AS h, row_number() OVER "
        "(PARTITION BY rfm_segment ORDER BY hash(customer_id)) AS n "
        f"FROM {SCORES} WHERE run_id = ?) WHERE n <= {REASON_SAMPLE} GROUP BY 1",
        params,
    )
    model = segment_model_of(db, run)
    by_action = dict(iter(actions.groupby("segment")))
    by_tier = dict(iter(tiers.groupby("segment")))
    by_consent = consent.set_index("segment").to_dict(orient="index")
    by_sample = dict(zip(samples["segment"], samples["ids"], strict=True))
    out = {}
    for row in sizes.to_dict(orient="records"):
        name = str(row["segment"])
        rule = None
        if model is not None:
            with contextlib.suppress(KeyError):
                rule = segment_rule(name, model)
        out[name] = {
            **row,
            "segment": name,
            "customers": int(row["customers"]),
            "actions": _records(
                by_action.get(name), ["action", "channel", "customers", "value", "reachable"]
            ),
            "tiers": _records(by_tier.get(name), ["tier", "customers"]),
            "consent": {k: int(v) for k, v in by_consent.get(name, {}).items()},
            "rule": rule,
            "sample": [str(c) for c in by_sample.get(name, [])],
        }
    return out


def _records(frame: pd.DataFrame | None, columns: list[str]) -> list[dict[str, Any]]:
    return [] if frame is None else frame[columns].to_dict(orient="records")


def segment_model_of(db: Any, run: RunInfo) -> SegmentModel | None:
    """The segment model (cut points) the run scored with; None when it recorded none."""
    row = db.execute(f"SELECT segments_version FROM {RUNS} WHERE run_id = ?", [run.run_id])
    version = (row.fetchone() or [None])[0]
    try:
        return load_version(db, version).model if version else None
    except NoSegmentsError:
        return None


def _columns(db: Any, table: str) -> set[str]:
    rows = db.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]
    ).fetchall()
    return {r[0] for r in rows}


# --------------------------------------------------------------------------- lists
def list_history(db: Any, limit: int = 200) -> pd.DataFrame:
    """The audit record of the lists made, newest first (empty before the first)."""
    if TARGET_LISTS not in table_names(db):
        return pd.DataFrame()
    return _frame(
        db,
        f"SELECT list_id, name, created_at, run_id, filter, action, budget, top, customers, "
        f"total_expected_value, total_cost, basis, output FROM {TARGET_LISTS} "
        f"ORDER BY created_at DESC LIMIT {int(limit)}",
    )


def list_row(db: Any, list_id: str) -> dict[str, Any] | None:
    if TARGET_LISTS not in table_names(db):
        return None
    rows = _frame(db, f"SELECT * FROM {TARGET_LISTS} WHERE list_id = ?", [list_id])
    return rows.iloc[0].to_dict() if len(rows) else None


def list_members(db: Any, list_id: str) -> pd.DataFrame:
    """A recorded list's members as audited (rank, customer, action, value, cost)."""
    return _frame(
        db,
        f"SELECT * EXCLUDE (list_id) FROM {TARGET_MEMBERS} WHERE list_id = ? ORDER BY rank",
        [list_id],
    )


# --------------------------------------------------------------------------- customer
def customer(db: Any, customer_id: str) -> dict[str, Any] | None:
    """One customer: attributes, latest scores, analytics, recent orders / contacts."""
    have = table_names(db)
    if "customers" not in have:
        return None
    rows = _frame(db, "SELECT * FROM customers WHERE customer_id = ?", [customer_id])
    if not len(rows):
        return None
    out: dict[str, Any] = {"attributes": rows.iloc[0].to_dict()}
    run = score_run(db)
    if run is not None:
        scores = _frame(
            db,
            f"SELECT * FROM {SCORES} WHERE run_id = ? AND customer_id = ?",
            [run.run_id, customer_id],
        )
        out["scores"] = scores.iloc[0].to_dict() if len(scores) else None
        out["run"] = run
    recent = {
        "orders": "SELECT ordered_at AS happened_at, 'order' AS kind, amount, "
        "category AS detail FROM orders WHERE customer_id = ?",
        "interactions": "SELECT occurred_at AS happened_at, kind, NULL::DOUBLE AS amount, "
        "channel AS detail FROM interactions WHERE customer_id = ?",
        "campaign_log": "SELECT decided_at AS happened_at, 'campaign: ' || action AS kind, "
        "revenue AS amount, channel AS detail FROM campaign_log WHERE customer_id = ?",
    }
    parts = [sql for table, sql in recent.items() if table in have]
    if parts:
        union = " UNION ALL ".join(f"({p})" for p in parts)
        query = f"SELECT * FROM ({union}) ORDER BY happened_at DESC LIMIT 15"
        out["events"] = _frame(db, query, [customer_id] * len(parts)).to_dict(orient="records")
    return out


def some_customers(db: Any, n: int = 5) -> list[str]:
    """A few customers worth looking at: the most valuable of the latest scores."""
    run = score_run(db)
    if run is None:
        return []
    rows = db.execute(
        f"SELECT customer_id FROM {SCORES} WHERE run_id = ? ORDER BY value_mean DESC LIMIT ?",
        [run.run_id, n],
    ).fetchall()
    return [str(r[0]) for r in rows]


# --------------------------------------------------------------------------- results
def impact(db: Any) -> pd.DataFrame | None:
    """The impact table (`rapport impact`: realised incremental value vs control), or None
    when it does not exist yet."""
    if IMPACT not in table_names(db):
        return None
    latest = _frame(
        db, f"SELECT * FROM {IMPACT} WHERE computed_at = (SELECT max(computed_at) FROM {IMPACT})"
    )
    shown = [c for c in IMPACT_COLUMNS if c in latest.columns]
    return latest[shown] if shown else latest


def model_health(db: Any) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """The latest monitoring run and its checks, worst level first."""
    status = monitor_status(db)
    if status is None:
        return None, pd.DataFrame()
    checks = monitoring_tables.load_checks(db, status["run_id"])
    order = {"alert": 0, "warn": 1}  # the levels of models.alerts
    checks = checks.assign(_o=checks["level"].map(order).fillna(2)).sort_values(["_o", "kind"])
    return status, checks.drop(columns="_o")


# --------------------------------------------------------------------------- preview source
class PreviewCache:
    """Values kept per key for the requests of a process: fresh for ``ttl`` seconds;
    then, up to ``max_age``, still served while one background thread reads them again (a
    marketer never waits for a re-read); beyond ``max_age``, read again in the request.
    One read per key at a time: a request that finds a read under way waits for it rather
    than starting another. A ``lasting`` value (a scoring run's scores: they never
    change) is always fresh; it replaces the lasting values of the same kind (the key's
    first part), so one run's scores are kept at a time."""

    def __init__(self, ttl: float = 120.0, max_age: float = 600.0) -> None:
        self.ttl = ttl
        self.max_age = max_age
        self._items: dict[tuple[Any, ...], tuple[float, Any, bool]] = {}
        self._lock = threading.Lock()
        self._reading: dict[tuple[Any, ...], threading.Event] = {}

    def get(self, key: tuple[Any, ...], make: Callable[[], Any], lasting: bool = False) -> Any:
        while True:
            now = time.monotonic()
            with self._lock:
                hit = self._items.get(key)
                age = now - hit[0] if hit is not None else math.inf
                busy = self._reading.get(key)
                if hit is not None and (hit[2] or age < self.ttl):
                    return hit[1]
                if hit is not None and age < self.max_age:
                    if busy is None:  # stale: serve it, refresh behind the request
                        self._reading[key] = threading.Event()
                        threading.Thread(
                            target=self._read,
                            args=(key, make, lasting),
                            daemon=True,
                            name="ui-refresh",
                        ).start()
                    return hit[1]
                if busy is None:
                    self._reading[key] = threading.Event()
                    break
            busy.wait()  # someone reads it now: take theirs
        return self._read(key, make, lasting)

    def peek(self, key: tuple[Any, ...]) -> Any:
        """The value under ``key`` while fresh, else None."""
        with self._lock:
            hit = self._items.get(key)
        if hit is None or not (hit[2] or time.monotonic() - hit[0] < self.ttl):
            return None
        return hit[1]

    def _read(self, key: tuple[Any, ...], make: Callable[[], Any], lasting: bool) -> Any:
        try:
            value = make()
            now = time.monotonic()
            with self._lock:
                self._items = {
                    k: v
                    for k, v in self._items.items()
                    if (v[2] and not (lasting and k[0] == key[0])) or now - v[0] < self.max_age
                }
                self._items[key] = (now, value, lasting)
            return value
        finally:
            with self._lock:
                self._reading.pop(key).set()


class ControlMemo:
    """Who is in the control group, per salt and share, for the customers seen so far:
    hashing a million ids takes seconds, looking them up a fraction of one, and the same
    ids in the same order (the candidates of every preview of a run) a comparison."""

    def __init__(self) -> None:
        self._known: dict[tuple[float, str], pd.Series] = {}
        self._lock = threading.Lock()
        #: one hashing at a time: a preview that comes while the page's start-up hashes
        #: the run's customers waits for it rather than hashing them beside it
        self._hashing = threading.Lock()

    def mask(self, group: ControlGroup, customer_ids: Any) -> np.ndarray:
        ids = pd.Index(pd.Series(customer_ids).astype(str))  # no copy of str ids
        key = (group.share, group.salt)
        found = self._lookup(key, ids)
        if found is not None:
            return found
        with self._hashing:
            found = self._lookup(key, ids)  # hashed while this one waited
            if found is not None:
                return found
            computed = ControlGroup(group.share, group.salt).mask(ids)
            fresh = pd.Series(computed, index=ids)
            fresh = fresh[~fresh.index.duplicated()]
            with self._lock:
                self._known = {key: fresh}  # one salt and share at a time
        return computed

    def seed(self, group: ControlGroup, ids: pd.Index, members: np.ndarray) -> None:
        """Remember ``members`` (which of ``ids`` are in ``group``, as the hash says:
        a scoring run's ``group`` column) unless the memo already holds these ids."""
        key = (group.share, group.salt)
        with self._lock:
            known = self._known.get(key)
            if known is not None and known.index is ids:
                return
            fresh = pd.Series(np.asarray(members, dtype=bool), index=ids)
            if not ids.is_unique:
                fresh = fresh[~fresh.index.duplicated()]
            self._known = {key: fresh}

    def _lookup(self, key: tuple[float, str], ids: pd.Index) -> np.ndarray | None:
        with self._lock:
            known = self._known.get(key)
        if known is None:
            return None
        if known.index.equals(ids):  # the same customers in order
            return known.to_numpy(dtype=bool)
        found = known.reindex(ids)
        return None if found.isna().any() else found.to_numpy(dtype=bool)


@dataclass(frozen=True)
class MemoControl(ControlGroup):
    """A :class:`ControlGroup` whose :meth:`mask` looks customers up in a
    :class:`ControlMemo` (the same answers: the memo holds the hash's)."""

    memo: ControlMemo = field(default_factory=ControlMemo, compare=False, repr=False)

    @classmethod
    def of(cls, group: ControlGroup, memo: ControlMemo) -> MemoControl:
        return cls(group.share, group.salt, memo)

    def mask(self, customer_ids: Iterable[object]) -> np.ndarray:
        if self.share <= 0:
            return super().mask(customer_ids)
        return self.memo.mask(self, customer_ids)


@dataclass(frozen=True)
class RunScores:
    """One scoring run's scores (one row per customer) and their ids as an index (the
    feature columns are aligned with its rows)."""

    frame: pd.DataFrame
    index: pd.Index
    #: the control group the run held out (its share and salt) and who was in it (the
    #: scores' ``group``: the same hash, so the same answers while the salt and share
    #: stay those of the run); None when the run recorded none
    control: ControlGroup | None = None
    held_out: np.ndarray | None = None

    @cached_property
    def rows(self) -> pa.Table:
        """The customers and their row numbers, for a join in DuckDB (the feature
        column reads place what they compute by it)."""
        ids = pa.array(self.index.to_numpy(dtype=object), pa.string())
        return pa.table({"customer_id": ids, ROW: pa.array(np.arange(len(ids)), pa.int64())})


@dataclass(frozen=True)
class Column:
    """One feature column aligned with a run's scores, and when it was computed;
    ``snapshot``: the scoring run's own (computed as of the run, published with it), served
    until the fresh one is read."""

    as_of: datetime
    values: np.ndarray
    snapshot: bool = False


def _aligned(index: pd.Index, ids: Any, values: np.ndarray, at: np.ndarray | None = None) -> Any:
    """``values`` (one per id of ``ids``) placed on the rows of ``index`` (nulls where a
    customer has none, as in a left join); ``at``: the rows, when already known."""
    if at is None:
        at = index.get_indexer(pd.Series(ids).astype(str).to_numpy(dtype=object))
    found = at >= 0
    kind = object if values.dtype == object else np.float64
    out = np.full(len(index), np.nan, dtype=kind)
    out[at[found]] = values[found]
    return out


#: how long the background reader waits for the previews under way before it reads
READER_PATIENCE = 10.0
#: seconds after a save before the background reader starts a read (or a part of one)
WRITE_QUIET = 3.0


class FeatureColumns:
    """Feature columns of the latest scoring run's customers, each computed as of its
    read (one pass per event table, only the features named): fresh for ``ttl`` seconds;
    then, up to ``max_age``, still served while the background reader computes them
    again; beyond ``max_age`` (or never read) read before they are served. A preview on
    features already read reads nothing.

    With the run's published snapshot (``snapshots``, :mod:`features.tables.snapshots`),
    a preview never waits for a read over the events: a column not read yet is taken from
    the snapshot's features (one Parquet column, computed as of the scoring run, marked
    ``snapshot``) while the background reader computes the fresh one, which then replaces
    it. A save asks for ``fresh`` columns only (what ``rapport targets`` computes): it
    waits for a read under way and reads the rest itself.

    One background reader at a time (a thread that reads every column asked for since
    its last read, one query per table (:func:`read_parts`), each part kept as soon as it
    is read; it starts a read, and each part of one, when no preview is under way and no
    list was saved for :data:`WRITE_QUIET` seconds; a save interrupts the part under way,
    :meth:`WarehouseLock.yielding`, which the next request that finds those columns
    missing or stale asks for again, the finished parts kept)."""

    def __init__(
        self,
        spec: FeatureSpec,
        warehouse: Path,
        ttl: float = 120.0,
        max_age: float = 600.0,
        snapshots: Path | None = None,
    ) -> None:
        self.spec = spec
        #: the one warehouse every column is read from (the columns are kept by run id)
        self.warehouse = warehouse
        self.ttl = ttl
        self.max_age = max_age
        self.snapshots = snapshots
        self._columns: dict[tuple[str, str], tuple[float, Column]] = {}
        #: the snapshot's columns of a run (they never change) and its rows in the scores'
        self._published: dict[tuple[str, str], Column] = {}
        self._rows: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        #: columns being read now (by a request or the background reader), one read each
        self._reading: dict[tuple[str, str], threading.Event] = {}
        #: what the background reader reads next: (run, scores) and the names
        self._queued: dict[str, tuple[tuple[RunInfo, RunScores], set[str]]] = {}
        self._reader: threading.Thread | None = None
        #: previews under way: the background reader starts a read between them
        self._previews = 0

    @contextlib.contextmanager
    def previewing(self) -> Iterator[None]:
        """Around a preview: the background reader waits for it (up to
        :data:`READER_PATIENCE` seconds) before it starts a read, so a read over the
        events (both cores for seconds) does not start beside a preview a marketer
        waits for."""
        with self._lock:
            self._previews += 1
        try:
            yield
        finally:
            with self._lock:
                self._previews -= 1

    def wait_quiet(self) -> None:
        """Wait until no preview is under way and no list was saved in the last
        :data:`WRITE_QUIET` seconds (at most :data:`READER_PATIENCE` s): a save
        interrupts a background read, and saves in a row would interrupt it again."""
        deadline = time.monotonic() + READER_PATIENCE
        while time.monotonic() < deadline:
            with self._lock:
                previews = self._previews
            if not previews and WAREHOUSE.unwritten_for(WRITE_QUIET):
                return
            time.sleep(0.05)

    def get(self, run: RunInfo, name: str, within: float | None = None) -> Column | None:
        """The fresh column ``name`` of ``run`` while younger than ``within`` seconds
        (default ``max_age``), else None."""
        with self._lock:
            hit = self._columns.get((run.run_id, name))
        limit = self.max_age if within is None else within
        if hit is None or time.monotonic() - hit[0] >= limit:
            return None
        return hit[1]

    def columns(
        self, run: RunInfo, scores: RunScores, names: Sequence[str], fresh: bool = False
    ) -> dict[str, Column]:
        """The columns ``names``: those missing from the snapshot (else read now, or with
        ``fresh`` always read now), renewed behind the request those stale."""
        out = {n: c for n in names if (c := self.get(run, n)) is not None}
        stale = {n for n in out if self.get(run, n, self.ttl) is None}
        missing = [n for n in names if n not in out]
        if missing and not fresh:
            published = self.published(run, scores, missing)
            if published is not None:
                out.update(published)
                stale |= set(missing)
                missing = []
        if stale:
            self.queue(run, scores, stale)
        while missing:
            mine = self._claim(run, missing)
            try:
                if mine:
                    out.update(self.read(run, scores, mine))
            finally:
                self._release(run, mine)
            for name in missing:
                if name not in out:
                    self._wait((run.run_id, name))
                    if (column := self.get(run, name)) is not None:
                        out[name] = column
            missing = [n for n in missing if n not in out]  # a read that failed: again
        return out

    # ---------------------------------------------------------------- the snapshot
    def published(
        self, run: RunInfo, scores: RunScores, names: Sequence[str]
    ) -> dict[str, Column] | None:
        """The columns ``names`` of the run's published snapshot, aligned with ``scores``
        (None without one: a run scored on Spark, or pruned)."""
        if self.snapshots is None:
            return None
        with self._publishing:  # one read at a time: a second request takes the first's
            return self._published_columns(run, scores, names, self.snapshots)

    def _published_columns(
        self, run: RunInfo, scores: RunScores, names: Sequence[str], snapshots: Path
    ) -> dict[str, Column] | None:
        with self._lock:
            out = {n: c for n in names if (c := self._published.get((run.run_id, n)))}
            rows = self._rows.get(run.run_id)
        wanted = [n for n in names if n not in out]
        if not wanted:
            return out
        folder = published_run(snapshots, run.run_id)
        if folder is None:
            return None
        try:
            file = pq.ParquetFile(folder / FEATURES_FILE)
            if not set(wanted) <= set(file.schema_arrow.names):
                return None  # published by another spec
            table = file.read(columns=wanted if rows is not None else ["customer_id", *wanted])
        except (OSError, pa.ArrowException):  # pruned meanwhile
            return None
        if rows is None:
            ids = table.column("customer_id").to_pandas().astype(str).to_numpy(dtype=object)
            if len(ids) == len(scores.index) and np.array_equal(ids, scores.index.to_numpy()):
                rows = np.arange(len(ids))  # the scores' order (a run's usual case)
            else:
                rows = scores.index.get_indexer(ids)
        as_of = as_utc(run.as_of)
        frame = table.select(wanted).to_pandas()
        for name in wanted:
            values = frame[name].to_numpy()
            out[name] = Column(as_of, _aligned(scores.index, None, values, rows), snapshot=True)
        with self._lock:
            self._published = {k: v for k, v in self._published.items() if k[0] == run.run_id}
            self._published.update({(run.run_id, n): out[n] for n in wanted})
            self._rows = {run.run_id: rows}
        return out

    # ---------------------------------------------------------------- reads
    def _claim(self, run: RunInfo, names: Sequence[str]) -> list[str]:
        """Of ``names``, those nobody reads now, marked as read by the caller."""
        with self._lock:
            mine = [n for n in names if (run.run_id, n) not in self._reading]
            for name in mine:
                self._reading[(run.run_id, name)] = threading.Event()
            queued = self._queued.get(run.run_id)
            if queued is not None:
                queued[1].difference_update(mine)
        return mine

    def _release(self, run: RunInfo, names: Sequence[str]) -> None:
        with self._lock:
            for name in names:
                self._reading.pop((run.run_id, name)).set()

    def _wait(self, key: tuple[str, str]) -> None:
        with self._lock:
            busy = self._reading.get(key)
        if busy is not None:
            busy.wait()

    def queue(self, run: RunInfo, scores: RunScores, names: Iterable[str]) -> None:
        """Have the background reader compute ``names`` as of now (with what else it was
        asked for, in one pass)."""
        with self._lock:
            self._queued = {k: v for k, v in self._queued.items() if k == run.run_id}
            entry = self._queued.setdefault(run.run_id, ((run, scores), set()))
            entry[1].update(n for n in names if (run.run_id, n) not in self._reading)
            if self._reader is None and entry[1]:
                self._reader = threading.Thread(
                    target=self._read_queued, daemon=True, name="ui-columns"
                )
                self._reader.start()

    def reading(self) -> bool:
        """Is the background reader at work (or asked to)?"""
        with self._lock:
            return self._reader is not None

    def _read_queued(self) -> None:
        while True:
            with self._lock:
                job = next(((k, v) for k, v in self._queued.items() if v[1]), None)
                if job is None:
                    self._reader = None
                    return
                (run, scores), names = job[1]
                del self._queued[job[0]]
            self.wait_quiet()
            mine = self._claim(run, sorted(names))
            try:
                with contextlib.suppress(Exception):  # interrupted by a save, a busy warehouse
                    if mine:
                        self.read(run, scores, mine, yielding=True)
            finally:
                self._release(run, mine)

    def read(
        self, run: RunInfo, scores: RunScores, names: Sequence[str], yielding: bool = False
    ) -> dict[str, Column]:
        """Compute the features ``names`` as of now for every customer and keep them
        aligned with ``scores``' rows (customers without features get nulls, as in a left
        join): one query per part (:func:`read_parts`: the features of one event table,
        the customers' attributes), each kept as soon as it is read, so a read that fails
        half-way (``yielding``: interrupted by a save) keeps the parts it finished and the
        next read computes only the rest."""
        out: dict[str, Column] = {}
        for i, part in enumerate(read_parts(self.spec, names)):
            if yielding and i:  # in the background: not beside a preview, nor a save
                self.wait_quiet()
            out.update(self._read_part(run, scores, part, yielding))
        return out

    def _read_part(
        self, run: RunInfo, scores: RunScores, names: Sequence[str], yielding: bool
    ) -> dict[str, Column]:
        """One part of :meth:`read`: the raw aggregates joined to the scores' rows in
        DuckDB (only the attributes named, no sort, no customer ids back), then
        :func:`features.batch.finish` as :func:`features.batch.build` does."""
        as_of = datetime.now(UTC)
        spec = feature_subset(self.spec, names, all_attributes=False)
        with own_lists(self.warehouse) as own:
            con = raw(own.con)
            held = WAREHOUSE.yielding(con.interrupt) if yielding else contextlib.nullcontext()
            with held:
                expression = raw_expression(
                    {n: own.con.table(n) for n in TABLES}, as_of, spec, ordered=False
                )
                con.register(ROWS_VIEW, scores.rows)
                try:
                    table = con.execute(
                        f"SELECT r.{ROW}, f.* EXCLUDE (customer_id) FROM {ROWS_VIEW} r "
                        f"JOIN ({own.con.compile(expression)}) f "
                        "ON f.customer_id = r.customer_id"
                    ).to_arrow_table()
                finally:
                    con.unregister(ROWS_VIEW)
        values = normalize_raw(table, spec)
        at = values.pop(ROW).astype(np.int64)
        features = finish(values, as_of, spec)
        out = {}
        for n in names:
            column = features[n]
            if column.dtype == object:  # as build's frame holds them (nulls as NaN)
                column = pd.Series(column).to_numpy()
            out[n] = Column(as_of, _aligned(scores.index, None, column, at))
        now = time.monotonic()
        with self._lock:
            self._columns = {
                k: v
                for k, v in self._columns.items()
                if k[0] == run.run_id and now - v[0] < self.max_age
            }
            self._columns.update({(run.run_id, n): (now, c) for n, c in out.items()})
        return out


#: the scores' customers and their rows, as the column reads see them in DuckDB
ROWS_VIEW = "ui_score_rows"
ROW = "ui_row"


def read_parts(spec: FeatureSpec, names: Sequence[str]) -> list[list[str]]:
    """``names`` grouped by the tables they are computed from (an aggregate's event
    table, an attribute's ``customers``, a derived feature's inputs' tables), the cheapest
    part (attributes) first: each part is one query of :meth:`FeatureColumns.read`."""
    by_name = spec.by_name()

    def sources(name: str) -> frozenset[str]:
        feature = by_name[name]
        if isinstance(feature, Agg):
            return frozenset({feature.source})
        if isinstance(feature, Derived):
            return frozenset().union(*(sources(i) for i in feature.inputs))
        return frozenset()  # an attribute: the customers table every part reads

    parts: dict[frozenset[str], list[str]] = {}
    for name in names:
        parts.setdefault(sources(name), []).append(name)
    return [parts[k] for k in sorted(parts, key=lambda k: (len(k), sorted(k)))]


class CachedLists(WarehouseLists):
    """:class:`WarehouseLists` whose candidates come from what the page keeps (the
    preview's source, and the save's: one per request): the run's scores, read once per
    run (a run's scores never change), and each feature column aligned with their rows
    (:class:`FeatureColumns`), so a filter on a feature already read reads nothing.
    ``features_as_of`` is then when the oldest column served was computed (consent and
    contacts up to ``columns.max_age`` old, or the scoring run's ``as_of`` when a column
    came from its snapshot: ``from_snapshot``); ``fresh_features`` (a save) takes fresh
    columns only, computed over the events as ``rapport targets`` computes them. The
    suppressions are the page's (up to ``cache.max_age`` old) unless
    ``fresh_suppressions``."""

    def __init__(
        self,
        warehouse: Path,
        cache: PreviewCache,
        columns: FeatureColumns,
        fresh_suppressions: bool = False,
        fresh_features: bool = False,
        memo: ControlMemo | None = None,
    ) -> None:
        super().__init__(warehouse)
        self.memo = memo
        self.path = warehouse
        self.cache = cache
        self.columns = columns
        self.fresh_suppressions = fresh_suppressions
        self.fresh_features = fresh_features
        self.features_as_of: datetime | None = None
        self.from_snapshot = False

    def __enter__(self) -> Self:
        self._held = WAREHOUSE.read()
        self._held.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._held.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._held.__exit__(None, None, None)

    def scores(self, run: RunInfo) -> RunScores:
        """The run's scores, read once per run (on a connection of their own: a read
        may outlive the request that started it)."""
        return self.cache.get(  # type: ignore[no-any-return]
            ("scores", run.run_id), lambda: self._scores(run), lasting=True
        )

    def candidates(
        self, run: RunInfo, spec: FeatureSpec, columns: Sequence[str], as_of: datetime
    ) -> pd.DataFrame:
        scores = self.scores(run)
        if self.memo is not None and scores.control is not None:
            # the run's members of its control group: no hashing while the group is the run's
            self.memo.seed(scores.control, scores.index, scores.held_out)  # type: ignore[arg-type]
        found = self.columns.columns(run, scores, columns, self.fresh_features)
        stamps = [c.as_of for c in found.values()]
        self.features_as_of = min(stamps) if stamps else as_of
        self.from_snapshot = any(c.snapshot for c in found.values())
        return scores.frame.assign(**{c: found[c].values for c in columns})

    def _scores(self, run: RunInfo) -> RunScores:
        with own_lists(self.path) as own:
            frame = load_scores(raw(own.con), run)
            control = run_control(raw(own.con), run)
        frame["customer_id"] = frame["customer_id"].astype(str)
        frame = frame.drop_duplicates("customer_id").reset_index(drop=True)
        index = pd.Index(frame["customer_id"].to_numpy(dtype=object))
        if control is None or "group" not in frame.columns:
            return RunScores(frame, index)
        held_out = (frame["group"] == CONTROL).to_numpy(dtype=bool)
        return RunScores(frame, index, control, held_out)

    def suppressed(self) -> set[str]:
        if self.fresh_suppressions:
            return super().suppressed()

        def read() -> set[str]:
            with own_lists(self.path) as own:
                return own.suppressed()

        return self.cache.get(("suppressed",), read)  # type: ignore[no-any-return]
