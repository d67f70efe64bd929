"""ValueModel on synthetic zero-inflated, heavy-tailed, seasonal spend; the value metrics."""

from __future__ import annotations

import copyreg
import pickle
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from models.churn import booster_predict
from models.metrics import interval_coverage, regression_metrics, value_deciles
from models.value import (
    OUTPUT_COLUMNS,
    ROW_PATH_ROWS,
    ConformalBands,
    SpendPrior,
    ValueModel,
)

FAST = {"num_boost_round": 80, "num_threads": 1, "min_data_in_leaf": 40}
#: spend in a horizon starting in October is twice the rest of the year
SEASON = {1: 1.0, 4: 1.0, 7: 1.0, 10: 2.0}


def synthetic(
    n: int, seed: int, months: tuple[int, ...]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(frame with as_of, realised spend, true expected spend)."""
    rng = np.random.default_rng(seed)
    month = rng.choice(months, n)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{seed}-{i}" for i in range(n)],
            "as_of": pd.to_datetime([f"2024-{m:02d}-03" for m in month], utc=True),
            "orders_90d": rng.poisson(1.5, n).astype(float),
            "avg_order_value_365d": rng.lognormal(3.5, 0.7, n),
            "region": rng.choice(["north", "south"], n),
        }
    )
    p_buy = 1 - np.exp(-0.2 - 0.6 * frame["orders_90d"].to_numpy())
    basket = frame["avg_order_value_365d"].to_numpy() * (1 + frame["orders_90d"].to_numpy())
    factor = np.array([SEASON[m] for m in month])
    expected = p_buy * basket * factor
    bought = rng.random(n) < p_buy
    noise = rng.gamma(2.0, 0.5, n)
    realised = np.where(bought, basket * factor * noise, 0.0)
    return frame, realised, expected


@pytest.fixture(scope="module")
def fitted() -> ValueModel:
    X, y, _ = synthetic(6000, 1, (1, 4, 7, 10))
    X_valid, y_valid, _ = synthetic(2500, 2, (7,))
    return ValueModel(FAST, random_state=0).fit(X, y, X_valid, y_valid)


def test_mean_tracks_the_true_expected_spend(fitted: ValueModel) -> None:
    X, _, expected = synthetic(3000, 3, (4, 10))
    out = fitted.predict(X)
    assert list(out.columns) == list(OUTPUT_COLUMNS) and out.index.equals(X.index)
    assert spearmanr(out["value_mean"], expected).statistic > 0.85
    assert abs(out["value_mean"].sum() / expected.sum() - 1) < 0.1


def test_season_factor_is_learned_per_cutoff_month(fitted: ValueModel) -> None:
    assert set(fitted.season_) == {1, 4, 7, 10}
    assert fitted.season_[10] / fitted.season_[4] == pytest.approx(2.0, rel=0.15)
    X, _, _ = synthetic(500, 4, (4,))
    april = fitted.predict(X)["value_mean"].to_numpy()
    october = fitted.predict(X.assign(as_of=pd.Timestamp("2024-10-03", tz="UTC")))
    ratio = october["value_mean"].to_numpy() / april
    np.testing.assert_allclose(ratio, fitted.season_[10] / fitted.season_[4])
    no_cutoff = fitted.predict(X.drop(columns="as_of"))["value_mean"].to_numpy()
    np.testing.assert_allclose(april, no_cutoff * fitted.season_[4])


def test_interval_quantiles_hold_on_fresh_rows(fitted: ValueModel) -> None:
    X, y, _ = synthetic(4000, 5, (7,))
    out = fitted.predict(X)
    assert (out["value_p10"] <= out["value_p50"]).all()
    assert (out["value_p50"] <= out["value_p90"]).all()
    assert (out["value_p10"] >= 0).all()
    # each bound is a quantile; with the mass of zeros, p10..p90 holds at least 80%
    assert 0.07 < np.mean(y > out["value_p90"]) < 0.13
    assert np.mean(y < out["value_p10"]) < 0.13
    assert np.mean(y <= out["value_p50"]) > 0.45
    assert interval_coverage(y, out["value_p10"], out["value_p90"]) > 0.77


def test_fast_path_matches_the_frame_path(fitted: ValueModel) -> None:
    X, _, _ = synthetic(20, 6, (10,))
    row = X.iloc[3].to_dict()
    from_dict = fitted.predict(row).to_numpy()
    np.testing.assert_allclose(from_dict, fitted.predict(X.iloc[[3]]).to_numpy())
    array = fitted.predict_array(fitted.encode(row), as_of=row["as_of"])
    np.testing.assert_allclose(array, from_dict)
    assert fitted.feature_names == ["orders_90d", "avg_order_value_365d", "region"]


def test_importance_covers_both_parts(fitted: ValueModel) -> None:
    gain = fitted.feature_importance()
    assert gain.sum() == pytest.approx(1.0)
    assert set(gain.index[:2]) == {"orders_90d", "avg_order_value_365d"}


def test_without_cutoffs_or_validation_it_still_fits() -> None:
    X, y, expected = synthetic(2000, 7, (4,))
    model = ValueModel(FAST).fit(X.drop(columns="as_of"), y)
    assert model.season_ == {}
    assert spearmanr(model.predict(X)["value_mean"], expected).statistic > 0.8


def test_labels_are_checked() -> None:
    X, y, _ = synthetic(300, 8, (4,))
    with pytest.raises(ValueError, match="both customers with and without spend"):
        ValueModel(FAST).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="finite"):
        ValueModel(FAST).fit(X, np.where(y > 0, np.nan, 0.0))


def test_regression_metrics_by_hand() -> None:
    y = np.array([0.0, 10.0, 0.0, 50.0, 5.0, 0.0, 0.0, 100.0, 0.0, 20.0])
    pred = np.array([1.0, 8.0, 2.0, 40.0, 6.0, 0.5, 0.0, 90.0, 1.0, 25.0])
    m = regression_metrics(y, pred)
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - y)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert m["spearman"] == pytest.approx(spearmanr(y, pred).statistic)
    assert m["top_decile_capture"] == pytest.approx(100.0 / y.sum())  # top 1 of 10
    assert m["total_error"] == pytest.approx((pred.sum() - y.sum()) / y.sum())
    deciles = value_deciles(y, pred, bins=5)
    assert deciles["realised"].iloc[0] == pytest.approx(75.0)  # the two largest predictions
    assert deciles["count"].sum() == len(y)


def test_single_row_fast_path_matches_the_batch_path(fitted: ValueModel) -> None:
    X, _, _ = synthetic(20, 6, (10,))
    M = fitted.encode(X)
    M[2] = np.nan
    batch = fitted.predict_array(M)
    for i in range(len(M)):
        np.testing.assert_allclose(fitted.predict_array(M[i : i + 1]), batch[i : i + 1], rtol=1e-12)


def test_without_the_prior_columns_validation_rows_start_where_training_rows_do() -> None:
    """Training and validation rows share the booster's starting score (the training
    mean), or early stopping judges the validation rows against another baseline: with
    the validation set equal to the training set, both metrics agree at every round."""
    X, y, _ = synthetic(1500, 9, (4, 7))
    seen: list[tuple[float, float]] = []

    def both_metrics(env: Any) -> None:
        seen.append((env.model.eval_train()[0][2], env.evaluation_result_list[0][2]))

    model = ValueModel(FAST).fit(X, y, X, y, callbacks=[both_metrics])
    assert model.prior_ is None  # the synthetic frame has no lifetime order columns
    assert len(seen) > 5
    for train_metric, valid_metric in seen:
        assert valid_metric == pytest.approx(train_metric, rel=1e-9)


# --------------------------------------------------------------------------- vs the prior
def test_with_signal_in_the_features_the_boosted_correction_is_kept(fitted: ValueModel) -> None:
    choice = fitted.choice_
    assert choice.shrinkage >= 0.8 and choice.kind in ("boosted", "blend")
    assert choice.rmse["chosen"] <= min(choice.rmse["boosted"], choice.rmse["prior"])
    assert choice.rmse["chosen"] < 0.9 * choice.rmse["prior"]
    assert choice.reason().startswith(choice.kind) and "training mean" in choice.reason()


def noise_world(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Spend independent of every feature: the prior (the mean) is the truth."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(8)})
    spend = np.where(rng.random(n) < 0.3, rng.lognormal(3.5, 1.2, n), 0.0)
    return frame, spend


def test_when_the_features_are_noise_the_model_does_not_lose_to_the_prior() -> None:
    # a booster free to overfit: small leaves, fast learning, patient early stopping
    greedy = {**FAST, "min_data_in_leaf": 5, "learning_rate": 0.3, "num_boost_round": 200}
    X, y = noise_world(3000, 11)
    X_valid, y_valid = noise_world(3000, 12)
    model = ValueModel(greedy, random_state=0).fit(X, y, X_valid, y_valid)
    assert model.choice_.shrinkage < 1.0 and model.choice_.kind in ("prior", "blend")
    X_test, _ = noise_world(20_000, 13)
    truth = float(np.mean(noise_world(200_000, 14)[1]))  # the true expected spend
    chosen = model.predict(X_test)["value_mean"].to_numpy()
    boosted = np.exp(
        booster_predict(model.booster_, model.encode(X_test), raw_score=True) + model.base_score_
    )
    prior = np.full(len(X_test), np.exp(model.base_score_))
    error = {
        name: np.sqrt(np.mean((p - truth) ** 2))
        for name, p in {"chosen": chosen, "boosted": boosted, "prior": prior}.items()
    }
    assert error["chosen"] < 0.5 * error["boosted"], error
    assert error["chosen"] <= error["prior"] + 0.05 * truth, error


# ------------------------------------------------------------------ the one-row live path
#: values where floats and numpy could part: signed zeros, NaN, infinities, huge and tiny
EDGES = np.array([np.nan, 0.0, -0.0, 1.0, -1.0, -1e6, 1e-300, 1e6, 1e300, np.inf, -np.inf])


def _bits(values: np.ndarray) -> np.ndarray:
    """Float64 bit patterns: 0.0 / -0.0 and NaN payloads count as different."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


