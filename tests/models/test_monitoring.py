"""Monitoring statistics against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from models import monitoring as stats


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 20_000)
    same = rng.normal(0, 1, 20_000)
    assert stats.psi_numeric(ref, same) < 0.01
    small, large = stats.psi_numeric(ref, ref + 0.2), stats.psi_numeric(ref, ref + 1.0)
    assert 0.02 < small < 0.1 < 0.3 < large


def test_psi_counts_missing_values_as_their_own_bin() -> None:
    ref = np.arange(1000, dtype="float64")
    cur = ref.copy()
    cur[:500] = np.nan
    assert stats.psi_numeric(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert stats.psi_numeric(ref, cur) > 1.0


def test_categorical_drift_psi_js_and_chi_square() -> None:
    ref = pd.Series(["a"] * 500 + ["b"] * 500)
    assert stats.psi_categorical(ref, ref) == pytest.approx(0.0)
    assert stats.js_distance(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert stats.chi2_test(ref, ref) > 0.99
    moved = pd.Series(["a"] * 900 + ["c"] * 100)
    assert stats.psi_categorical(ref, moved) > 0.3
    assert 0.3 < stats.js_distance(ref, moved) <= 1.0
    assert stats.chi2_test(ref, moved) < 1e-6
    # disjoint supports: the largest JS distance
    assert stats.js_distance(pd.Series(["a"] * 10), pd.Series(["b"] * 10)) == pytest.approx(1.0)


def test_ks_statistic_is_the_largest_cdf_gap() -> None:
    d, p = stats.ks_test(np.zeros(100), np.ones(100))
    assert d == pytest.approx(1.0) and p < 1e-10
    d, _ = stats.ks_test([np.nan, np.nan], [1.0])
    assert np.isnan(d)


def test_cbpe_estimates_the_auc_labels_will_give_when_calibrated() -> None:
    rng = np.random.default_rng(1)
    p = rng.beta(1.2, 3.0, 5000)
    est, low, high = stats.cbpe_auc(p, replicates=200, seed=2)
    realised = [roc_auc_score(rng.random(len(p)) < p, p) for _ in range(40)]
    assert low < est < high
    inside = np.mean([(low <= a <= high) for a in realised])
    assert inside >= 0.8  # a 90% interval
    # a model whose probabilities say nothing has an expected AUC of 0.5
    flat, _, _ = stats.cbpe_auc(np.full(2000, 0.3), replicates=50)
    assert flat == pytest.approx(0.5, abs=0.02)


def test_calibration_error_and_rate_interval() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 20_000)
    y = rng.random(len(p)) < p
    assert stats.expected_calibration_error(y, p) < 0.02
    assert stats.expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.15
    mean, low, high = stats.rate_interval(p)
    assert low < y.mean() < high and mean == pytest.approx(p.mean())


def test_pit_histogram_and_emptied() -> None:
    y = np.array([0.0, 5.0, 15.0, 30.0])
    pit = stats.pit_histogram(y, [1, 1, 1, 1], [10, 10, 10, 10], [20, 20, 20, 20])
    assert pit["share"].tolist() == [0.25, 0.25, 0.25, 0.25]
    assert pit["expected"].sum() == pytest.approx(1.0)
    ref = np.array([0, 0, 1, 2, 3, 0.0])
    assert stats.emptied(ref, ref) == pytest.approx(0.0)
    assert stats.emptied(ref, np.zeros(6)) == pytest.approx(1.0)
    assert stats.emptied(np.zeros(3), np.ones(3)) == 0.0


def test_noise_intervals_match_the_spread_of_simulated_samples() -> None:
    """The variances the monitor judges group gaps with, against the spread of many
    simulated groups of the same size: calibrated churn rates, binomial coverage, AUC."""
    rng = np.random.default_rng(0)
    n, draws = 300, 2000
    p = rng.beta(2, 8, n)
    gaps = np.array([(rng.random(n) < p).mean() - p.mean() for _ in range(draws)])
    assert np.sqrt(stats.rate_variance(p)) == pytest.approx(gaps.std(), rel=0.1)
    shares = rng.binomial(n, 0.8, draws) / n
    assert np.sqrt(stats.share_variance(0.8, n)) == pytest.approx(shares.std(), rel=0.1)
    aucs, positives = [], []
    for _ in range(500):
        y = rng.random(n) < 0.2
        score = rng.normal(y * 1.0, 1.0)
        aucs.append(roc_auc_score(y, score))
        positives.append(y.sum())
    auc, pos = float(np.mean(aucs)), float(np.mean(positives))
    assert np.sqrt(stats.auc_variance(auc, pos, n - pos)) == pytest.approx(np.std(aucs), rel=0.15)
    assert np.isnan(stats.auc_variance(0.7, 0, 100)) and np.isnan(stats.share_variance(0.8, 0))
    assert 0 < stats.spearman_variance(0.5, 300) < stats.spearman_variance(0.5, 100)


def test_a_gap_counts_only_beyond_its_interval() -> None:
    # a gap inside 1.96 standard errors is nothing; beyond it, only the excess counts
    assert stats.beyond_noise(0.05, 0.03**2) == (0.0, pytest.approx(1.96 * 0.03))
    excess, half = stats.beyond_noise(-0.2, 0.03**2, 0.04**2)
    assert half == pytest.approx(1.96 * 0.05) and excess == pytest.approx(0.2 - 1.96 * 0.05)
    # an unknown variance (a holdout figure not stored) adds nothing; no variance: exact
    assert stats.beyond_noise(0.1, float("nan"), 0.03**2)[1] == pytest.approx(1.96 * 0.03)
    assert stats.beyond_noise(0.1) == (pytest.approx(0.1), 0.0)
    assert np.isnan(stats.beyond_noise(float("nan"), 0.01)[0])


def test_a_gap_is_judged_by_how_much_it_outgrew_the_holdouts() -> None:
    assert stats.grown(-0.12, 0.1) == pytest.approx(0.02)  # either sign: the size grew
    assert stats.grown(0.05, -0.1) == 0.0  # smaller than accepted at promotion
    assert stats.grown(-0.07, float("nan")) == pytest.approx(0.07)  # nothing stored


def test_ratio_variance_matches_the_spread_of_simulated_ratios() -> None:
    """What customers did against what was predicted for them (revenue per predicted
    value): the delta-method variance against the spread of many simulated bases."""
    rng = np.random.default_rng(1)
    n, draws = 400, 2000
    predicted = rng.gamma(2.0, 50.0, n)
    # each customer spends a heavy-tailed amount around a third of the prediction
    ratios = [
        (rng.poisson(predicted / 30) * rng.gamma(2.0, 5.0, n)).sum() / predicted.sum()
        for _ in range(draws)
    ]
    y = rng.poisson(predicted / 30) * rng.gamma(2.0, 5.0, n)
    ratio, var = stats.ratio_variance(y, predicted)
    assert ratio == pytest.approx(np.mean(ratios), rel=0.1)
    assert np.sqrt(var) == pytest.approx(np.std(ratios), rel=0.2)
    # rows with a missing side are left out; nothing predicted: unknown
    assert stats.ratio_variance([1.0, np.nan], [2.0, 5.0])[0] == pytest.approx(0.5)
    assert all(np.isnan(v) for v in stats.ratio_variance([1.0], [0.0]))


def _peer_world(
    rng: np.random.Generator, per_group: int, shortfall: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five groups of customers who buy with a probability their prediction sets (the
    groups' mixes of predictions differ, as regions' do); group ``a`` buys ``shortfall``
    less than its prediction says."""
    groups = np.repeat(np.array(list("abcde")), per_group)
    x = rng.beta(np.where(groups == "b", 4.0, 2.0), 2.0)  # group b: more likely buyers
    p = 0.6 * x * np.where(groups == "a", 1 - shortfall, 1.0)  # 60% buy early, everywhere
    return (rng.random(len(x)) < p).astype(float), x, groups


