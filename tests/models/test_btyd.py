"""BG/NBD + Gamma-Gamma against the reference ``lifetimes`` package and simulated truth."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from scipy.integrate import quad
from scipy.optimize import approx_fprime
from scipy.special import betaincinv
from sklearn.exceptions import NotFittedError

from models.btyd import (
    RFM_COLUMNS,
    BetaGeoFitter,
    BTYDValueBaseline,
    GammaGammaFitter,
    ModifiedBetaGeoFitter,
    _BGNBDData,
    _GammaGammaData,
    _MBGNBDData,
    clip,
    maximum,
    minimum,
    rfm_from_orders,
)

with warnings.catch_warnings():  # lifetimes sets a pandas option deprecated in pandas 3
    warnings.simplefilter("ignore")
    import lifetimes
    from lifetimes.utils import summary_data_from_transaction_data

TRUTH = {"r": 0.6, "alpha": 20.0, "a": 0.8, "b": 3.0}
SPEND_TRUTH = {"p": 3.0, "q": 4.0, "v": 60.0}
HORIZON = 90.0


@dataclass(frozen=True)
class Simulated:
    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    monetary_value: np.ndarray
    holdout_purchases: np.ndarray
    holdout_spend: np.ndarray


def simulate(seed: int, n: int, q: float = SPEND_TRUTH["q"]) -> Simulated:
    """Purchases drawn from the BG/NBD story itself, spends from the Gamma-Gamma one.

    Each customer's first purchase is at age 0; repeat purchases arrive as a Poisson
    process and after each one the customer drops out with probability p. Purchases up to
    age T form the history, those in the following HORIZON days the holdout.
    """
    rng = np.random.default_rng(seed)
    rate = rng.gamma(TRUTH["r"], 1 / TRUTH["alpha"], n)
    dropout = rng.beta(TRUTH["a"], TRUTH["b"], n)
    spend_rate = rng.gamma(q, 1 / SPEND_TRUTH["v"], n)
    T = rng.uniform(30, 365, n)
    t, x, rec, spend = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    holdout_n, holdout_spend = np.zeros(n), np.zeros(n)
    active = np.arange(n)
    while active.size:
        t[active] += rng.exponential(1 / rate[active])
        active = active[t[active] <= T[active] + HORIZON]
        amount = rng.gamma(SPEND_TRUTH["p"], 1 / spend_rate[active])
        before = t[active] <= T[active]
        cal, hold = active[before], active[~before]
        x[cal] += 1
        rec[cal] = t[cal]
        spend[cal] += amount[before]
        holdout_n[hold] += 1
        holdout_spend[hold] += amount[~before]
        active = active[rng.random(active.size) >= dropout[active]]
    m = np.divide(spend, x, out=np.zeros(n), where=x > 0)
    return Simulated(x, rec, T, m, holdout_n, holdout_spend)


@pytest.fixture(scope="module")
def data() -> Simulated:
    return simulate(seed=7, n=5000)


@pytest.fixture(scope="module")
def repeaters(data: Simulated) -> tuple[np.ndarray, np.ndarray]:
    covered = data.frequency > 0
    return data.frequency[covered], data.monetary_value[covered]


def _lifetimes_bgnbd(data: Simulated, penalizer: float = 0.0) -> lifetimes.BetaGeoFitter:
    return lifetimes.BetaGeoFitter(penalizer_coef=penalizer).fit(
        data.frequency, data.recency, data.T
    )


def _max_rel(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(ours / reference - 1.0)))


# --- BG/NBD ---------------------------------------------------------------------------


@pytest.mark.parametrize("penalizer", [0.0, 0.01])
def test_bgnbd_fit_matches_lifetimes(data: Simulated, penalizer: float) -> None:
    ours = BetaGeoFitter(penalizer).fit(data.frequency, data.recency, data.T)
    ref = _lifetimes_bgnbd(data, penalizer)
    for name in ("r", "alpha", "a", "b"):
        assert ours.params_[name] == pytest.approx(ref.params_[name], rel=1e-4), name
    if penalizer == 0.0:
        # lifetimes reports the mean NLL with time scaled by 1 / max(T): shift back to days
        ref_mean_ll = -ref._negative_log_likelihood_ + data.frequency.mean() * np.log(
            1 / data.T.max()
        )
        assert ours.log_likelihood_ / len(data.T) == pytest.approx(ref_mean_ll, abs=1e-6)


def test_bgnbd_log_likelihood_is_lifetimes_formula_in_days(data: Simulated) -> None:
    ours = BetaGeoFitter().fit(data.frequency, data.recency, data.T)
    log_params = np.log([ours.params_[k] for k in ("r", "alpha", "a", "b")])
    weights = np.ones_like(data.T)
    nll = lifetimes.BetaGeoFitter._negative_log_likelihood(
        log_params, data.frequency, data.recency, data.T, weights, 0.0
    )
    assert ours.log_likelihood_ == pytest.approx(-nll * len(data.T), rel=1e-12)


def test_analytic_gradients_match_finite_differences(data: Simulated) -> None:
    bgnbd = _BGNBDData.build(data.frequency, data.recency / 365, data.T / 365)
    params = np.array([0.7, 0.05, 0.9, 2.5])
    numeric = approx_fprime(params, lambda p: bgnbd.log_likelihood(p)[0], 1e-7)
    np.testing.assert_allclose(bgnbd.log_likelihood(params)[1], numeric, rtol=1e-4)

    covered = data.frequency > 0
    spend = _GammaGammaData.build(data.frequency[covered], data.monetary_value[covered])
    params = np.array([2.5, 3.5, 50.0])
    numeric = approx_fprime(params, lambda p: spend.log_likelihood(p)[0], 1e-6)
    np.testing.assert_allclose(spend.log_likelihood(params)[1], numeric, rtol=1e-4)


def _prediction_inputs(data: Simulated) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The simulated histories plus extremes: very old, brand new and very frequent buyers."""
    x = np.concatenate([data.frequency, [0, 0, 3, 200, 200, 50, 1000]])
    rec = np.concatenate([data.recency, [0, 0, 10, 3000, 100, 1e5 - 1, 1000]])
    T = np.concatenate([data.T, [0, 1e5, 1e5, 3000, 3000, 1e5, 1000]])
    return x, rec, T


