"""Online evaluator: one customer's feature vector from their events, no database.

A *record* is what the online store keeps per customer::

    {"customer": {"customer_id": "C1", "signup_at": <epoch µs>, "region": "north", ...},
     "orders": {"order_id": [...], "ordered_at": [<epoch µs>, ...], "amount": [...], ...},
     "interactions": {...}, "campaign_log": {...}}

Event columns are lists (timestamps as integer epoch microseconds, booleans as
true/false/null). The evaluator computes the same raw aggregates as the batch query with
numpy (a few matrix operations per event table, arranged once per spec), then
:func:`features.batch.finish`'s steps: :func:`evaluate` runs them on one customer's plain
floats (its numpy calls on one-element arrays cost more than the aggregation), the same
operations in the same order, so the values are ``finish``'s bit for bit
(tests/features/online/test_record.py holds both equal, and the parity tests hold the
evaluator equal to the batch build).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

import numpy as np

from features.batch import MICROS_PER_DAY, TIME_AGGS, ZERO_WHEN_EMPTY, micros, to_micros
from features.contract import CUSTOMER_ATTRIBUTES, EVENT_TABLES, TABLES
from features.spec import Agg, Cond, FeatureSpec, default_spec

Record = dict[str, Any]
#: :func:`counted`'s answers kept per event table (per distinct values of the columns its
#: conditions read; beyond, answered afresh)
COUNTED_KEYS = 4096
#: record column kinds held as float64 arrays (the others as object arrays)
_NUMERIC = ("float", "int", "bool", "timestamp")


@cache
def record_columns(spec: FeatureSpec) -> dict[str, tuple[str, ...]]:
    """Columns the online store must keep per source (ids for dedupe, time, used columns)."""
    out: dict[str, tuple[str, ...]] = {}
    for table in EVENT_TABLES:
        used = {table.id_column, table.time_column}
        for agg in spec.aggs_for(table.name):
            used.update(c.column for c in agg.where)
            if agg.column:
                used.add(agg.column)
        out[table.name] = tuple(c for c in table.column_names if c in used)
    return out


def empty_record(customer: Mapping[str, Any], spec: FeatureSpec | None = None) -> Record:
    """A record for a customer with no events yet (``signup_at`` as epoch µs)."""
    spec = spec or default_spec()
    attrs = {c: customer.get(c) for c in CUSTOMER_ATTRIBUTES}
    record: Record = {"customer": attrs}
    for source, cols in record_columns(spec).items():
        record[source] = {c: [] for c in cols}
    return record


def append_events(record: Record, source: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Add events to a record, skipping ids it already holds; returns how many were new."""
    table = TABLES[source]
    columns = record[source]
    known = set(columns[table.id_column])
    added = 0
    for row in rows:
        if row[table.id_column] in known:
            continue
        known.add(row[table.id_column])
        for col, values in columns.items():
            values.append(row.get(col))
        added += 1
    return added


def _as_array(values: list[Any], kind: str) -> np.ndarray:
    if kind in _NUMERIC:
        return np.array(values, dtype=np.float64)  # None -> NaN
    return np.array(values, dtype=object)


def _compared(value: Any) -> Any:
    """A condition's value as the evaluator compares it (booleans as 0 / 1)."""
    return float(value) if isinstance(value, bool) else value


def _cond_mask(col: np.ndarray, cond: Cond) -> np.ndarray:
    value: Any = _compared(cond.value)
    if cond.op == "in":
        assert isinstance(value, tuple)
        hit = np.isin(col, list(value))
    elif cond.op == "==":
        hit = col == value
    elif cond.op == "!=":
        hit = col != value
    elif cond.op == "<":
        hit = col < value
    else:
        hit = col > value
    hit = np.asarray(hit, dtype=bool)
    if cond.op != "!=":  # a missing value (None / NaN) never equals or orders: already False
        return hit
    if col.dtype == object:
        return hit & np.array([v is not None for v in col], dtype=bool)
    return hit & ~np.isnan(col)


