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
from features.contract import CUSTOMERS, EVENT_TABLES, TABLES
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
    attrs = {c: customer.get(c) for c in CUSTOMERS.column_names}
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
    if col.dtype == object:
        present = np.array([v is not None for v in col], dtype=bool)
    else:
        present = ~np.isnan(col)
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
    return present & np.asarray(hit, dtype=bool)


def _aggregate(agg: Agg, values: np.ndarray | None, times: np.ndarray, mask: np.ndarray) -> Any:
    if agg.agg == "count":
        return float(mask.sum())
    assert values is not None
    if values.dtype == object:
        picked = values[mask]
        picked = picked[np.array([v is not None for v in picked], dtype=bool)]
        if agg.agg == "nunique":
            return float(len(set(picked)))
        raise ValueError(f"aggregation {agg.agg} over a text column ({agg.name})")
    picked = values[mask]
    picked_times = times[mask]
    if agg.agg in ("days_since_last", "days_since_first"):
        if not picked.size:
            return None
        return picked.max() if agg.agg == "days_since_last" else picked.min()
    present = ~np.isnan(picked)
    picked, picked_times = picked[present], picked_times[present]
    if agg.agg == "sum":
        return float(picked.sum()) if picked.size else 0.0
    if agg.agg == "nunique":
        return float(np.unique(picked).size)
    if not picked.size:
        return None
    if agg.agg == "mean":
        return float(picked.mean())
    if agg.agg == "max":
        return float(picked.max())
    if agg.agg == "min":
        return float(picked.min())
    return float(picked[int(np.argmax(picked_times))])  # last


def _flag(value: Any) -> float:
    return np.nan if value is None else float(value)


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
        aggs = spec.aggs_for(table.name)
        if not aggs:
            continue
        columns = record.get(table.name) or {}
        times = _as_array(columns.get(table.time_column, []), "timestamp")
        arrays = {c: _as_array(v, table.column(c).type) for c, v in columns.items()}
        before = times < as_of_us
        cond_cache: dict[Cond, np.ndarray] = {}
        for agg in aggs:
            mask = before.copy()
            if agg.days is not None:
                mask &= times >= as_of_us - (agg.days + agg.offset) * MICROS_PER_DAY
            if agg.offset:
                mask &= times < as_of_us - agg.offset * MICROS_PER_DAY
            for cond in agg.where:
                if cond not in cond_cache:
                    cond_cache[cond] = _cond_mask(arrays[cond.column], cond)
                mask &= cond_cache[cond]
            values = times if agg.agg in TIME_AGGS else arrays.get(agg.column or "")
            raw[agg.name] = np.array([_flag(_aggregate(agg, values, times, mask))])
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
