"""Point-in-time training sets: cutoffs, labels, the time split and lineage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sample_data import cutoff, load_tables, random_tables

from features.ingest import discover_files, ingest
from features.warehouse import connect
from rapport.demo_data import generate, write
from training.datasets import (
    Window,
    build_training_set,
    data_end,
    default_as_of,
    fingerprint,
    labels,
    lineage,
    plan_cutoffs,
)

END = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    folder = tmp_path_factory.mktemp("demo")
    data = generate(1200, seed=3, end=END)
    con = connect(folder / "warehouse.duckdb")
    ingest(con, discover_files(write(data, folder / "files")["customers"].parent), now=END)
    return con, data


@pytest.fixture()
def random_con(tmp_path: Path) -> tuple[object, dict[str, pd.DataFrame]]:
    tables = random_tables(seed=11, customers=60, events=900)
    con = connect(tmp_path / "random.duckdb")
    load_tables(con, tables)
    return con, tables


def expected_labels(tables: dict[str, pd.DataFrame], as_of: datetime, horizon: int) -> pd.DataFrame:
    """The label definitions, written the slow and obvious way."""
    customers, orders = tables["customers"], tables["orders"]
    known = customers[customers["signup_at"] < as_of]["customer_id"]
    rows = []
    for cid in known:
        mine = orders[orders["customer_id"] == cid]
        past = mine[
            (mine["ordered_at"] >= as_of - timedelta(days=365)) & (mine["ordered_at"] < as_of)
        ]
        future = mine[
            (mine["ordered_at"] >= as_of) & (mine["ordered_at"] < as_of + timedelta(days=horizon))
        ]
        rows.append(
            {
                "customer_id": cid,
                "active": len(past) > 0,
                "churned": len(past) > 0 and len(future) == 0,
                "orders_in_horizon": len(future),
                "spend": future["amount"].sum(),
                "margin": future["margin"].sum(min_count=1) if len(future) else np.nan,
            }
        )
    return pd.DataFrame(rows).sort_values("customer_id").reset_index(drop=True)


def test_labels_match_their_definition(random_con: tuple) -> None:
    con, tables = random_con
    cutoffs = [cutoff(400), cutoff(500.5)]
    got = labels(con, cutoffs, horizon_days=60)
    assert list(got["as_of"].unique()) == [pd.Timestamp(c) for c in cutoffs]
    for c in cutoffs:
        mine = got[got["as_of"] == pd.Timestamp(c)].reset_index(drop=True)
        want = expected_labels(tables, c, 60)
        assert list(mine["customer_id"]) == list(want["customer_id"])
        for col in ("active", "churned", "orders_in_horizon"):
            assert mine[col].astype(int).tolist() == want[col].astype(int).tolist(), col
        np.testing.assert_allclose(mine["spend"], want["spend"])
        np.testing.assert_allclose(mine["margin"].astype(float), want["margin"], equal_nan=True)
        assert 0 < mine["churned"].sum() < mine["active"].sum()


def test_an_event_exactly_at_the_cutoff_is_a_label_not_a_feature(random_con: tuple) -> None:
    con, tables = random_con
    first = tables["orders"].sort_values("ordered_at").iloc[len(tables["orders"]) // 2]
    at = first["ordered_at"].to_pydatetime()
    got = labels(con, [at], horizon_days=1)
    row = got[got["customer_id"] == first["customer_id"]].iloc[0]
    assert row["orders_in_horizon"] >= 1 and not row["churned"]


def test_cutoffs_never_let_a_label_cross_the_next_split() -> None:
    for horizon, step in ((90, 3), (90, 1), (30, 1), (180, 2)):
        plan = plan_cutoffs("2024-10-03", horizon, train_cutoffs=4, step_months=step)
        assert plan.valid + timedelta(days=horizon) <= plan.test
        assert plan.train[-1] + timedelta(days=horizon) <= plan.valid
        assert list(plan.train) == sorted(plan.train) and len(plan.train) == 4
        months = [c.year * 12 + c.month for c in plan.train]
        assert set(np.diff(months)) == {step}
        assert all(c.day == 3 for c in plan.all)  # whole months from the holdout
    tight = plan_cutoffs("2024-10-03", 30, train_cutoffs=2, step_months=1)
    assert (tight.valid, tight.train[-1]) == (
        datetime(2024, 9, 3, tzinfo=UTC),
        datetime(2024, 8, 3, tzinfo=UTC),
    )
    with pytest.raises(ValueError, match="train_cutoffs >= 1"):
        plan_cutoffs("2024-10-03", 90, train_cutoffs=0)


def test_default_holdout_is_the_latest_complete_horizon(demo: tuple) -> None:
    con, data = demo
    assert data_end(con) == END
    assert default_as_of(con, 90) == END - timedelta(days=90) == data.truth_as_of


def test_training_set_splits_by_time(demo: tuple) -> None:
    con, data = demo
    ts = build_training_set(con, Window(horizon_days=90, train_cutoffs=2))
    assert ts.plan.test == data.truth_as_of
    train, valid, test = ts.part("train"), ts.part("valid"), ts.part("test")
    assert set(train["as_of"]) == {pd.Timestamp(c) for c in ts.plan.train}
    assert set(valid["as_of"]) == {pd.Timestamp(ts.plan.valid)}
    assert set(test["as_of"]) == {pd.Timestamp(ts.plan.test)}
    known = data.customers["signup_at"] < pd.Timestamp(ts.plan.test)
    assert len(test) == int(known.sum()) == len(data.truth_customers)
    assert set(ts.feature_names) <= set(ts.frame.columns)
    active = ts.part("test", active_only=True)
    assert active["active"].all() and len(active) < len(test)
    assert (active["days_since_last_order"] < 365).all()  # active = ordered in the last year
    assert not test.loc[~test["active"], "churned"].any()
    counts = ts.counts()
    assert counts["rows_test"] == len(test) and counts["active_valid"] == valid["active"].sum()


def test_cutoffs_outside_the_data_are_refused(demo: tuple) -> None:
    con, _ = demo
    with pytest.raises(ValueError, match="past the end of the data"):
        build_training_set(con, Window(END - timedelta(days=30), horizon_days=90))
    with pytest.raises(ValueError, match="not enough history"):
        build_training_set(con, Window("2022-06-01", horizon_days=90))


def test_lineage_describes_the_data_and_its_fingerprint_follows_it(random_con: tuple) -> None:
    con, tables = random_con
    info = lineage(con)
    assert info["orders_rows"] == len(tables["orders"])
    assert info["warehouse"].endswith("random.duckdb")
    assert pd.Timestamp(info["orders_max_ordered_at"]) == tables["orders"]["ordered_at"].max()
    before = fingerprint(info)
    tables["orders"] = tables["orders"].iloc[:-1]
    load_tables(con, {"orders": tables["orders"]})
    assert fingerprint(lineage(con)) != before
