"""Batch feature build: the spec compiled to Ibis, one aggregation pass per source.

The engine (DuckDB by default, Spark through the same Ibis expressions) computes the raw
aggregates -- counts, sums, means, last timestamps -- for every customer known at the
cutoff. :func:`finish` then turns raw aggregates into features (days since, ratios,
tenure); the online evaluator calls the very same :func:`finish`, which is what keeps batch
and live features equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import CUSTOMERS, TABLES
from features.spec import Agg, Cond, FeatureSpec, default_spec
from features.timeutil import as_utc

MICROS_PER_DAY = 86_400_000_000.0
#: aggregations whose empty value is 0 rather than null
ZERO_WHEN_EMPTY = frozenset({"count", "sum", "nunique"})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime | str | pd.Timestamp) -> float:
    """One instant as epoch microseconds, exactly (no float seconds on the way)."""
    return float((as_utc(value) - _EPOCH) // timedelta(microseconds=1))


def to_micros(values: Any) -> np.ndarray:
    """Timestamps (any pandas-parsable form) to float epoch microseconds, NaN for null."""
    ts = pd.to_datetime(pd.Series(values), utc=True)
    micros = ts.astype("datetime64[us, UTC]").astype("int64").to_numpy().astype("float64")
    micros[ts.isna().to_numpy()] = np.nan
    return micros


def _cond_expr(t: ir.Table, cond: Cond) -> ir.BooleanValue:
    col = t[cond.column]
    if cond.op == "in":
        assert isinstance(cond.value, tuple)
        return col.isin(list(cond.value))
    ops = {
        "==": col.__eq__,
        "!=": col.__ne__,
        "<": col.__lt__,
        ">": col.__gt__,
    }
    return ops[cond.op](cond.value)


def _window_expr(t: ir.Table, agg: Agg, time_col: str, as_of: datetime) -> ir.BooleanValue | None:
    parts: list[ir.BooleanValue] = [_cond_expr(t, c) for c in agg.where]
    if agg.days is not None:
        start = as_of - timedelta(days=agg.days + agg.offset)
        parts.append(t[time_col] >= ibis.literal(start))
    if agg.offset:
        parts.append(t[time_col] < ibis.literal(as_of - timedelta(days=agg.offset)))
    if not parts:
        return None
    expr = parts[0]
    for part in parts[1:]:
        expr = expr & part
    return expr


def _metric(t: ir.Table, agg: Agg, time_col: str, as_of: datetime) -> ir.Value:
    where = _window_expr(t, agg, time_col, as_of)
    if agg.agg == "count":
        return t.count(where=where)
    assert agg.column is not None
    col = t[agg.column]
    if col.type().is_boolean():
        col = col.cast("int64")
    match agg.agg:
        case "sum":
            return col.sum(where=where)
        case "mean":
            return col.mean(where=where)
        case "max":
            return col.max(where=where)
        case "min":
            return col.min(where=where)
        case "nunique":
            return col.nunique(where=where)
        case "last":
            return col.argmax(t[time_col], where=where)
        case "days_since_last":
            return t[time_col].max(where=where)
        case "days_since_first":
            return t[time_col].min(where=where)
    raise ValueError(f"unknown aggregation {agg.agg!r} in feature {agg.name!r}")


def source_aggregates(table: ir.Table, aggs: list[Agg], as_of: datetime) -> ir.Table:
    """One grouped pass over an event table computing every raw aggregate of the spec."""
    source = TABLES[aggs[0].source]
    time_col = source.time_column
    events = table.filter(table[time_col] < ibis.literal(as_of))
    if all(a.days is not None for a in aggs):
        oldest = max(a.days + a.offset for a in aggs if a.days is not None)
        events = events.filter(events[time_col] >= ibis.literal(as_of - timedelta(days=oldest)))
    metrics = {a.name: _metric(events, a, time_col, as_of) for a in aggs}
    return events.group_by("customer_id").aggregate(**metrics)


def raw_expression(
    tables: Mapping[str, ir.Table],
    as_of: datetime,
    spec: FeatureSpec | None = None,
    ordered: bool = True,
) -> ir.Table:
    """The whole raw-aggregate query for one cutoff, as an Ibis expression, ordered by
    ``customer_id`` unless ``ordered`` is false (a distributed job writing files skips
    the global sort)."""
    spec = spec or default_spec()
    as_of = as_utc(as_of)
    customers = tables[CUSTOMERS.name]
    base = customers.filter(customers.signup_at < ibis.literal(as_of))
    attr_cols = sorted({"customer_id", *(a.column for a in spec.attributes)})
    result = base.select(*attr_cols)
    for source in ("orders", "interactions", "campaign_log"):
        aggs = spec.aggs_for(source)
        if not aggs:
            continue
        part = source_aggregates(tables[source], aggs, as_of)
        result = result.left_join(part, "customer_id").drop("customer_id_right")
    return result.order_by("customer_id") if ordered else result


TIME_AGGS = frozenset({"days_since_last", "days_since_first"})


def raw_time_columns(spec: FeatureSpec) -> list[str]:
    """Raw columns holding timestamps (passed to :func:`finish` as epoch µs floats)."""
    return ["signup_at", *(a.name for a in spec.aggs if a.agg in TIME_AGGS)]


def normalize_raw(raw: pa.Table, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Engine output (Arrow) to numpy: timestamps as µs floats, numbers as float64.

    Arrow is converted column by column; going through pandas costs several times more.
    """
    categories = {a.column for a in spec.attributes if a.kind == "category"}
    out: dict[str, np.ndarray] = {}
    for name in raw.column_names:
        col = raw.column(name)
        if name in categories or name == "customer_id":
            out[name] = np.asarray(col.to_pylist(), dtype=object)
            continue
        if pa.types.is_timestamp(col.type):
            col = pc.cast(col, pa.timestamp("us", tz="UTC")).cast(pa.int64())
        out[name] = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    return out