def counted(source: str, row: Mapping[str, Any], spec: FeatureSpec | None = None) -> bool:
    """Could any of the spec's aggregations over ``source`` count this event?

    An event no aggregation's conditions admit changes no feature, so the online record
    need not keep it: a logged ``no_action`` decision (most live decisions) counts toward
    no campaign feature, and keeping each one grew the record of a customer at every call.
    """
    plan = _plans(spec or default_spec()).get(source)
    if plan is None:
        return False
    # the answer depends on the columns the conditions read only: kept per their values
    # (a logged decision's action and channel: a handful of pairs, asked at every score)
    key = tuple(row.get(column) for column in plan.cond_columns)
    try:
        return plan.counted[key]
    except (KeyError, TypeError):  # TypeError: an unhashable value, judged every time
        pass
    table = TABLES[source]
    hits: dict[Cond, bool] = {}

    def meets(cond: Cond) -> bool:  # judged as the evaluator judges a column of events
        if cond not in hits:
            column = _as_array([row.get(cond.column)], table.column(cond.column).type)
            hits[cond] = bool(_cond_mask(column, cond)[0])
        return hits[cond]

    found = any(all(meets(c) for c in where) for where in plan.wheres)
    with contextlib.suppress(TypeError):
        if len(plan.counted) < COUNTED_KEYS:
            plan.counted[key] = found
    return found


