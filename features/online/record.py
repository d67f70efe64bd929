"""Online evaluator: one customer's feature vector from their events, no database.

A *record* is what the online store keeps per customer::

    {"customer": {"customer_id": "C1", "signup_at": <epoch µs>, "region": "north", ...},
     "orders": {"order_id": [...], "ordered_at": [<epoch µs>, ...], "amount": [...], ...},
     "interactions": {...}, "campaign_log": {...}}

Event columns are lists (timestamps as integer epoch microseconds, booleans as
true/false/null). The evaluator computes the same raw aggregates as the batch query with
numpy, then calls :func:`features.batch.finish`, so every derived value is computed by one
piece of code in both paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

import numpy as np

from features.batch import MICROS_PER_DAY, TIME_AGGS, finish, micros, to_micros
from features.contract import CUSTOMER_ATTRIBUTES, EVENT_TABLES, TABLES
from features.spec import Agg, Cond, FeatureSpec, default_spec

Record = dict[str, Any]


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
    if kind in ("float", "int", "bool", "timestamp"):
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    return np.array(values, dtype=object)


def _cond_mask(col: np.ndarray, cond: Cond) -> np.ndarray:
    value: Any = cond.value
    if isinstance(value, bool):
        value = float(value)
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
    table = TABLES[source]
    hits: dict[Cond, bool] = {}

    def meets(cond: Cond) -> bool:  # judged as the evaluator judges a column of events
        if cond not in hits:
            column = _as_array([row.get(cond.column)], table.column(cond.column).type)
            hits[cond] = bool(_cond_mask(column, cond)[0])
        return hits[cond]

    return any(all(meets(c) for c in where) for where in plan.wheres)


class _TablePlan:
    """One event table's aggregations, arranged so a customer's events are aggregated
    with a few matrix operations (one row per aggregation) instead of a numpy call per
    aggregation and step: a live score evaluates ~70 aggregations over tiny arrays, where
    the per-call overhead is the whole cost."""

    def __init__(self, aggs: list[Agg]) -> None:
        self.aggs = aggs
        days = np.array([np.inf if a.days is None else a.days + a.offset for a in aggs])
        self.lower_days = days  # window start, days before as_of
        self.upper_days = np.array([float(a.offset) for a in aggs])
        wheres = list(dict.fromkeys(a.where for a in aggs))
        self.wheres = wheres
        self.where_of = np.array([wheres.index(a.where) for a in aggs], dtype=np.intp)
        #: (kind, column) -> rows of the aggregations of that kind over that column
        groups: dict[tuple[str, str | None], list[int]] = {}
        for i, agg in enumerate(aggs):
            column = None if agg.agg == "count" or agg.agg in TIME_AGGS else agg.column
            groups.setdefault((agg.agg, column), []).append(i)
        self.groups = [(kind, col, np.array(rows)) for (kind, col), rows in groups.items()]


_PLANS: dict[int, tuple[FeatureSpec, dict[str, _TablePlan]]] = {}


def _plans(spec: FeatureSpec) -> dict[str, _TablePlan]:
    cached = _PLANS.get(id(spec))
    if cached is None or cached[0] is not spec:
        plans = {t.name: _TablePlan(spec.aggs_for(t.name)) for t in EVENT_TABLES}
        cached = _PLANS[id(spec)] = (spec, {k: v for k, v in plans.items() if v.aggs})
    return cached[1]


def _masked_reduce(kind: str, values: np.ndarray, times: np.ndarray, mask: np.ndarray) -> Any:
    """``kind`` over the masked values, one result per mask row; NaN where nothing counts
    (0 for sums); ``mask`` rows are aggregations, columns events."""
    if kind == "count":
        return mask.sum(axis=1).astype(np.float64)
    if not mask.shape[1]:  # no events at all
        return np.full(mask.shape[0], 0.0 if kind in ("sum", "nunique") else np.nan)
    if kind in TIME_AGGS:  # over the event times themselves
        found = mask.any(axis=1)
        if kind == "days_since_last":
            out = np.max(np.where(mask, times, -np.inf), axis=1)
        else:
            out = np.min(np.where(mask, times, np.inf), axis=1)
        return np.where(found, out, np.nan)
    valid = mask & ~np.isnan(values)
    found = valid.any(axis=1)
    if kind == "sum":
        return np.where(valid, values, 0.0).sum(axis=1)
    if kind == "mean":
        counts = valid.sum(axis=1)
        total = np.where(valid, values, 0.0).sum(axis=1)
        return np.where(found, total / np.maximum(counts, 1), np.nan)
    if kind == "max":
        return np.where(found, np.max(np.where(valid, values, -np.inf), axis=1), np.nan)
    if kind == "min":
        return np.where(found, np.min(np.where(valid, values, np.inf), axis=1), np.nan)
    if kind == "last":  # the value of the latest event (the first of equal times)
        latest = np.argmax(np.where(valid, times, -np.inf), axis=1)
        return np.where(found, values[latest], np.nan)
    if kind == "nunique":
        return np.array([float(np.unique(values[row]).size) for row in valid])
    raise ValueError(f"unknown aggregation {kind!r}")


def _flag(value: Any) -> float:
    return np.nan if value is None else float(value)


def _nunique_text(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.array([float(len({v for v in values[row] if v is not None})) for row in mask])


def raw_aggregates(record: Record, as_of: datetime, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """One customer's raw aggregates, as :func:`features.batch.normalize_raw` shapes them."""
    as_of_us = micros(as_of)
    customer = record["customer"]
    raw: dict[str, np.ndarray] = {}
    for attr in spec.attributes:
        value = customer.get(attr.column)
        if attr.kind == "category":
            raw[attr.column] = np.array([value], dtype=object)
        else:
            raw[attr.column] = np.array([_flag(value)])
    for table in EVENT_TABLES:
        plan = _plans(spec).get(table.name)
        if plan is None:
            continue
        columns = record.get(table.name) or {}
        times = _as_array(columns.get(table.time_column, []), "timestamp")
        arrays = {c: _as_array(v, table.column(c).type) for c, v in columns.items()}
        # [aggregations, events]: inside the window, before as_of, meeting the conditions
        lower = as_of_us - plan.lower_days * MICROS_PER_DAY
        upper = as_of_us - plan.upper_days * MICROS_PER_DAY
        window = (times >= lower[:, None]) & (times < upper[:, None])
        cond_cache: dict[Cond, np.ndarray] = {}
        where_masks = np.ones((len(plan.wheres), times.size), dtype=bool)
        for w, where in enumerate(plan.wheres):
            for cond in where:
                if cond not in cond_cache:
                    cond_cache[cond] = _cond_mask(arrays[cond.column], cond)
                where_masks[w] &= cond_cache[cond]
        mask = window & where_masks[plan.where_of]
        out = np.empty(len(plan.aggs))
        for kind, column, rows in plan.groups:
            values = times if column is None else arrays[column]
            if values.dtype == object:
                if kind != "nunique":
                    raise ValueError(f"aggregation {kind} over the text column {column}")
                out[rows] = _nunique_text(values, mask[rows])
            else:
                out[rows] = _masked_reduce(kind, values, times, mask[rows])
        for i, agg in enumerate(plan.aggs):
            raw[agg.name] = out[i : i + 1]
    return raw


def evaluate(record: Record, as_of: datetime, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The customer's features at ``as_of`` (events strictly before it), as a flat dict."""
    spec = spec or default_spec()
    values = finish(raw_aggregates(record, as_of, spec), as_of, spec)
    out: dict[str, Any] = {"customer_id": record["customer"].get("customer_id")}
    for name in spec.names:
        value = values[name][0]
        out[name] = value.item() if isinstance(value, np.generic) else value
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