def test_peer_shortfall_holds_its_level_and_finds_a_shortfalling_group() -> None:
    """Under no change the one-sided z of each group is standard normal (the variance is
    right) and Holm keeps the family-wise error at its level, even though group b's
    predictions are higher (the strata match it); a group that buys 6% less is found."""
    rng = np.random.default_rng(7)
    zs, flagged = [], 0
    for _ in range(400):
        found = stats.peer_shortfall(*_peer_world(rng, 2000))
        zs.extend(found["z"])
        flagged += bool((found["p_holm"] < 0.05).any())
    assert np.mean(zs) == pytest.approx(0.0, abs=0.06)
    assert np.std(zs) == pytest.approx(1.0, abs=0.06)
    assert flagged / 400 < 0.08  # family-wise 5% (+ sampling error of 400 draws)
    found = stats.peer_shortfall(*_peer_world(rng, 20_000, shortfall=0.06)).set_index("group")
    assert found.loc["a", "p_holm"] < 1e-3 and (found.drop("a")["p_holm"] > 0.05).all()
    assert found.loc["a", "shortfall"] == pytest.approx(0.06, abs=0.01)


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    adjusted = stats.holm([0.01, 0.04, 0.03, float("nan"), 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 over 4 known: 0.04, 0.09, 0.09 (monotone), 0.5
    assert adjusted[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert np.isnan(adjusted[3])


def test_customers_for_power_matches_simulated_detection() -> None:
    """The rows the power formula asks for flag a 5% shortfall in about 80% of worlds."""
    rng = np.random.default_rng(3)
    probe = stats.peer_shortfall(*_peer_world(rng, 20_000, shortfall=0.05)).set_index("group")
    a = probe.loc["a"]
    variance = a["variance"] * a["rows"] / a["expected"] ** 2
    rows = stats.customers_for_power(0.05, variance, groups=5, alpha=0.01, power=0.8)
    assert stats.peer_power(0.05, variance, rows, groups=5) == pytest.approx(0.8)
    hits = [
        stats.peer_shortfall(*_peer_world(rng, int(rows), 0.05))
        .set_index("group")
        .loc["a", "p_holm"]
        < 0.01
        for _ in range(200)
    ]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.08)


def test_peer_excess_of_counts_within_strata_of_another_prediction() -> None:
    """Complaints per customer, strata by churn risk (``by``), an excess tested as the
    shortfall of ``-y``: a group with a riskier mix is no alarm, one complaining 1.8x is."""
    rng = np.random.default_rng(11)

    def world(per_group: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        groups = np.repeat(np.array(list("abcde")), per_group)
        risk = rng.beta(np.where(groups == "c", 3.0, 2.0), 3.0)  # group c: riskier
        rate = 0.02 * (1 + 4 * risk) * np.where(groups == "a", factor, 1.0)
        return rng.poisson(rate).astype(float), risk, groups

    zs = []
    for _ in range(200):
        y, risk, groups = world(3000, 1.0)
        zs.extend(stats.peer_shortfall(-y, np.ones(len(y)), groups, by=risk)["z"])
    assert np.mean(zs) == pytest.approx(0.0, abs=0.1) and np.std(zs) == pytest.approx(1, abs=0.1)
    y, risk, groups = world(3000, 1.8)
    found = stats.peer_shortfall(-y, np.ones(len(y)), groups, by=risk).set_index("group")
    assert found.loc["a", "p_holm"] < 1e-3 and (found.drop("a")["p_holm"] > 0.05).all()
    excess = found.loc["a", "observed"] / found.loc["a", "expected"] - 1
    assert excess == pytest.approx(0.8, abs=0.2)


def test_gap_vs_past_learns_a_standing_gap_and_finds_one_that_grew() -> None:
    """A group that always complains 1.5x its same-risk peers: against the peers of one
    run it is flagged every time; against its own pooled gap of three earlier runs
    (difference in differences) its z is standard normal (the variances of both terms
    are right) and it is flagged at the level only; once it complains 1.5x more than
    that, it is found. Counts are positive sizes, as the monitor stores them."""
    rng = np.random.default_rng(5)

    def run(factor: float) -> pd.DataFrame:
        groups = np.repeat(np.array(list("abcde")), 3000)
        risk = rng.beta(2.0, 3.0, len(groups))
        rate = 0.03 * (1 + 4 * risk) * np.where(groups == "a", factor, 1.0)
        y = rng.poisson(rate).astype(float)
        found = stats.peer_shortfall(-y, np.ones(len(y)), groups, by=risk)
        found[["observed", "expected"]] = found[["observed", "expected"]].abs()
        return found

    zs, gaps, peers_only = [], [], 0
    for _ in range(300):
        past = pd.concat([run(1.5) for _ in range(3)], ignore_index=True)
        now = run(1.5)
        peers_only += bool(now.set_index("group").loc["a", "p_holm"] < 0.01)
        did = stats.gap_vs_past(now, past, excess=True).set_index("group")
        assert (did["past_runs"] == 3).all()
        zs.append(did.loc["a", "z"])
        gaps.append(did.loc["a", "gap"])
    assert peers_only / 300 > 0.95
    assert np.mean(gaps) == pytest.approx(0.5, abs=0.03)  # the relative excess, 1.5x
    assert np.mean(zs) == pytest.approx(0.0, abs=0.15)
    assert np.std(zs) == pytest.approx(1.0, abs=0.12)
    assert np.mean(np.array(zs) > 2.326) < 0.03  # one-sided 1%, + sampling error
    past = pd.concat([run(1.5) for _ in range(3)], ignore_index=True)
    grown = stats.gap_vs_past(run(2.25), past, excess=True).set_index("group")
    assert grown.loc["a", "p"] < 1e-3 and (grown.drop("a")["p"] > 1e-3).all()
    # a group with no earlier run has nothing to be judged against
    fresh = stats.gap_vs_past(run(1.0), past[past["group"] != "b"], excess=True)
    b = fresh.set_index("group").loc["b"]
    assert b["past_runs"] == 0 and np.isnan(b["z"]) and np.isnan(b["p"])
    # the shortfall direction: fewer buyers than the group's own past gap
    buyers = pd.DataFrame(
        {"group": ["a"], "observed": [900.0], "expected": [1000.0], "variance": [400.0]}
    )
    before = buyers.assign(observed=1000.0)
    z = stats.gap_vs_past(buyers, before)["z"].iloc[0]
    assert z == pytest.approx(0.1 / np.sqrt(2 * 400 / 1000**2))


def test_customers_for_excess_matches_simulated_detection() -> None:
    """A complaint rate that rises 150% against three earlier windows, judged as the rise
    beyond its 95% interval over the past rate (``complaints_vs_past``) at an alert of
    0.5: the rows the formula asks for pass it in about 80% of worlds."""
    rng = np.random.default_rng(13)

    def value(rows: int, effect: float) -> tuple[float, float]:
        now = rng.poisson(0.012 * (1 + effect), rows).astype(float)
        past = rng.poisson(0.012, 3 * rows).astype(float)
        rate, var = stats.ratio_variance(now, np.ones(rows))
        p_rate, p_var = stats.ratio_variance(past, np.ones(3 * rows))
        excess, half = stats.beyond_noise(max(rate - p_rate, 0.0), var, p_var)
        return excess / p_rate, (half / stats.NOISE_Z / p_rate) ** 2 * rows

    _, variance = value(200_000, 1.5)
    rows = stats.customers_for_excess(1.5, variance, alert=0.5)
    hits = [value(int(rows), 1.5)[0] > 0.5 for _ in range(400)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.07)
    assert stats.customers_for_excess(0.4, variance, alert=0.5) == float("inf")