@pytest.mark.parametrize("t", [1.0, 30.0, HORIZON, 365.0, 3650.0])
def test_bgnbd_predictions_match_lifetimes(data: Simulated, t: float) -> None:
    ours = BetaGeoFitter().fit(data.frequency, data.recency, data.T)
    ref = _lifetimes_bgnbd(data)
    x, rec, T = _prediction_inputs(data)
    expected = ours.conditional_expected_number_of_purchases_up_to_time(t, x, rec, T)
    alive = ours.conditional_probability_alive(x, rec, T)
    # each fitted on its own: agreement up to the optimisers' tolerance
    ref_expected = ref.conditional_expected_number_of_purchases_up_to_time(t, x, rec, T)
    assert _max_rel(expected, ref_expected) < 1e-3
    assert _max_rel(alive, ref.conditional_probability_alive(x, rec, T)) < 1e-3
    # the same parameters: the formulas themselves agree to rounding
    ref.params_ = pd.Series(ours.params_)
    ref_expected = ref.conditional_expected_number_of_purchases_up_to_time(t, x, rec, T)
    np.testing.assert_allclose(expected, ref_expected, rtol=1e-9)
    np.testing.assert_allclose(alive, ref.conditional_probability_alive(x, rec, T), rtol=1e-12)


@pytest.mark.parametrize(
    ("t", "x", "recency", "T"),
    [
        (3650.0, 1000, 1000.0, 1000.0),  # 2F1 overflows: Euler's transformation takes over
        (3650.0, 1000, 990.0, 1000.0),
        (HORIZON, 0, 0.0, 0.0),
        (HORIZON, 0, 0.0, 500.0),
        (HORIZON, 5, 100.0, 200.0),
        (365.0, 200, 3000.0, 3000.0),
        (1.0, 3, 10.0, 1e5),
    ],
)
def test_expected_purchases_equal_the_posterior_integral(
    t: float, x: int, recency: float, T: float
) -> None:
    """Equation 10 against its definition: P(alive) E[(1 - (1 + p s)^-(r+x)) / p] over the
    posterior p ~ Beta(a, b + x), with s = t / (alpha + T), integrated numerically."""
    model = BetaGeoFitter()
    model.params_ = dict(TRUTH)
    r, alpha, a, b = TRUTH.values()
    s = t / (alpha + T)

    def integrand(u: float) -> float:
        p = betaincinv(a, b + x, u)
        return float(-np.expm1(-(r + x) * np.log1p(p * s)) / p)

    integral, _ = quad(integrand, 0, 1, epsabs=0, epsrel=1e-10, limit=500)
    expected = integral * model.conditional_probability_alive([x], [recency], [T])[0]
    ours = model.conditional_expected_number_of_purchases_up_to_time(t, [x], [recency], [T])
    assert ours[0] == pytest.approx(expected, rel=1e-9)


