"""Uplift learners on logged data with non-uniform propensities and known effects."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.contract import NO_ACTION
from models.uplift import (
    _SEQUENTIAL_FOLDS,
    UpliftModel,
    UpliftPrediction,
    _clip_value,
    _fold_mean,
    _fold_mean_value,
    _OneRow,
    dr_pseudo_outcome,
    uplift_curve,
)

ACTIONS = np.array([NO_ACTION, "strong", "weak"])


def _sigmoid(z: Any) -> Any:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class Logged:
    X: pd.DataFrame
    action: np.ndarray
    propensity: np.ndarray
    outcome: np.ndarray
    revenue: np.ndarray
    true_conversion: dict[str, np.ndarray]
    true_revenue: dict[str, np.ndarray]


def make_log(n: int, seed: int) -> Logged:
    """x0 confounds: it raises the chance of 'strong' and the baseline conversion alike."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"x{i}" for i in range(5)])
    X["region"] = pd.Series(rng.choice(["north", "south", "east"], size=n), dtype=object)
    x = {c: X[c].to_numpy() for c in ("x0", "x1", "x2", "x3")}
    logits = np.stack([np.zeros(n), 1.0 * x["x0"], 0.3 - 0.7 * x["x0"]], axis=1)
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    chosen = (prob.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    north = (X["region"] == "north").to_numpy() * 0.3
    base = _sigmoid(-1.0 + 0.6 * x["x1"] + 0.8 * x["x0"] + north)
    effect = {
        "strong": 0.25 * _sigmoid(2.5 * x["x2"]) - 0.05,
        "weak": 0.06 * (x["x3"] > 0) - 0.02,
    }
    p_convert = {NO_ACTION: base} | {a: np.clip(base + e, 0, 1) for a, e in effect.items()}
    logged_p = np.choose(chosen, [p_convert[a] for a in ACTIONS])
    outcome = (rng.random(n) < logged_p).astype(float)
    basket = 50 + 10 * x["x1"]
    revenue = outcome * (basket + rng.normal(0, 5, n))
    true_conv = {a: p_convert[a] - base for a in effect}
    return Logged(
        X,
        ACTIONS[chosen],
        prob[np.arange(n), chosen],
        outcome,
        revenue,
        true_conv,
        {a: c * basket for a, c in true_conv.items()},
    )


@pytest.fixture(scope="module")
def train() -> Logged:
    return make_log(20_000, seed=0)


@pytest.fixture(scope="module")
def test() -> Logged:
    return make_log(8_000, seed=1)


@pytest.fixture(scope="module")
def fitted(train: Logged) -> dict[str, UpliftModel]:
    args = (train.X, train.action, train.propensity, train.outcome, train.revenue)
    return {m: UpliftModel(method=m).fit(*args) for m in ("dr", "t", "ipw-t")}  # type: ignore[arg-type]


def _mse(pred: UpliftPrediction, truth: dict[str, np.ndarray], action: str) -> float:
    return float(np.mean((pred.incremental_conversion[:, pred.index(action)] - truth[action]) ** 2))


def test_dr_recovers_sign_and_ranking(fitted: dict[str, UpliftModel], test: Logged) -> None:
    pred = fitted["dr"].predict(test.X)
    assert pred.actions == ["strong", "weak"]
    j = pred.index("strong")
    conv, rev = pred.incremental_conversion[:, j], pred.incremental_revenue[:, j]
    rho_conv = spearmanr(conv, test.true_conversion["strong"]).statistic
    rho_rev = spearmanr(rev, test.true_revenue["strong"]).statistic
    print(f"DR spearman strong: conversion {rho_conv:.3f}, revenue {rho_rev:.3f}")
    assert rho_conv > 0.5
    assert rho_rev > 0.5
    # sign: customers the truth says gain (lose) are, on average, predicted to gain (lose)
    truth = test.true_conversion["strong"]
    assert conv[truth > 0.1].mean() > 0.05
    assert conv[truth < 0].mean() < conv[truth > 0.1].mean() - 0.1
    assert abs(conv.mean() - truth.mean()) < 0.03


def test_dr_beats_t_learner_and_naive_on_uplift_mse(
    fitted: dict[str, UpliftModel], train: Logged, test: Logged
) -> None:
    lines, mse = [], {}
    for action in ("strong", "weak"):
        treated, control = train.action == action, train.action == NO_ACTION
        naive = train.outcome[treated].mean() - train.outcome[control].mean()
        mse[("naive", action)] = float(np.mean((naive - test.true_conversion[action]) ** 2))
        for method, model in fitted.items():
            mse[(method, action)] = _mse(model.predict(test.X), test.true_conversion, action)
        lines.append(
            f"{action}: " + ", ".join(f"{m}={mse[(m, action)]:.5f}" for m in fitted | {"naive": 0})
        )
    print("uplift MSE (conversion):", *lines, sep="\n  ")
    # the confounded naive difference is far off; the DR learner beats it and the T-learner
    assert mse[("dr", "strong")] < 0.5 * mse[("naive", "strong")]
    assert mse[("dr", "strong")] < 0.5 * mse[("t", "strong")]
    assert mse[("dr", "weak")] < mse[("t", "weak")]


def test_qini_of_dr_beats_random(fitted: dict[str, UpliftModel], test: Logged) -> None:
    pred = fitted["dr"].predict(test.X)
    rows = np.isin(test.action, ["strong", NO_ACTION])
    treated = test.action[rows] == "strong"
    args = (treated, test.outcome[rows], test.propensity[rows])
    model_qini = uplift_curve(pred.incremental_conversion[rows, pred.index("strong")], *args).qini
    random_qini = uplift_curve(np.random.default_rng(3).random(rows.sum()), *args).qini
    oracle_qini = uplift_curve(test.true_conversion["strong"][rows], *args).qini
    print(f"qini strong: dr {model_qini:.4f}, random {random_qini:.4f}, oracle {oracle_qini:.4f}")
    assert model_qini > 0.005
    assert model_qini > random_qini + 0.005
    assert model_qini > 0.5 * oracle_qini


def test_t_learners_predict_from_outcome_models(
    fitted: dict[str, UpliftModel], test: Logged
) -> None:
    for method in ("t", "ipw-t"):
        model = fitted[method]
        pred, outcome = model.predict(test.X), model.predict_outcome(test.X)
        for j, action in enumerate(pred.actions):
            expected = outcome[action][0] - outcome[NO_ACTION][0]
            assert np.allclose(pred.incremental_conversion[:, j], expected)
        assert np.allclose(pred.baseline_revenue, outcome[NO_ACTION][1])


def test_predict_outcome_covers_control_and_actions(
    fitted: dict[str, UpliftModel], test: Logged
) -> None:
    outcome = fitted["dr"].predict_outcome(test.X)
    assert set(outcome) == {NO_ACTION, "strong", "weak"}
    p, revenue = outcome[NO_ACTION]
    assert p.shape == revenue.shape == (len(test.X),)
    assert ((p >= 0) & (p <= 1)).all()
    # the control model tracks the true baseline conversion
    base = np.clip(
        outcome["strong"][0] - test.true_conversion["strong"], 0, 1
    )  # truth: p_strong - base
    assert np.corrcoef(p, base)[0, 1] > 0.5


def test_categories_are_frozen_at_fit(fitted: dict[str, UpliftModel], test: Logged) -> None:
    model = fitted["dr"]
    assert model.encoder_.categories == {"region": ["east", "north", "south"]}
    reference = model.predict(test.X.head(50)).incremental_conversion
    as_category = test.X.head(50).astype({"region": "category"})[list(reversed(test.X.columns))]
    assert np.allclose(model.predict(as_category).incremental_conversion, reference)
    unseen = test.X.head(50).assign(region="west")
    assert np.isfinite(model.predict(unseen).incremental_conversion).all()
    with pytest.raises(ValueError, match=r"missing columns \['x4'\]"):
        model.predict(test.X.drop(columns="x4"))


def test_prediction_frame_and_pickle(fitted: dict[str, UpliftModel], test: Logged) -> None:
    model = fitted["dr"]
    pred = model.predict(test.X.head(20))
    frame = pred.to_frame(test.X.head(20).index)
    assert list(frame.columns) == [
        "uplift_conversion_strong",
        "uplift_revenue_strong",
        "uplift_conversion_weak",
        "uplift_revenue_weak",
    ]
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(
        restored.predict(test.X.head(20)).incremental_revenue, pred.incremental_revenue
    )


def test_input_validation(train: Logged) -> None:
    X, a, p, y, r = train.X, train.action, train.propensity, train.outcome, train.revenue
    with pytest.raises(ValueError, match="propensity must be in"):
        UpliftModel().fit(X, a, np.where(a == "weak", 0.0, p), y, r)
    with pytest.raises(ValueError, match="no logged decision for the control"):
        UpliftModel().fit(X, np.where(a == NO_ACTION, "weak", a), p, y, r)
    with pytest.raises(ValueError, match="outcome must be 0/1"):
        UpliftModel().fit(X, a, p, y * 2, r)
    with pytest.raises(ValueError, match="revenue has shape"):
        UpliftModel().fit(X, a, p, y, r[:-1])
    with pytest.raises(ValueError, match="method must be one of"):
        UpliftModel(method="x")  # type: ignore[arg-type]


def test_dr_pseudo_outcome_by_hand() -> None:
    y = np.array([1.0, 0.0, 1.0])
    a = np.array(["t", NO_ACTION, "other"])
    p = np.array([0.5, 0.25, 0.2])
    mu_a, mu_0 = np.array([0.4, 0.4, 0.4]), np.array([0.1, 0.2, 0.3])
    gamma = dr_pseudo_outcome(y, a, p, "t", NO_ACTION, mu_a, mu_0)
    assert np.allclose(gamma, [0.3 + 0.6 / 0.5, 0.2 + 0.2 / 0.25, 0.1])


def test_uplift_curve_ipw_corrects_selection() -> None:
    """Treatment given mostly to likely buyers: only the IPW curve ends at the true effect."""
    rng = np.random.default_rng(7)
    n = 200_000
    likely = rng.random(n) < 0.5
    p_treat = np.where(likely, 0.8, 0.2)
    treated = rng.random(n) < p_treat
    outcome = (rng.random(n) < np.where(likely, 0.5, 0.1) + 0.05 * treated).astype(float)
    propensity = np.where(treated, p_treat, 1 - p_treat)
    score = rng.random(n)
    weighted = uplift_curve(score, treated, outcome, propensity)
    unweighted = uplift_curve(score, treated, outcome)
    assert weighted.fraction[0] == 0 and weighted.fraction[-1] == pytest.approx(1.0)
    assert weighted.gain[-1] == pytest.approx(0.05, abs=0.01)
    assert unweighted.gain[-1] > 0.2  # selection bias masquerading as uplift
    # a score that knows who responds more ranks above random
    effect = np.where(rng.random(n) < 0.5, 0.1, 0.0)
    outcome2 = (rng.random(n) < 0.2 + effect * treated).astype(float)
    good = uplift_curve(effect + rng.normal(0, 0.01, n), treated, outcome2, propensity)
    bad = uplift_curve(score, treated, outcome2, propensity)
    assert good.qini > 0.01 > abs(bad.qini)
    assert uplift_curve(effect, treated, outcome2, propensity).auuc > bad.auuc


def test_single_row_fast_path_matches_the_batch_path(
    fitted: dict[str, UpliftModel], test: Logged
) -> None:
    for model in fitted.values():
        frame = test.X.iloc[:10]
        batch = model.predict(frame)
        for i in range(len(frame)):
            one = model.predict(frame.iloc[[i]])
            np.testing.assert_allclose(
                one.incremental_conversion, batch.incremental_conversion[i : i + 1], rtol=1e-12
            )
            np.testing.assert_allclose(
                one.incremental_revenue, batch.incremental_revenue[i : i + 1], rtol=1e-12
            )
            np.testing.assert_allclose(
                one.baseline_revenue, batch.baseline_revenue[i : i + 1], rtol=1e-12
            )


def test_predicting_some_actions_gives_their_values_exactly_and_nan_for_the_rest(
    fitted: dict[str, UpliftModel], test: Logged
) -> None:
    """``predict(actions=...)`` (the live scorer's screened path) changes no value it
    computes, for one customer's dict and for a frame, and leaves the others NaN."""
    for model in fitted.values():
        wanted = set(model.actions_[::2])
        kept = [j for j, a in enumerate(model.actions_) if a in wanted]
        dropped = [j for j, a in enumerate(model.actions_) if a not in wanted]
        assert kept and dropped
        rows = [
            {k: (None if pd.isna(v) else v) for k, v in r.items()}
            for r in test.X.iloc[:20].to_dict("records")
        ]
        for data in [*rows, test.X.iloc[:20]]:
            full, some = model.predict(data), model.predict(data, actions=wanted)
            for name in ("incremental_conversion", "incremental_revenue"):
                np.testing.assert_array_equal(
                    getattr(some, name)[:, kept], getattr(full, name)[:, kept]
                )
                assert np.isnan(getattr(some, name)[:, dropped]).all()
            np.testing.assert_array_equal(some.baseline_conversion, full.baseline_conversion)
            np.testing.assert_array_equal(some.baseline_revenue, full.baseline_revenue)


def test_no_action_wanted_runs_no_booster_and_changes_no_number(
    fitted: dict[str, UpliftModel], test: Logged
) -> None:
    """A customer the rules allow none of the model's actions (``actions`` without any of
    them): every uplift NaN, no booster run until a baseline is read, and then the same
    baselines as the full prediction's, bit for bit."""
    for model in fitted.values():
        for row in test.X.iloc[:10].to_dict("records"):
            row = {k: (None if pd.isna(v) else v) for k, v in row.items()}
            full, none = model.predict(row), model.predict(row, actions={"no_action"})
            assert np.isnan(none.incremental_conversion).all()
            assert np.isnan(none.incremental_revenue).all()
            assert callable(none._baseline_conversion) and callable(none._baseline_revenue)
            assert none.baseline_conversion.tobytes() == full.baseline_conversion.tobytes()
            assert none.baseline_revenue.tobytes() == full.baseline_revenue.tobytes()
            assert len(none) == 1


def test_the_fold_mean_is_numpys_mean_bit_for_bit() -> None:
    """An arm's predictions averaged over its folds as ``np.mean(..., axis=0)`` does (one
    fold, two, several; one row, a micro-batch, a frame), bit for bit."""
    rng = np.random.default_rng(4)
    for _ in range(100):
        for folds in (1, 2, 3, 5):
            for rows in (1, 8, 200):
                scale = 10.0 ** rng.integers(-6, 6)
                found = [rng.normal(size=rows) * scale for _ in range(folds)]
                assert _fold_mean(found).tobytes() == np.mean(found, axis=0).tobytes()


#: floats that trip arithmetic: signed zeros, NaN, infinities, extremes, subnormals
_EDGE = [0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 1e308, -1e308, 5e-324, -5e-324, 0.5]


def _hard_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` floats: normals of every scale, with edge values mixed in."""
    values = rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, size=n)
    edge = rng.random(n) < 0.3
    values[edge] = rng.choice(_EDGE, size=int(edge.sum()))
    return values


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_one_row_fold_mean_is_the_arrays_bit_for_bit() -> None:
    """:func:`_fold_mean_value` (plain floats) gives :func:`_fold_mean`'s number over
    one-row predictions of 1 to 7 folds (signed zeros: numpy's sum of -0.0s is 0.0)."""
    rng = np.random.default_rng(5)
    for folds in range(1, _SEQUENTIAL_FOLDS + 1):  # (sums of inf and -inf: NaN, silently)
        values = _hard_floats(rng, 20_000 * folds).reshape(-1, folds)
        for row in values:
            expected = _fold_mean([row[k : k + 1] for k in range(folds)])
            assert np.float64(_fold_mean_value(row.tolist())).tobytes() == expected.tobytes()


def test_the_one_row_clip_is_numpys_bit_for_bit() -> None:
    """:func:`_clip_value` gives ``np.clip``'s number as the matrix path calls it on one
    row: scalar bounds on a one-element array, a row's bounds on a ``[1, k]`` array."""
    rng = np.random.default_rng(6)
    values = _hard_floats(rng, 100_000)
    bounds = np.clip(_hard_floats(rng, 100_000), 0.0, 1.0)
    bounds[rng.random(len(bounds)) < 0.01] = np.nan
    for value, base in zip(values.tolist(), bounds.tolist(), strict=True):
        expected = np.clip(np.array([value]), 0.0, 1.0)
        assert np.float64(_clip_value(value, 0.0, 1.0)).tobytes() == expected.tobytes()
        low, high = -np.array([base])[:, None], 1.0 - np.array([base])[:, None]
        expected = np.clip(np.array([[value, np.nan]]), low, high)
        got = [_clip_value(value, -base, 1.0 - base), _clip_value(np.nan, -base, 1.0 - base)]
        assert np.array([got]).tobytes() == expected.tobytes()


def _hard_customers(X: pd.DataFrame, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """``n`` customers' dicts drawn from ``X``'s rows with missing values (None, NaN),
    unseen and odd categories, zeros of both signs, negatives and huge values."""
    rows = X.sample(n, replace=True, random_state=int(rng.integers(1 << 31))).to_dict("records")
    odd: list[Any] = [None, np.nan, 0.0, -0.0, -3.5, 1e300, -1e300, np.inf, 5e-324]
    for row in rows:
        for key in row:
            if rng.random() < 0.15:
                if key == "region":
                    row[key] = rng.choice(["west", "", "North", None, 3, "south"])  # type: ignore[arg-type]
                else:
                    row[key] = odd[int(rng.integers(len(odd)))]
    return rows


def _same(a: UpliftPrediction, b: UpliftPrediction) -> bool:
    return a.actions == b.actions and all(
        getattr(a, name).tobytes() == getattr(b, name).tobytes()
        and getattr(a, name).shape == getattr(b, name).shape
        for name in (
            "incremental_conversion",
            "incremental_revenue",
            "baseline_conversion",
            "baseline_revenue",
        )
    )


@pytest.fixture(scope="module")
def with_constants() -> dict[str, UpliftModel]:
    """Models with constant outcome models: an action logged too rarely to learn from."""
    log = make_log(3_000, seed=3)
    action = log.action.copy()
    action[:60] = "rare"
    args = (log.X, action, log.propensity, log.outcome, log.revenue)
    return {m: UpliftModel(method=m).fit(*args) for m in ("dr", "t")}  # type: ignore[arg-type]


def test_one_customer_path_equals_the_matrix_path_bit_for_bit(
    fitted: dict[str, UpliftModel],
    with_constants: dict[str, UpliftModel],
    test: Logged,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One customer's prediction (:class:`_OneRow`: the live path) has the bytes of the
    matrix path (the definition) for 3,000 hard customers per model, each with a random
    set of wanted actions (none, some, all, unknown ones, or every action)."""
    rng = np.random.default_rng(7)
    models = [*fitted.values(), *with_constants.values()]
    assert any(isinstance(m, float) for m in with_constants["t"].arms_["rare"].convert)
    customers = _hard_customers(test.X, rng, 3_000)
    for model in models:
        assert _OneRow.of(model) is not None
        for row in customers:
            pick = rng.random()
            actions = (
                None
                if pick < 0.2
                else {a for a in [*model.actions_, "unknown"] if rng.random() < 0.5}
            )
            got = model.predict(row, actions)
            expected = model._predict_matrix(model.encoder_.transform(row), actions)
            assert _same(got, expected), (model.method, row, actions)
    # the path taken: never the matrix for one customer; and the batch agrees
    frame = pd.DataFrame(customers[:300])
    for model in models:
        batch = model.predict(frame)
        with monkeypatch.context() as patch:
            patch.setattr(UpliftModel, "_predict_matrix", None)
            for i, row in enumerate(customers[:300]):
                assert _same(model.predict(row), batch.row(i))


def test_one_customer_path_steps_aside_when_busy_and_follows_a_refit(test: Logged) -> None:
    """A thread finding the boosters busy gets the matrix path's numbers; a refitted model
    predicts with its new boosters."""
    log = make_log(3_000, seed=8)
    model = UpliftModel().fit(log.X, log.action, log.propensity, log.outcome, log.revenue)
    row = test.X.iloc[0].to_dict()
    one = _OneRow.of(model)
    assert one is not None
    with one.boosters._lock:
        busy = model.predict(row)
    assert _same(busy, model.predict(row))
    pending = model.predict(row)  # its baseline revenue computed when read, here busy
    with one.boosters._lock:
        assert _same(pending, busy)
    copied = pickle.loads(pickle.dumps(model.predict(row)))
    assert _same(copied, busy)
    other = make_log(3_000, seed=9)
    model.fit(other.X, other.action, other.propensity, other.outcome, other.revenue)
    expected = model._predict_matrix(model.encoder_.transform(row))
    assert _OneRow.of(model) is not one
    assert _same(model.predict(row), expected)
