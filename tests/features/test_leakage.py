"""Point-in-time correctness: nothing at or after ``as_of`` may change any feature."""

from __future__ import annotations

from datetime import timedelta

import ibis
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sample_data import cutoff, load_tables, random_tables

from features.batch import build
from features.online.record import evaluate, records_from_frames

AS_OF = cutoff(400)
BASE = random_tables(7, customers=25, events=200)
TIME_COLUMNS = {"orders": "ordered_at", "interactions": "occurred_at", "campaign_log": "decided_at"}


def _build(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    con = ibis.duckdb.connect()
    load_tables(con, tables)
    return build(con, AS_OF)


BASELINE = _build(BASE)


def _mutate(draw: st.DrawFn) -> dict[str, pd.DataFrame]:
    tables = {k: v.copy() for k, v in BASE.items()}
    source = draw(st.sampled_from(sorted(TIME_COLUMNS)))
    frame, time_col = tables[source], TIME_COLUMNS[source]
    late = frame.index[frame[time_col] >= AS_OF]
    action = draw(st.sampled_from(["add", "remove", "change"]))
    offset = timedelta(seconds=draw(st.integers(0, 400 * 86_400)))
    if action == "add" or not len(late):
        row = frame.iloc[[draw(st.integers(0, len(frame) - 1))]].copy()
        id_col = frame.columns[0]
        row[id_col] = "NEW-" + row[id_col]
        row[time_col] = AS_OF + offset  # exactly at as_of when offset is 0
        tables[source] = pd.concat([frame, row], ignore_index=True)
    elif action == "remove":
        tables[source] = frame.drop(index=late[: draw(st.integers(1, len(late)))])
    else:
        idx = late[draw(st.integers(0, len(late) - 1))]
        numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
        frame.loc[idx, numeric] = frame.loc[idx, numeric] * 3 + 1
        frame.loc[idx, time_col] = AS_OF + offset
    if draw(st.booleans()):  # a customer who signs up at or after the cutoff
        new = tables["customers"].iloc[[0]].copy()
        new["customer_id"] = "LATE"
        new["signup_at"] = AS_OF + offset
        tables["customers"] = pd.concat([tables["customers"], new], ignore_index=True)
    return tables


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_events_at_or_after_as_of_never_change_batch_features(data: st.DataObject) -> None:
    tables = data.draw(st.composite(lambda draw: _mutate(draw))())
    result = _build(tables)
    assert "LATE" not in set(result["customer_id"])
    pd.testing.assert_frame_equal(result, BASELINE)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_events_at_or_after_as_of_never_change_online_features(data: st.DataObject) -> None:
    tables = data.draw(st.composite(lambda draw: _mutate(draw))())
    events = {k: v for k, v in tables.items() if k != "customers"}
    records = records_from_frames(tables["customers"], events)
    for row in BASELINE.to_dict("records")[:10]:
        online = evaluate(records[row["customer_id"]], AS_OF)
        for name, value in row.items():
            other = online[name]
            if isinstance(value, float) and np.isnan(value):
                assert other is None or np.isnan(other), name
            elif isinstance(value, float):
                assert np.isclose(value, other, rtol=1e-9), name
            else:
                assert value == other, name