def test_bgnbd_recovers_simulated_truth_within_sampling_error(data: Simulated) -> None:
    ours = BetaGeoFitter().fit(data.frequency, data.recency, data.T)
    standard_errors = _lifetimes_bgnbd(data).standard_errors_
    for name, truth in TRUTH.items():
        assert abs(ours.params_[name] - truth) < 3 * standard_errors[name], name


def test_edge_cases_stay_finite_and_sensible(data: Simulated) -> None:
    model = BetaGeoFitter().fit(data.frequency, data.recency, data.T)
    x, rec, T = _prediction_inputs(data)
    for t in (0.0, 1.0, 3650.0):
        expected = model.conditional_expected_number_of_purchases_up_to_time(t, x, rec, T)
        assert np.isfinite(expected).all() and (expected >= 0).all()
    assert (model.conditional_expected_number_of_purchases_up_to_time(0.0, x, rec, T) == 0).all()
    alive = model.conditional_probability_alive(x, rec, T)
    assert ((alive >= 0) & (alive <= 1)).all()
    assert (alive[x == 0] == 1).all()


def test_expectations_move_the_right_way(data: Simulated) -> None:
    model = BetaGeoFitter().fit(data.frequency, data.recency, data.T)
    horizons = np.array([10.0, 30.0, 90.0, 365.0])
    ones = np.ones_like(horizons)
    more_time = model.conditional_expected_number_of_purchases_up_to_time(
        horizons, 4 * ones, 100 * ones, 200 * ones
    )
    assert (np.diff(more_time) > 0).all()
    ages = np.array([10.0, 100.0, 1000.0])
    silent_longer = model.conditional_expected_number_of_purchases_up_to_time(
        HORIZON, np.zeros(3), np.zeros(3), ages
    )
    assert (np.diff(silent_longer) < 0).all()
    last_bought_earlier = model.conditional_probability_alive(
        [5, 5, 5], [190.0, 100.0, 20.0], [200.0, 200.0, 200.0]
    )
    assert (np.diff(last_bought_earlier) < 0).all()


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "message"),
    [
        ([1, 2, 1], [5, 10, 30], [10, 20, 20], r"recency\[2\] = 30.0 is larger than T"),
        ([1, 2.5], [5, 10], [10, 20], r"frequency\[1\] = 2.5 is not a whole number"),
        ([0, 1], [3, 5], [10, 20], r"recency\[0\] = 3.0 is not 0 although frequency is 0"),
        ([1, 1], [5, np.nan], [10, 20], r"recency\[1\] = nan is not finite"),
        ([1, 1], [5, 5], [10], "inputs differ in length"),
    ],
)
def test_bad_histories_name_the_field_and_row(
    frequency: list[float], recency: list[float], T: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BetaGeoFitter().fit(frequency, recency, T)


def test_unfitted_and_unfittable_models_say_so(data: Simulated) -> None:
    with pytest.raises(NotFittedError):
        BetaGeoFitter().conditional_probability_alive([1], [1], [2])
    with pytest.raises(ValueError, match="repeat purchases"):
        BetaGeoFitter().fit([0, 0], [0, 0], [5, 9])
    model = BetaGeoFitter().fit(data.frequency, data.recency, data.T)
    with pytest.raises(ValueError, match=r"t\[0\] = -1.0"):
        model.conditional_expected_number_of_purchases_up_to_time(-1.0, [1], [1], [2])


# --- MBG/NBD --------------------------------------------------------------------------


def test_mbgnbd_fit_and_p_alive_match_lifetimes(data: Simulated) -> None:
    ours = ModifiedBetaGeoFitter().fit(data.frequency, data.recency, data.T)
    ref = lifetimes.ModifiedBetaGeoFitter().fit(data.frequency, data.recency, data.T)
    for name in ("r", "alpha", "a", "b"):
        assert ours.params_[name] == pytest.approx(ref.params_[name], rel=1e-4), name
    ref_mean_ll = -ref._negative_log_likelihood_ + data.frequency.mean() * np.log(1 / data.T.max())
    assert ours.log_likelihood_ / len(data.T) == pytest.approx(ref_mean_ll, abs=1e-6)
    x, rec, T = _prediction_inputs(data)
    alive = ours.conditional_probability_alive(x, rec, T)
    assert _max_rel(alive, ref.conditional_probability_alive(x, rec, T)) < 1e-3
    ref.params_ = pd.Series(ours.params_)
    np.testing.assert_allclose(alive, ref.conditional_probability_alive(x, rec, T), rtol=1e-12)
    # unlike BG/NBD, a one-time buyer long gone is not alive for sure
    one_timers = alive[:-7][data.frequency == 0]
    assert one_timers.max() < 1.0 and one_timers.min() < 0.5


def test_mbgnbd_gradient_matches_finite_differences(data: Simulated) -> None:
    mbg = _MBGNBDData.build(data.frequency, data.recency / 365, data.T / 365)
    params = np.array([0.7, 0.05, 0.9, 2.5])
    numeric = approx_fprime(params, lambda p: mbg.log_likelihood(p)[0], 1e-7)
    np.testing.assert_allclose(mbg.log_likelihood(params)[1], numeric, rtol=1e-4)


def test_unfitted_mbgnbd_says_so() -> None:
    with pytest.raises(NotFittedError, match="fit"):
        ModifiedBetaGeoFitter().conditional_probability_alive([1], [1], [2])
    with pytest.raises(ValueError, match="repeat purchases"):
        ModifiedBetaGeoFitter().fit([0, 0], [0, 0], [5, 9])


# --- Gamma-Gamma ----------------------------------------------------------------------


def test_gamma_gamma_matches_lifetimes(
    data: Simulated, repeaters: tuple[np.ndarray, np.ndarray]
) -> None:
    x, m = repeaters
    # fitted on everyone: customers without repeat purchases are ignored by the fit
    ours = GammaGammaFitter().fit(data.frequency, data.monetary_value)
    ref = lifetimes.GammaGammaFitter().fit(x, m)
    for name in ("p", "q", "v"):
        assert ours.params_[name] == pytest.approx(ref.params_[name], rel=1e-4), name
    assert ours.log_likelihood_ / len(x) == pytest.approx(-ref._negative_log_likelihood_, abs=1e-8)
    ours_profit = ours.conditional_expected_average_profit(data.frequency, data.monetary_value)
    ref_profit = ref.conditional_expected_average_profit(data.frequency, data.monetary_value)
    assert _max_rel(ours_profit, ref_profit) < 1e-3
    ref.params_ = pd.Series(ours.params_)
    ref_profit = ref.conditional_expected_average_profit(data.frequency, data.monetary_value)
    np.testing.assert_allclose(ours_profit, ref_profit, rtol=1e-12)


def test_gamma_gamma_recovers_simulated_truth(repeaters: tuple[np.ndarray, np.ndarray]) -> None:
    x, m = repeaters
    ours = GammaGammaFitter().fit(x, m)
    standard_errors = lifetimes.GammaGammaFitter().fit(x, m).standard_errors_
    for name, truth in SPEND_TRUTH.items():
        assert abs(ours.params_[name] - truth) < 3 * standard_errors[name], name
    profit = ours.conditional_expected_average_profit([0, 1, 50], [0, 500.0, 500.0])
    assert profit[0] == pytest.approx(ours.population_mean_)
    assert profit[0] < profit[1] < profit[2] < 500.0  # more purchases, less shrinkage


def test_q_constraint_keeps_the_population_mean() -> None:
    heavy = simulate(seed=3, n=5000, q=0.6)
    covered = heavy.frequency > 0
    x, m = heavy.frequency[covered], heavy.monetary_value[covered]
    free = GammaGammaFitter(q_constraint=False).fit(x, m)
    assert free.params_["q"] < 1
    with pytest.raises(ValueError, match="population mean spend does not exist"):
        _ = free.population_mean_
    constrained = GammaGammaFitter().fit(x, m)
    assert constrained.params_["q"] >= 1.01 - 1e-9
    assert np.isfinite(constrained.population_mean_) and constrained.population_mean_ > 0


def test_gamma_gamma_needs_repeat_spend() -> None:
    with pytest.raises(ValueError, match="frequency > 0 and monetary_value > 0"):
        GammaGammaFitter().fit([0, 2], [0.0, -5.0])
    with pytest.raises(ValueError, match=r"monetary_value\[1\] = inf is not finite"):
        GammaGammaFitter().fit([1, 2], [3.0, np.inf])


# --- the baseline value model -------------------------------------------------------


def test_baseline_predicts_the_simulated_holdout() -> None:
    sim = simulate(seed=11, n=20_000)
    model = BTYDValueBaseline().fit(sim.frequency, sim.recency, sim.T, sim.monetary_value)
    args = (sim.frequency, sim.recency, sim.T)
    purchases = model.predict_expected_transactions(HORIZON, *args)
    spend = model.predict_expected_spend(HORIZON, *args, sim.monetary_value)
    assert purchases.sum() == pytest.approx(sim.holdout_purchases.sum(), rel=0.03)
    assert spend.sum() == pytest.approx(sim.holdout_spend.sum(), rel=0.08)
    # the top predicted decile really buys more than the rest
    top = spend >= np.quantile(spend, 0.9)
    assert sim.holdout_spend[top].mean() > 3 * sim.holdout_spend[~top].mean()


def test_baseline_spend_is_purchases_times_spend_per_purchase(data: Simulated) -> None:
    model = BTYDValueBaseline().fit(data.frequency, data.recency, data.T, data.monetary_value)
    x, rec, T = np.array([0, 3, 3]), np.array([0, 50, 50]), np.array([100, 100, 100])
    m = np.array([0.0, 80.0, -20.0])  # the last one returned more than it bought
    spend = model.predict_expected_spend(HORIZON, x, rec, T, m)
    purchases = model.predict_expected_transactions(HORIZON, x, rec, T)
    per_purchase = np.array(
        [
            model.spend_.population_mean_,
            model.spend_.conditional_expected_average_profit([3], [80.0])[0],
            model.spend_.population_mean_,
        ]
    )
    np.testing.assert_allclose(spend, purchases * per_purchase, rtol=1e-12)
    np.testing.assert_allclose(model.predict_p_alive(x, rec, T)[0], 1.0)


# --- the one-customer path -------------------------------------------------------------
#: floats where numpy's and plain Python's rules could part: signed zeros, NaN, infinities
SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 0.5, 1e-300, 1e300, 5e-324]


