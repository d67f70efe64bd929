"""The feature sample a scoring run keeps for the monitor (``score_features``)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

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
