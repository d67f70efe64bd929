"""The feature sample a scoring run keeps for the monitor (``score_features``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.tables.scores import (
    load_feature_sample,
    sample_ids,
    write_feature_sample,
)


def _features(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    numbers = rng.gamma(1.5, 10, n)
    numbers[::7] = np.nan
    return pd.DataFrame(
        {
            "customer_id": pd.Series([f"c{i:06d}" for i in range(n)], dtype="string"),
            "region": pd.Series(rng.choice(["north", "south", None], n), dtype=object),
            "orders_90d": numbers,
        }
    )


def test_sample_ids_are_the_same_customers_whatever_the_order() -> None:
    ids = np.array([f"c{i}" for i in range(5000)], dtype=object)
    picked = sample_ids(ids, 300)
    shuffled = sample_ids(np.random.default_rng(1).permutation(ids), 300)
    assert len(picked) == 300 == len(set(picked))
    assert set(picked) == set(shuffled)
    assert set(sample_ids(ids[:200], 300)) == set(ids[:200])  # fewer: all of them


def test_a_run_keeps_its_sample_and_reads_it_back_unchanged() -> None:
    db = duckdb.connect()
    features = _features(1200)
    kept = write_feature_sample(db, "sr-1", features)
    assert kept == 1200  # below the sample size: every row
    back = load_feature_sample(db, "sr-1", ["region", "orders_90d"])
    assert back is not None and list(back.columns) == ["customer_id", "region", "orders_90d"]
    back = back.set_index("customer_id").loc[features["customer_id"]]
    assert np.array_equal(back["orders_90d"].to_numpy(), features["orders_90d"].to_numpy(), True)
    assert back["region"].isna().sum() == features["region"].isna().sum()
    assert (back["region"].dropna().to_numpy() == features["region"].dropna().to_numpy()).all()
    # another run, with a feature the first did not have: the table grows a column
    write_feature_sample(db, "sr-2", features.assign(recency=1.0).head(10))
    assert load_feature_sample(db, "sr-2", ["recency"]) is not None
    old = load_feature_sample(db, "sr-1", ["recency"])
    assert old is not None and old["recency"].isna().all()
    # an unknown run or feature: nothing kept
    assert load_feature_sample(db, "sr-3", ["region"]) is None
    assert load_feature_sample(db, "sr-1", ["no_such_feature"]) is None
    assert load_feature_sample(duckdb.connect(), "sr-1", ["region"]) is None


def test_a_large_run_keeps_the_fixed_sample() -> None:
    db = duckdb.connect()
    features = _features(3000)
    assert write_feature_sample(db, "sr-1", features, rows=500) == 500
    back = load_feature_sample(db, "sr-1", ["orders_90d"])
    assert back is not None
    assert set(back["customer_id"]) == set(sample_ids(features["customer_id"], 500))


def _record(db: duckdb.DuckDBPyConnection, run_id: str, day: int) -> None:
    from features.tables.scores import RUNS, RUNS_DDL

    db.execute(RUNS_DDL)
    db.execute(
        f"INSERT INTO {RUNS} (run_id, as_of, scored_at, rows) VALUES (?, ?, ?, 10)",
        [run_id, f"2026-01-{day:02d}", f"2026-02-{day:02d}"],
    )


def test_pruning_keeps_the_samples_of_the_latest_runs_only() -> None:
    from features.tables.scores import prune_feature_samples

    db = duckdb.connect()
    assert prune_feature_samples(db, 2) == 0  # nothing scored yet
    features = _features(50)
    for day in (1, 2, 3, 4):
        write_feature_sample(db, f"sr-{day}", features)
        _record(db, f"sr-{day}", day)
    write_feature_sample(db, "sr-orphan", features)  # a run score_runs does not record
    assert prune_feature_samples(db, 2) == 3 * 50
    kept = {r[0] for r in db.execute("SELECT DISTINCT run_id FROM score_features").fetchall()}
    assert kept == {"sr-3", "sr-4"}
    assert load_feature_sample(db, "sr-1", ["orders_90d"]) is None
    back = load_feature_sample(db, "sr-4", ["orders_90d"])
    assert back is not None and len(back) == 50
    assert prune_feature_samples(db, 2) == 0  # idempotent
    with pytest.raises(ValueError, match="at least 1"):
        prune_feature_samples(db, 0)


def test_scoring_prunes_the_feature_samples_beyond_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rapport score`` run three times with RAPPORT_SCORE_FEATURE_RUNS=2 keeps the
    samples of its last two runs (and every run's scores)."""
    from sample_data import trained_workspace

    from features.warehouse import connect, raw
    from rapport.settings import get_settings, reset_settings
    from training.scoring import score_all

    trained_workspace(tmp_path, customers=600, seed=3)
    monkeypatch.setenv("RAPPORT_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAPPORT_SCORE_FEATURE_RUNS", "2")
    reset_settings()
    con = connect(get_settings().warehouse_path)
    try:
        runs = [score_all(con).run_id for _ in range(3)]
        db = raw(con)
        kept = {r[0] for r in db.execute("SELECT DISTINCT run_id FROM score_features").fetchall()}
        scored = {r[0] for r in db.execute("SELECT DISTINCT run_id FROM scores").fetchall()}
    finally:
        con.disconnect()
        reset_settings()
    assert kept == set(runs[1:])
    assert scored == set(runs)