class _TablePlan:
    """One event table's aggregations, arranged so a customer's events are aggregated
    with a few matrix operations (one row per aggregation) instead of a numpy call per
    aggregation and step: a live score evaluates ~70 aggregations over tiny arrays, where
    the per-call overhead is the whole cost.

    Every reduction is computed once over all the aggregations of its column (``rows``)
    and the rows of each kind picked from it: each row is reduced on its own, so a row's
    result is the one a reduction of that row alone gives (sums keep numpy's pairwise
    order over the whole events axis, masked events counting 0)."""

    def __init__(self, table: Any, aggs: list[Agg]) -> None:
        self.aggs = aggs
        self.time_column: str = table.time_column
        days = np.array([np.inf if a.days is None else a.days + a.offset for a in aggs])
        self.lower_days = days  # window start, days before as_of
        self.upper_days = np.array([float(a.offset) for a in aggs])
        #: the distinct window starts and ends (days before as_of), for :meth:`aggregate`'s
        #: bounds: an event's side of a window's edge depends on the edge alone
        self.start_days = np.unique(self.lower_days)
        self.end_days = np.unique(self.upper_days)
        wheres = list(dict.fromkeys(a.where for a in aggs))
        self.wheres = wheres
        #: the distinct conditions; per position k of a where, each aggregation's condition
        #: as a row of the condition matrix (row 0: all true, for shorter wheres)
        self.conds = list(dict.fromkeys(c for a in aggs for c in a.where))
        width = max((len(a.where) for a in aggs), default=0)
        self.cond_rows = [
            np.array(
                [self.conds.index(a.where[k]) + 1 if k < len(a.where) else 0 for a in aggs],
                dtype=np.intp,
            )
            for k in range(width)
        ]
        kinds: dict[str, str] = {}  # column -> its record kind (text or numeric)
        for c in self.conds:
            kinds[c.column] = table.column(c.column).type
        #: the columns the conditions read, and :func:`counted`'s answers per their values
        self.cond_columns = tuple(kinds)
        self.counted: dict[tuple[Any, ...], bool] = {}
        #: ``column == value`` conditions compared in one broadcast per column: (column,
        #: their rows in the condition matrix, their values); the others one by one
        equal: dict[str, list[int]] = {}
        self.other_conds: list[tuple[int, Cond]] = []
        for i, c in enumerate(self.conds, start=1):
            if c.op == "==":
                equal.setdefault(c.column, []).append(i)
            else:
                self.other_conds.append((i, c))
        self.equal_conds = [
            (
                column,
                np.array(rows, dtype=np.intp),
                _as_array([_compared(self.conds[i - 1].value) for i in rows], kinds[column])[
                    :, None
                ],
            )
            for column, rows in equal.items()
        ]
        #: (kind, column) -> rows; columns None: counts and the event times themselves
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, agg in enumerate(aggs):
            column = None if agg.agg == "count" or agg.agg in TIME_AGGS else agg.column
            groups.setdefault((agg.agg, column), []).append(i)
            if column is not None:
                kinds[column] = table.column(column).type
        self.kinds = kinds
        rows_of = {
            kind: np.array(r, dtype=np.intp) for (kind, col), r in groups.items() if col is None
        }
        empty = np.array(
            [0.0 if kind in ZERO_WHEN_EMPTY else np.nan for kind in (a.agg for a in aggs)]
        )
        self.empty = empty  # every aggregation over no events at all
        #: the bounds of no events
        self.never = (np.full(self.start_days.size, np.inf), np.full(self.end_days.size, np.inf))
        self.count_rows = rows_of.get("count", np.empty(0, dtype=np.intp))
        self.last_rows = rows_of.get("days_since_last", np.empty(0, dtype=np.intp))
        self.first_rows = rows_of.get("days_since_first", np.empty(0, dtype=np.intp))
        #: per value column: all its rows, and per kind the rows and their positions there
        by_column: dict[str, list[tuple[str, list[int]]]] = {}
        for (kind, col), r in groups.items():
            if col is not None:
                by_column.setdefault(col, []).append((kind, r))
        self.columns: list[tuple[str, bool, np.ndarray, list[tuple[str, np.ndarray, np.ndarray]]]]
        self.columns = []
        for col, parts in by_column.items():
            rows = [i for _, r in parts for i in r]
            where = {i: p for p, i in enumerate(rows)}
            text = kinds[col] not in _NUMERIC
            if text and any(kind != "nunique" for kind, _ in parts):
                bad = next(kind for kind, _ in parts if kind != "nunique")
                raise ValueError(f"aggregation {bad} over the text column {col}")
            self.columns.append(
                (
                    col,
                    text,
                    np.array(rows, dtype=np.intp),
                    [
                        (kind, np.array(r, dtype=np.intp), np.array([where[i] for i in r]))
                        for kind, r in parts
                    ],
                )
            )

    def aggregate(
        self,
        columns: Mapping[str, list[Any]],
        as_of_us: float,
        bounds: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """The raw aggregates of one customer's events (``columns``: the record's lists),
        one value per aggregation in :attr:`aggs` order.

        ``bounds``: a list to append, per distinct window start (:attr:`start_days`), the
        earliest event time at or after it, and per distinct window end (:attr:`end_days`)
        the earliest at or after that (infinite when none): while a later instant's window
        edges stay at or below them, every event stays on its side of each, so the
        aggregates are these (:class:`features.online.kept.KeptAggregates`)."""
        listed = columns.get(self.time_column) or []
        if not listed:
            if bounds is not None:
                bounds.append(self.never)
            return self.empty.copy()
        times = np.array(listed, dtype=np.float64)  # None -> NaN: never in a window
        arrays = {
            c: _as_array(columns.get(c) or [None] * len(listed), k) for c, k in self.kinds.items()
        }
        # [aggregations, events]: inside the window, before as_of, meeting the conditions
        lower = as_of_us - self.lower_days * MICROS_PER_DAY
        upper = as_of_us - self.upper_days * MICROS_PER_DAY
        started = times >= lower[:, None]
        mask = started & (times < upper[:, None])
        if bounds is not None:  # NaN times are in no window whatever the instant
            edges = as_of_us - np.concatenate([self.start_days, self.end_days]) * MICROS_PER_DAY
            earliest = np.where(times >= edges[:, None], times, np.inf).min(axis=1)
            bounds.append((earliest[: self.start_days.size], earliest[self.start_days.size :]))
        if self.cond_rows:
            hits = np.empty((len(self.conds) + 1, times.size), dtype=bool)
            hits[0] = True
            for column, rows, values in self.equal_conds:  # None / NaN never equal
                hits[rows] = arrays[column][None, :] == values
            for i, cond in self.other_conds:
                hits[i] = _cond_mask(arrays[cond.column], cond)
            for rows in self.cond_rows:
                mask &= hits[rows]
        out = np.empty(len(self.aggs))
        counts = np.count_nonzero(mask, axis=1)
        found = counts > 0
        if self.count_rows.size:
            out[self.count_rows] = counts[self.count_rows]
        if self.last_rows.size:
            sub = mask[self.last_rows]
            latest = np.where(sub, times, -np.inf).max(axis=1)
            out[self.last_rows] = np.where(found[self.last_rows], latest, np.nan)
        if self.first_rows.size:
            sub = mask[self.first_rows]
            first = np.where(sub, times, np.inf).min(axis=1)
            out[self.first_rows] = np.where(found[self.first_rows], first, np.nan)
        for column, text, rows, parts in self.columns:
            values = arrays[column]
            sub = mask[rows]
            if text:
                out[rows] = _nunique_text(values, sub)
                continue
            valid = sub & ~np.isnan(values)
            any_valid = valid.any(axis=1)
            total = None
            for kind, targets, at in parts:
                if kind in ("sum", "mean"):
                    if total is None:
                        total = np.where(valid, values, 0.0).sum(axis=1)
                    if kind == "sum":
                        out[targets] = total[at]
                    else:
                        n_valid = valid[at].sum(axis=1)
                        mean = total[at] / np.maximum(n_valid, 1)
                        out[targets] = np.where(any_valid[at], mean, np.nan)
                elif kind == "max":
                    top = np.where(valid[at], values, -np.inf).max(axis=1)
                    out[targets] = np.where(any_valid[at], top, np.nan)
                elif kind == "min":
                    low = np.where(valid[at], values, np.inf).min(axis=1)
                    out[targets] = np.where(any_valid[at], low, np.nan)
                elif kind == "last":  # the value of the latest event (the first of equal times)
                    latest = np.argmax(np.where(valid[at], times, -np.inf), axis=1)
                    out[targets] = np.where(any_valid[at], values[latest], np.nan)
                elif kind == "nunique":
                    out[targets] = [float(np.unique(values[row]).size) for row in valid[at]]
                else:
                    raise ValueError(f"unknown aggregation {kind!r}")
        return out


class _Plan:
    """The whole spec's evaluation, arranged once per spec: the tables' plans, then
    :func:`features.batch.finish`'s steps on one customer's plain values."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.tables: list[tuple[str, _TablePlan, np.ndarray]] = []
        position = {a.name: i for i, a in enumerate(spec.aggs)}
        for table in EVENT_TABLES:
            aggs = spec.aggs_for(table.name)
            if aggs:
                rows = np.array([position[a.name] for a in aggs], dtype=np.intp)
                self.tables.append((table.name, _TablePlan(table, aggs), rows))
        self.by_table = {name: plan for name, plan, _ in self.tables}
        #: every table's distinct window starts and ends in days, in the order
        #: :func:`_aggregates` gives their bounds (each table's in turn)
        self.start_days = np.concatenate([plan.start_days for _, plan, _ in self.tables])
        self.end_days = np.concatenate([plan.end_days for _, plan, _ in self.tables])
        self.agg_names = [a.name for a in spec.aggs]
        #: plain ints: :func:`_finished` works on the aggregates as a list of floats
        self.time_rows = [i for i, a in enumerate(spec.aggs) if a.agg in TIME_AGGS]
        self.zero_rows = [i for i, a in enumerate(spec.aggs) if a.agg in ZERO_WHEN_EMPTY]
        self.attributes = [(a.name, a.column, a.kind) for a in spec.attributes]
        self.derived = [(d.name, d.numerator, d.denominator, d.constant) for d in spec.derived]


_PLANS: dict[int, tuple[FeatureSpec, _Plan]] = {}


def _plan(spec: FeatureSpec) -> _Plan:
    cached = _PLANS.get(id(spec))
    if cached is None or cached[0] is not spec:
        cached = _PLANS[id(spec)] = (spec, _Plan(spec))
    return cached[1]


def _plans(spec: FeatureSpec) -> dict[str, _TablePlan]:
    return _plan(spec).by_table


def _flag(value: Any) -> float:
    return np.nan if value is None else float(value)


def _nunique_text(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.array([float(len({v for v in values[row] if v is not None})) for row in mask])


def _aggregates(
    record: Record,
    as_of_us: float,
    plan: _Plan,
    bounds: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Every aggregation's raw value (spec order): the event tables' plans (``bounds``:
    see :meth:`_TablePlan.aggregate`, appended table by table)."""
    raw = np.empty(len(plan.agg_names))
    for name, table_plan, rows in plan.tables:
        raw[rows] = table_plan.aggregate(record.get(name) or {}, as_of_us, bounds)
    return raw


def raw_aggregates(record: Record, as_of: datetime, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """One customer's raw aggregates, as :func:`features.batch.normalize_raw` shapes them
    (what :func:`features.batch.finish` takes; :func:`evaluate` gives its result)."""
    customer = record["customer"]
    raw: dict[str, np.ndarray] = {}
    for attr in spec.attributes:
        value = customer.get(attr.column)
        if attr.kind == "category":
            raw[attr.column] = np.array([value], dtype=object)
        else:
            raw[attr.column] = np.array([_flag(value)])
    values = _aggregates(record, micros(as_of), _plan(spec))
    for i, agg in enumerate(spec.aggs):
        raw[agg.name] = values[i : i + 1]
    return raw


def evaluate(record: Record, as_of: datetime, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The customer's features at ``as_of`` (events strictly before it), as a flat dict.

    The same values as ``features.batch.finish(raw_aggregates(...))`` (a test holds them
    equal bit for bit): :func:`features.batch.finish`'s steps on plain floats, because on
    one customer its numpy calls on one-element arrays cost more than the aggregation.
    """
    spec = spec or default_spec()
    plan = _plan(spec)
    as_of_us = micros(as_of)
    return _finished(record["customer"], _aggregates(record, as_of_us, plan), as_of_us, plan)


def _finished(
    customer: Mapping[str, Any], raw: np.ndarray, as_of_us: float, plan: _Plan
) -> dict[str, Any]:
    """:func:`evaluate`'s features from the raw aggregates (not changed) and the
    customer's attributes: :func:`features.batch.finish`'s steps on plain floats (the
    same IEEE operations as numpy's on the array, cheaper for ~70 values)."""
    values = raw.tolist()
    for i in plan.time_rows:
        values[i] = (as_of_us - values[i]) / MICROS_PER_DAY
    for i in plan.zero_rows:
        if values[i] != values[i]:  # NaN: no event in the window
            values[i] = 0.0
    out: dict[str, Any] = {"customer_id": customer.get("customer_id")}
    for name, column, kind in plan.attributes:
        value = customer.get(column)
        if kind == "category":
            out[name] = value
        elif kind == "tenure_days":
            out[name] = (as_of_us - _flag(value)) / MICROS_PER_DAY
        else:
            out[name] = _flag(value)
    out.update(zip(plan.agg_names, values, strict=True))
    for name, numerator, denominator, constant in plan.derived:
        # finish's sum(w * x) over one-element arrays: 0 + w1 x1 + w2 x2 ..., in that order
        num: float = 0
        for n, w in numerator:
            num = num + w * out[n]
        den: float = 0
        for n, w in denominator:
            den = den + w * out[n]
        den = den + constant
        out[name] = num / den if den > 0 else np.nan
    return out


def records_from_frames(
    customers: Any, events: Mapping[str, Any], spec: FeatureSpec | None = None
) -> dict[str, Record]:
    """Build records from contract frames (pandas); used by tests and small loads."""
    spec = spec or default_spec()
    cols = record_columns(spec)
    records: dict[str, Record] = {}
    for row in customers.to_dict("records"):
        row["signup_at"] = int(to_micros([row["signup_at"]])[0])
        records[row["customer_id"]] = empty_record(row, spec)
    for source, frame in events.items():
        table = TABLES[source]
        frame = frame[frame["customer_id"].isin(list(records))].copy()
        for col in cols[source]:
            if table.column(col).type == "timestamp":
                frame[col] = to_micros(frame[col]).astype("int64")
        frame = frame.astype(object).where(frame.notna(), None)
        for customer_id, group in frame.groupby("customer_id", sort=False):
            append_events(
                records[str(customer_id)], source, group[list(cols[source])].to_dict("records")
            )
    return records