def _bits(values: npt.ArrayLike) -> np.ndarray:
    """Float64 bit patterns, so 0.0 / -0.0 and NaN payloads count as different."""
    return np.asarray(values, dtype=np.float64).view(np.int64)


@pytest.mark.parametrize("rows", [1, 3, 100])
def test_float_maximum_and_clip_are_numpys_bit_for_bit(rows: int) -> None:
    """Every ordered pair / triple of special floats, through one-element and SIMD-sized
    arrays alike, in the calls the value model's prior makes (a scalar second operand of
    ``np.maximum``; ``np.clip`` with a scalar lower and an array upper bound)."""
    pairs = [(a, b) for a in SPECIAL for b in SPECIAL]
    for a, b in pairs:
        for second in (b, np.full(rows, b)):
            expected = np.maximum(np.full(rows, a), second)
            assert _bits(maximum(a, b)) == _bits(expected[0]), (a, b)
            expected = np.minimum(np.full(rows, a), second)
            assert _bits(minimum(a, b)) == _bits(expected[0]), (a, b)
    for x, low, high in [(x, lo, hi) for x in SPECIAL for lo, hi in pairs]:
        with np.errstate(invalid="ignore"):
            expected = np.clip(np.full(rows, x), low, np.full(rows, high))
        assert _bits(clip(x, low, high)) == _bits(expected[0]), (x, low, high)


