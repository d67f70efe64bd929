"""ChurnModel on synthetic data with a known signal; the encoder; the churn metrics."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from models.churn import ChurnModel, FeatureEncoder
from models.metrics import calibration_curve, classification_metrics, ranking_metrics

FAST = {"num_boost_round": 60, "num_threads": 1, "min_data_in_leaf": 40}


def synthetic(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Features named like the spec's, churn driven by recency, orders, complaints, region."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{seed}-{i}" for i in range(n)],
            "days_since_last_order": rng.exponential(60, n),
            "orders_90d": rng.poisson(2, n).astype(float),
            "complaints_30d": rng.poisson(0.3, n).astype(float),
            "region": pd.Series(rng.choice(["north", "south", None], n), dtype="string"),
            "tenure_days": rng.uniform(30, 1000, n),
        }
    )
    logit = (
        -1.5
        + shift
        + 0.02 * frame["days_since_last_order"]
        - 0.6 * frame["orders_90d"]
        + 1.0 * frame["complaints_30d"]
        + np.where((frame["region"] == "north").fillna(False), 0.8, 0.0)
    ).to_numpy()
    p = 1 / (1 + np.exp(-logit))
    return frame, (rng.random(n) < p).astype(float), p


@pytest.fixture(scope="module")
def fitted() -> tuple[ChurnModel, pd.DataFrame, np.ndarray, np.ndarray]:
    X, y, _ = synthetic(4000, 1)
    X_valid, y_valid, _ = synthetic(2000, 2, shift=-0.7)  # a later cutoff with fewer churners
    X_test, y_test, p_test = synthetic(2000, 3, shift=-0.7)
    model = ChurnModel(FAST, random_state=0).fit(X, y, X_valid, y_valid)
    return model, X_test, y_test, p_test


def test_learns_the_signal_close_to_the_truth(fitted: tuple) -> None:
    model, X_test, y_test, p_test = fitted
    p = model.predict_proba(X_test)
    assert p.shape == (len(X_test),) and ((p >= 0) & (p <= 1)).all()
    auc, oracle = roc_auc_score(y_test, p), roc_auc_score(y_test, p_test)
    assert auc > 0.8 and auc > oracle - 0.03


def test_calibration_follows_the_validation_cutoff(fitted: tuple) -> None:
    model, X_test, y_test, _ = fitted
    X, y, _ = synthetic(4000, 1)
    X_valid, y_valid, _ = synthetic(2000, 2, shift=-0.7)
    raw = ChurnModel(FAST, random_state=0, calibration="none").fit(X, y, X_valid, y_valid)
    calibrated, uncalibrated = model.predict_proba(X_test), raw.predict_proba(X_test)
    # the training base rate is higher: only the calibrated model tracks the later rate
    assert abs(calibrated.mean() - y_test.mean()) < 0.03
    assert uncalibrated.mean() - y_test.mean() > 0.05
    assert brier_score_loss(y_test, calibrated) < brier_score_loss(y_test, uncalibrated)
    # Platt scaling is monotone: the ranking (AUC) does not change
    assert roc_auc_score(y_test, calibrated) == pytest.approx(roc_auc_score(y_test, uncalibrated))


def test_isotonic_calibration_is_monotone() -> None:
    X, y, _ = synthetic(3000, 4)
    X_valid, y_valid, _ = synthetic(1500, 5, shift=-0.7)
    model = ChurnModel(FAST, calibration="isotonic").fit(X, y, X_valid, y_valid)
    raw = model.booster_.predict(model.encode(X_valid), raw_score=True)
    p = model.predict_proba(X_valid)
    order = np.argsort(raw)
    assert (np.diff(p[order]) >= -1e-12).all()
    assert abs(p.mean() - y_valid.mean()) < 0.02


def test_fast_path_matches_the_frame_path(fitted: tuple) -> None:
    model, X_test, _, _ = fitted
    row = X_test.iloc[7]
    as_dict = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    one = model.predict_proba_array(model.encode(as_dict))
    assert one.shape == (1,)
    assert one[0] == pytest.approx(model.predict_proba(X_test.iloc[[7]])[0])
    assert model.feature_names == list(X_test.columns.drop("customer_id"))


def test_reasons_name_the_drivers_in_plain_language(fitted: tuple) -> None:
    model, X_test, _, _ = fitted
    risky = X_test.iloc[[0]].assign(days_since_last_order=300.0, orders_90d=0.0)
    loyal = X_test.iloc[[0]].assign(days_since_last_order=3.0, orders_90d=8.0, complaints_30d=0.0)
    up = model.explain(risky, top=2)[0]
    down = model.explain(loyal, top=2)[0]
    assert up["up"][0]["feature"] in {"days_since_last_order", "orders_90d"}
    assert "no order for 300 days (raises risk)" in [r["text"] for r in up["up"]]
    assert {r["feature"] for r in down["down"]} & {"days_since_last_order", "orders_90d"}
    assert all(r["contribution"] > 0 for r in up["up"])
    assert all(r["contribution"] < 0 for r in down["down"])
    # contributions are LightGBM's own: they add up to the raw score with the bias
    X = model.encode(risky)
    contrib = model.booster_.predict(X, pred_contrib=True)[0]
    assert contrib.sum() == pytest.approx(model.booster_.predict(X, raw_score=True)[0])


def test_reasons_decode_categories(fitted: tuple) -> None:
    model, X_test, _, _ = fitted
    north = X_test.iloc[[0]].assign(region="north", complaints_30d=0.0)
    reasons = model.explain(north, top=10)[0]
    region = [r for r in reasons["up"] + reasons["down"] if r["feature"] == "region"]
    assert region and region[0]["value"] == "north" and region[0]["phrase"] == "region north"


def test_pickle_round_trip_predicts_the_same(fitted: tuple) -> None:
    model, X_test, _, _ = fitted
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(X_test), model.predict_proba(X_test))


def test_encoder_freezes_categories_and_checks_inputs() -> None:
    frame = pd.DataFrame({"region": ["b", "a", None], "x": [1.0, None, 3.0], "as_of": [0, 0, 0]})
    enc = FeatureEncoder.fit(frame)
    assert enc.columns == ["region", "x"] and enc.categories == {"region": ["a", "b"]}
    X = enc.transform(pd.DataFrame({"region": ["a", "zzz", None], "x": [1, 2, None]}))
    np.testing.assert_array_equal(np.isnan(X), [[False, False], [True, False], [True, True]])
    assert X[0, 0] == 0.0
    np.testing.assert_array_equal(enc.transform({"region": "b", "x": 2}), [[1.0, 2.0]])
    assert enc.decode(np.array([1.0, 2.0])) == ["b", 2.0]
    with pytest.raises(ValueError, match="missing columns \\['x'\\]"):
        enc.transform(pd.DataFrame({"region": ["a"]}))
    with pytest.raises(ValueError, match="'x' is missing"):
        enc.transform({"region": "a"})
    with pytest.raises(ValueError, match="'x' must be numeric"):
        enc.transform({"region": "a", "x": "many"})


def test_labels_are_checked() -> None:
    X, _, _ = synthetic(200, 6)
    with pytest.raises(ValueError, match="one class"):
        ChurnModel(FAST).fit(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="0/1 labels"):
        ChurnModel(FAST).fit(X, np.full(len(X), 2.0))


def test_without_validation_the_raw_probability_is_used() -> None:
    X, y, _ = synthetic(1000, 7)
    model = ChurnModel(FAST).fit(X, y)
    assert model.calibrator_.method == "none"
    assert roc_auc_score(y, model.predict_proba(X)) > 0.8


def test_classification_metrics_agree_with_sklearn() -> None:
    _, y, p = synthetic(3000, 8)
    m = classification_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, p))
    top = np.argsort(-p)[:300]
    assert m["top_decile_capture"] == pytest.approx(y[top].sum() / y.sum())
    assert m["top_decile_lift"] == pytest.approx(y[top].mean() / y.mean())
    assert ranking_metrics(y, -p)["auc"] == pytest.approx(1 - m["auc"])
    curve = calibration_curve(y, p, bins=10)
    assert len(curve) == 10 and curve["count"].sum() == len(y)
    assert (np.diff(curve["predicted"]) > 0).all()
    assert np.abs(curve["predicted"] - curve["observed"]).max() < 0.1  # p is the truth
    with pytest.raises(ValueError, match="both classes"):
        ranking_metrics(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(y, np.full(len(y), np.nan))


def test_single_row_fast_path_matches_the_batch_path(fitted: tuple) -> None:
    model, X_test, _, _ = fitted
    X = model.encode(X_test.iloc[:25])
    X[3] = np.nan  # all missing
    batch, reasons = model.predict_proba_array(X), model.explain_array(X)
    for i in range(len(X)):
        np.testing.assert_allclose(
            model.predict_proba_array(X[i : i + 1]), batch[i : i + 1], rtol=1e-12
        )
        assert model.explain_array(X[i : i + 1]) == reasons[i : i + 1]
    # a model that served single rows still pickles (the C handles stay outside it)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.predict_proba_array(X[:1]), batch[:1], rtol=1e-12)