def prior_world(n: int, seed: int, months: tuple[int, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """Lifetime order columns (the prior's inputs), a cutoff and spend that follows them."""
    rng = np.random.default_rng(seed)
    orders = rng.poisson(2.0, n).astype(float)
    first = np.where(orders > 0, rng.uniform(1.0, 900.0, n), np.nan)
    frame = pd.DataFrame(
        {
            "as_of": pd.to_datetime([f"2024-{m:02d}-03" for m in rng.choice(months, n)], utc=True),
            "orders_all": orders,
            "days_since_first_order": first,
            "days_since_last_order": np.where(orders > 1, first * rng.uniform(0.0, 1.0, n), first),
            "spend_all": orders * rng.lognormal(3.5, 0.8, n),
            "tenure_days": np.nan_to_num(first, nan=200.0) + rng.uniform(0.0, 300.0, n),
            "complaints": rng.poisson(0.3, n).astype(float),
        }
    )
    rate = (orders + 0.2) / (frame["days_since_last_order"].fillna(400.0).to_numpy() + 30.0)
    bought = rng.random(n) < 1.0 - np.exp(-30.0 * rate)
    return frame, np.where(bought, rng.lognormal(3.5, 0.8, n) * (1 + orders), 0.0)


@pytest.fixture(scope="module")
def with_prior() -> ValueModel:
    X, y = prior_world(5000, 21, (3, 6, 9, 12))
    X_valid, y_valid = prior_world(2500, 22, (6,))
    model = ValueModel(FAST, random_state=0).fit(X, y, X_valid, y_valid)
    assert model.prior_ is not None and model.prior_.baseline.one_customer is not None
    assert model.season_  # the row path applies the seasonal factors too
    return model


def _edge_rows(model: ValueModel, n: int, seed: int) -> np.ndarray:
    """Encoded rows of plausible customers, a third of their prior inputs replaced by
    :data:`EDGES`, plus by-hand cases: no orders, one order (frequency 0), first order day
    = last (recency 0), a huge age, every input missing."""
    frame, _ = prior_world(n, seed, (6,))
    X = model.encode(frame)
    assert model.prior_ is not None
    columns = list(model.prior_.columns)
    rng = np.random.default_rng(seed)
    inputs = X[:, columns]
    hit = rng.random(inputs.shape) < 0.33
    inputs[hit] = rng.choice(EDGES, int(hit.sum()))
    X[:, columns] = inputs
    by_hand = [
        [0.0, np.nan, np.nan, 0.0, 30.0],
        [1.0, 40.0, 40.0, 55.0, 80.0],
        [4.0, 300.0, 300.0, 120.0, 310.0],
        [3.0, 1e9, 2.0, 100.0, 1e9],
        [2.0, 1e308, -1e308, 1e308, 0.0],
        [np.nan] * 5,
    ]
    extra = np.repeat(X[:1], len(by_hand), axis=0)
    extra[:, columns] = by_hand
    return np.vstack([X, extra])


def test_prior_one_row_is_the_vectorised_prior_bit_for_bit(with_prior: ValueModel) -> None:
    prior = with_prior.prior_
    assert prior is not None
    X = _edge_rows(with_prior, 5000, 23)
    with np.errstate(all="ignore"):  # the edge rows warn in the vectorised path only
        expected = prior.log_spend(X)
        inputs = X.take(prior.columns, axis=1)
        got = [prior.log_spend_one(row) for row in inputs.tolist()]
        np.testing.assert_array_equal(_bits(np.array(got)), _bits(expected))
        rfm = np.array([prior.rfm_one(row) for row in inputs.tolist()])
        np.testing.assert_array_equal(
            _bits(rfm), _bits(np.column_stack(prior.rfm(X, prior.columns)))
        )
        assert np.isfinite(expected).mean() > 0.8  # the edges did not take over
        # a fitted a = 1 divides by zero: the row goes the vectorised way, numpy's inf
        odd = SpendPrior(pickle.loads(pickle.dumps(prior.baseline)), 90, prior.columns)
        odd.baseline.transactions_.params_["a"] = 1.0
        assert odd.baseline.one_customer is None
        got = [odd.log_spend_one(row) for row in inputs[:200].tolist()]
        np.testing.assert_array_equal(_bits(np.array(got)), _bits(odd.log_spend(X[:200])))


def _vectorised(model: ValueModel, X: np.ndarray, as_of: Any) -> np.ndarray:
    """What :meth:`ValueModel.predict_array` computes for more than ROW_PATH_ROWS rows."""
    mean = model.predict_mean_array(X, as_of)
    return np.column_stack([mean, model.bands_(mean)])


@pytest.mark.parametrize(
    "as_of",
    [
        None,
        datetime(2024, 6, 3, tzinfo=UTC),
        datetime(2024, 12, 24, 23, 30),  # naive: read as UTC
        datetime(2024, 5, 3, tzinfo=UTC),  # a month without a factor of its own
        "one per row",
    ],
)
def test_row_path_is_the_vectorised_path_bit_for_bit(with_prior: ValueModel, as_of: Any) -> None:
    X = _edge_rows(with_prior, 3000, 24)
    rng = np.random.default_rng(25)
    start = 0
    with np.errstate(all="ignore"):
        while start < len(X):
            rows = X[start : start + int(rng.integers(1, ROW_PATH_ROWS + 1))]
            start += len(rows)
            cutoff = as_of
            if as_of == "one per row":
                cutoff = [
                    datetime(2024, int(m), 3, tzinfo=UTC) for m in rng.choice([3, 5, 12], len(rows))
                ]
            got = with_prior.predict_array(rows, cutoff)
            np.testing.assert_array_equal(_bits(got), _bits(_vectorised(with_prior, rows, cutoff)))


def test_row_path_without_the_prior_is_the_vectorised_path(fitted: ValueModel) -> None:
    X = fitted.encode(synthetic(300, 26, (1, 10))[0])
    X[::7] = np.nan
    now = datetime(2024, 10, 3, tzinfo=UTC)
    for i in range(0, len(X), 3):
        rows = X[i : i + 3]
        np.testing.assert_array_equal(
            _bits(fitted.predict_array(rows, now)), _bits(_vectorised(fitted, rows, now))
        )


@pytest.mark.parametrize(
    "bands",
    [
        ConformalBands(
            (10.0, 50.0, 200.0),
            ((0.0, 0.8, 2.5), (0.1, 0.9, 2.0), (0.3, 1.0, 1.7), (0.5, 1.0, 1.4)),
        ),
        ConformalBands((), ((2.0, 0.5, 1.0),)),  # one bin, ratios out of order
        ConformalBands((5.0,), ((-0.0, 1.0, 2.0), (0.0, 1.0, 3.0))),  # -0.0: numpy decides
        ConformalBands((5.0, np.inf), ((0.0, 1.0, 2.0), (0.0, 1.0, 3.0), (1.0, 1.0, 1.0))),
    ],
)
def test_one_mean_interval_is_the_vectorised_interval(bands: ConformalBands) -> None:
    rng = np.random.default_rng(27)
    means = np.concatenate(
        [
            rng.lognormal(3.0, 2.0, 3000),
            EDGES,
            bands.edges,
            np.nextafter(bands.edges, 0.0),
            [5e-324, 1e308],
        ]
    )
    with np.errstate(all="ignore"):
        got = np.array([bands.one(m) for m in means.tolist()])
        np.testing.assert_array_equal(_bits(got), _bits(bands(means)))


def test_cached_arrays_are_not_pickled_and_old_pickles_load() -> None:
    bands = ConformalBands((10.0,), ((0.0, 1.0, 2.0), (0.5, 1.0, 1.5)))
    bands(np.array([3.0, 30.0]))
    bands.one(30.0)
    copy = pickle.loads(pickle.dumps(bands))
    assert copy == bands and set(copy.__dict__) == {"edges", "ratios"}
    cached = dict(bands.__dict__)
    assert {"_arrays", "_ordered"} <= set(cached)

    class Before:  # a model pickled before __getstate__: the caches in its state
        def __reduce_ex__(self, protocol: Any) -> Any:
            return copyreg._reconstructor, (ConformalBands, object, None), cached

    old = pickle.loads(pickle.dumps(Before()))
    assert type(old) is ConformalBands and old == bands
    assert (
        old.one(30.0) == bands.one(30.0)
        and (old(np.array([30.0])) == bands(np.array([30.0]))).all()
    )