def _histories_with_edges(n: int, seed: int) -> np.ndarray:
    """``[n, 4]`` frequency, recency, T, monetary value: plausible histories, a quarter of
    the cells replaced by edge values (no repeat, recency 0, huge T, NaN, negatives...)."""
    rng = np.random.default_rng(seed)
    x = rng.choice([0.0, 0.0, 1.0, 2.0, 3.0, 7.0, 40.0, 1e6], n)
    T = rng.uniform(0.0, 3000.0, n)
    rec = np.where(x > 0, T * rng.uniform(0.0, 1.0, n), 0.0)
    m = rng.lognormal(3.5, 1.0, n) * (rng.random(n) < 0.9)
    rows = np.column_stack([x, rec, T, m])
    edges = np.array([0.0, -0.0, 1e-9, 1.0, 1e6, 1e9, 1e300, np.nan, -3.0, np.inf])
    hit = rng.random(rows.shape) < 0.25
    rows[hit] = rng.choice(edges, int(hit.sum()))
    return rows


def test_one_customer_spend_is_the_vectorised_spend_bit_for_bit(data: Simulated) -> None:
    model = BTYDValueBaseline().fit(data.frequency, data.recency, data.T, data.monetary_value)
    one = model.one_customer
    assert one is not None
    rows = _histories_with_edges(5000, 3)
    with np.errstate(all="ignore"):  # the edge rows warn in the vectorised method only
        for horizon in (HORIZON, 0.0, 1e6):
            expected = model.expected_spend_unchecked(horizon, *rows.T)
            got = [one(horizon, *row) for row in rows.tolist()]
            np.testing.assert_array_equal(_bits(got), _bits(expected))
            assert np.isfinite(expected).mean() > 0.5  # the edges did not take over