def finish(raw: Mapping[str, np.ndarray], as_of: datetime, spec: FeatureSpec) -> dict[str, Any]:
    """Raw aggregates to feature values with numpy only; shared by batch and online.

    ``raw`` holds float64 arrays (timestamps as epoch µs, see :func:`normalize_raw`) and
    object arrays for categories.
    """
    as_of_us = micros(as_of)
    out: dict[str, Any] = {}
    for attr in spec.attributes:
        values = raw[attr.column]
        if attr.kind == "tenure_days":
            out[attr.name] = (as_of_us - values) / MICROS_PER_DAY
        else:
            out[attr.name] = values
    for agg in spec.aggs:
        values = raw[agg.name]
        if agg.agg in TIME_AGGS:
            out[agg.name] = (as_of_us - values) / MICROS_PER_DAY
        elif agg.agg in ZERO_WHEN_EMPTY:
            out[agg.name] = np.where(np.isnan(values), 0.0, values)
        else:
            out[agg.name] = values
    with np.errstate(divide="ignore", invalid="ignore"):  # once: ~4 us a call on one row
        for d in spec.derived:
            num = sum(w * out[n] for n, w in d.numerator)
            den = sum(w * out[n] for n, w in d.denominator) + d.constant
            out[d.name] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def to_frame(
    customer_ids: Any, features: Mapping[str, np.ndarray], spec: FeatureSpec
) -> pd.DataFrame:
    frame = pd.DataFrame({"customer_id": pd.Series(customer_ids, dtype="string")})
    for name in spec.names:
        frame[name] = features[name]
    return frame


def build(
    con: Any,
    as_of: datetime | str,
    spec: FeatureSpec | None = None,
    tables: Mapping[str, ir.Table] | None = None,
    ordered: bool = True,
) -> pd.DataFrame:
    """Features of every customer who signed up before ``as_of``, from events before it,
    by ``customer_id`` (in no given order when ``ordered`` is false: a caller aligning
    the rows itself skips the sort).

    ``con`` is any Ibis backend holding the contract tables (DuckDB by default, Spark too).
    """
    spec = spec or default_spec()
    as_of = as_utc(as_of)
    tables = tables or {name: con.table(name) for name in TABLES}
    raw = normalize_raw(raw_expression(tables, as_of, spec, ordered).to_pyarrow(), spec)
    return to_frame(raw["customer_id"], finish(raw, as_of, spec), spec)


def build_many(
    con: Any, cutoffs: Iterable[datetime | str], spec: FeatureSpec | None = None
) -> pd.DataFrame:
    """Training snapshots: one build per cutoff, stacked with an ``as_of`` column."""
    frames = []
    for cutoff in cutoffs:
        frame = build(con, cutoff, spec)
        frame.insert(1, "as_of", pd.Timestamp(as_utc(cutoff)))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
