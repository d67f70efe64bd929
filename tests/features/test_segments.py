"""RFM segments: the lookup table follows the grid (first match wins), live = batch; cut
points are versioned per snapshot and stored in the warehouse."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.segments import (
    ABC_VALUE,
    FREQUENCY,
    MONETARY,
    NO_PURCHASE,
    RECENCY,
    SEGMENT_GRID,
    _score_range,
    assign_segments,
    fit_segments,
    fit_version,
    segment_rule,
)
from features.tables.segments import (
    SEGMENT_MODELS,
    NoSegmentsError,
    load_version,
    save_version,
    snapshot_segments,
)

T = datetime(2025, 1, 1, tzinfo=UTC)


def grid_reading(r: int, f: int) -> str:
    """The grid read row by row, as a marketer would."""
    for r_set, f_set, name in SEGMENT_GRID:
        if str(r) in r_set and str(f) in f_set:
            return name
    return NO_PURCHASE


def customers(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    recency = rng.exponential(60, n)
    recency[rng.random(n) < 0.1] = np.nan  # never ordered
    return pd.DataFrame(
        {
            "days_since_last_order": recency,
            "orders_365d": rng.poisson(3, n).astype(float),
            "spend_365d": rng.lognormal(4, 1, n),
        }
    )


def test_every_score_pair_gets_the_first_matching_grid_segment() -> None:
    frame = customers(5000, 1)
    out = assign_segments(frame, fit_segments(frame))
    for r, f, name in zip(out["r_score"], out["f_score"], out["rfm_segment"], strict=True):
        if np.isnan(r):
            assert name == NO_PURCHASE
        else:
            assert name == grid_reading(int(r), int(f))
    pairs = {(r, f) for r, f in zip(out["r_score"], out["f_score"], strict=True) if r == r}
    assert len(pairs) >= 20  # the sample covers most of the grid


def test_one_customer_gets_the_batch_segment() -> None:
    """The live paths (one customer's dict, a few customers' column lists) give the frame
    path's scores, names and tiers, of the same types, on customers with
    missing values and values on the very cut points."""
    frame = customers(500, 2)
    model = fit_segments(frame)
    cuts = [*model.recency_edges, *model.frequency_edges, *model.monetary_edges]
    for i, column in enumerate(("days_since_last_order", "orders_365d", "spend_365d")):
        frame.loc[i * 20 : i * 20 + 9, column] = cuts[i * 4 : i * 4 + 4] * 2 + [np.nan] * 2
    frame.loc[60:69, ABC_VALUE] = [model.abc_a_min, model.abc_b_min, np.nan, 0.0, -1.0] * 2
    batch = assign_segments(frame, model)

    def same(got: Any, want: Any) -> bool:
        if isinstance(want, float) and np.isnan(want):
            return isinstance(got, float) and np.isnan(got)
        return bool(got == want) and type(got) is type(want)

    for i in range(0, 500, 7):
        one = assign_segments(frame.iloc[i].to_dict(), model)
        for column, values in batch.items():
            assert same(one[column][0], values[i]), (i, column)
    rows = frame.iloc[:80].to_dict("records")
    lists = {name: [row[name] for row in rows] for name in rows[0]}
    several = assign_segments(lists, model)
    for column, values in batch.items():
        assert several[column].dtype == values.dtype
        assert all(same(several[column][i], values[i]) for i in range(80)), column


def test_the_live_path_matches_the_frame_path_on_odd_values() -> None:
    """Thousands of customers with infinities, signed zeros, None, ties on every cut point
    and huge values, one at a time and as column lists: every column equal to the frame
    path's, value and type (the live path ranks with ``bisect``, the frame path with
    ``np.searchsorted``)."""
    rng = np.random.default_rng(5)
    frame = customers(3000, 3)
    model = fit_segments(frame)
    odd = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, 5e-324]
    cuts = [*model.recency_edges, *model.frequency_edges, *model.monetary_edges]
    cuts += [model.abc_a_min, model.abc_b_min]
    for column in (RECENCY, FREQUENCY, MONETARY):
        picked = rng.random(len(frame)) < 0.3
        frame.loc[picked, column] = rng.choice(odd + cuts, int(picked.sum()))
    batch = assign_segments(frame, model)
    rows = frame.to_dict("records")
    for i, row in enumerate(rows[:600]):
        row = {
            k: (None if isinstance(v, float) and np.isnan(v) and i % 2 else v)
            for k, v in row.items()
        }
        one = assign_segments(row, model)
        for column, values in batch.items():
            assert one[column].dtype == values.dtype
            assert one[column][:1].tobytes() == values[i : i + 1].tobytes() or (
                one[column].dtype == object and one[column][0] == values[i]
            ), (i, column)
    lists = {name: [row[name] for row in rows] for name in rows[0]}
    several = assign_segments(lists, model)
    for column, values in batch.items():
        assert several[column].dtype == values.dtype
        if values.dtype == object:
            assert list(several[column]) == list(values), column
        else:
            assert several[column].tobytes() == values.tobytes(), column
    # edges holding NaN (never fitted so, but a stored model is read back as it is): the
    # numpy path, whose ranking of NaN edges ``bisect`` would not reproduce
    nan_model = dataclasses.replace(model, frequency_edges=(1.0, np.nan, 3.0, 4.0))
    want = assign_segments(frame.iloc[:50], nan_model)
    for i, row in enumerate(rows[:50]):
        got = assign_segments(row, nan_model)
        assert got["f_score"].tobytes() == want["f_score"][i : i + 1].tobytes(), i
        assert got["rfm_segment"][0] == want["rfm_segment"][i], i


def test_a_snapshot_has_one_version() -> None:
    frame = customers(800, 3)
    first = fit_version(frame, T, "fs1")
    assert first == fit_version(frame, T, "fs1")
    assert first.version.startswith("20250101-") and first.customers == 800
    assert first.model == fit_segments(frame)
    assert fit_version(frame, T + timedelta(days=1), "fs1").version != first.version
    assert fit_version(customers(800, 4), T, "fs1").version != first.version


def test_the_current_version_is_the_one_stored_last() -> None:
    db = duckdb.connect()
    with pytest.raises(NoSegmentsError, match="run `rapport score` or `rapport features`"):
        load_version(db)
    a = snapshot_segments(db, customers(500, 5), T, "fs1", fitted_at=T)
    b = snapshot_segments(db, customers(500, 6), T - timedelta(days=30), "fs1", T + timedelta(1))
    assert load_version(db) == b  # stored last, even with an earlier snapshot
    assert load_version(db, a.version) == a
    save_version(db, a, fitted_at=T + timedelta(days=2))  # the same snapshot again
    assert load_version(db) == a
    assert db.execute(f"SELECT count(*) FROM {SEGMENT_MODELS}").fetchone() == (2,)
    with pytest.raises(NoSegmentsError, match="'nope'"):
        load_version(db, "nope")


def test_segment_rule_states_the_bounds_every_member_meets() -> None:
    rng = np.random.default_rng(5)
    features = pd.DataFrame(
        {
            RECENCY: rng.integers(0, 400, 3000).astype(float),
            FREQUENCY: rng.poisson(3, 3000).astype(float),
            MONETARY: rng.gamma(2, 100, 3000),
        }
    )
    model = fit_segments(features)
    segments = assign_segments(features, model)["rfm_segment"]
    for r_set, f_set, name in SEGMENT_GRID:
        members = features[segments == name]
        assert len(members), name
        r_low, r_high = _score_range(r_set, model.recency_edges, higher_is_more=False)
        f_low, f_high = _score_range(f_set, model.frequency_edges, higher_is_more=True)
        assert ((members[RECENCY] > r_low) & (members[RECENCY] <= r_high)).all(), name
        assert ((members[FREQUENCY] >= f_low) & (members[FREQUENCY] < f_high)).all(), name
        # and everyone inside the bounds is in the segment
        inside = features[
            (features[RECENCY] > r_low)
            & (features[RECENCY] <= r_high)
            & (features[FREQUENCY] >= f_low)
            & (features[FREQUENCY] < f_high)
        ]
        assert len(inside) == len(members), name
        rule = segment_rule(name, model)
        assert f"recency score {'/'.join(r_set)}" in rule and "orders in 365 days" in rule
    assert "no order" in segment_rule(NO_PURCHASE, model)
    with pytest.raises(KeyError, match="unknown segment"):
        segment_rule("vip", model)