def test_one_customer_spend_is_not_pickled_and_follows_a_refit(data: Simulated) -> None:
    model = BTYDValueBaseline().fit(data.frequency, data.recency, data.T, data.monetary_value)
    first = model.one_customer
    assert "one_customer" not in pickle.loads(pickle.dumps(model)).__dict__
    assert pickle.loads(pickle.dumps(model)).one_customer == first
    model.fit(data.frequency[:2000], data.recency[:2000], data.T[:2000], data.monetary_value[:2000])
    assert model.one_customer != first
    model.transactions_.params_["a"] = 1.0  # c / (a - 1): numpy's inf, no floats' error
    del model.__dict__["one_customer"]
    assert model.one_customer is None


# --- RFM summary from orders ----------------------------------------------------------


def _orders(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["customer_id", "ordered_at", "amount"])
    frame["ordered_at"] = pd.to_datetime(frame["ordered_at"], utc=True)
    return frame


def test_rfm_from_orders_by_hand() -> None:
    orders = _orders(
        [
            ("a", "2024-01-01 10:00", 10.0),
            ("a", "2024-01-01 12:00", 5.0),  # same day: one purchase of 15
            ("a", "2024-01-05 08:00", 7.0),
            ("a", "2024-01-07 09:00", 9.0),
            ("a", "2024-01-10 00:00", 99.0),  # at the cutoff: not before it
            ("b", "2024-01-03 00:00", 3.0),
        ]
    )
    signup = pd.Series(pd.to_datetime(["2023-12-20", "2024-01-02"], utc=True), index=["c", "d"])
    rfm = rfm_from_orders(
        orders, pd.Timestamp("2024-01-10", tz="UTC"), customer_ids=["a", "b", "c", "d", "e"]
    )
    assert list(rfm.columns) == list(RFM_COLUMNS)
    assert rfm.loc["a"].tolist() == [2.0, 6.0, 9.0, 8.0]
    assert rfm.loc["b"].tolist() == [0.0, 0.0, 7.0, 0.0]
    assert (rfm.loc[["c", "d", "e"]] == 0).all().all()
    with_signup = rfm_from_orders(orders, "2024-01-10T00:00Z", ["a", "b", "c", "d", "e"], signup)
    assert with_signup["T"].tolist() == [9.0, 7.0, 21.0, 8.0, 0.0]


def test_rfm_from_orders_matches_lifetimes_summary() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    start = pd.Timestamp("2023-01-01", tz="UTC")
    orders = pd.DataFrame(
        {
            "customer_id": rng.choice([f"c{i}" for i in range(400)], n),
            "ordered_at": start + pd.to_timedelta(rng.uniform(0, 400, n), unit="D"),
            "amount": rng.gamma(2.0, 30.0, n),
        }
    )
    as_of = pd.Timestamp("2024-01-15", tz="UTC")
    ours = rfm_from_orders(orders, as_of)
    before = orders[orders["ordered_at"] < as_of].assign(
        ordered_at=lambda o: o["ordered_at"].dt.tz_localize(None)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = summary_data_from_transaction_data(
            before,
            "customer_id",
            "ordered_at",
            "amount",
            observation_period_end=as_of.tz_localize(None),
            freq="D",
        )
    pd.testing.assert_frame_equal(
        ours, ref[list(RFM_COLUMNS)].astype(np.float64), check_names=False, check_index_type=False
    )


def test_rfm_from_orders_rejects_incomplete_orders() -> None:
    orders = _orders([("a", "2024-01-01", 1.0)])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['amount'\]"):
        rfm_from_orders(orders.drop(columns="amount"), "2024-02-01T00:00Z")
    orders.loc[0, "amount"] = np.nan
    with pytest.raises(ValueError, match="orders row 0: amount is missing"):
        rfm_from_orders(orders, "2024-02-01T00:00Z")
