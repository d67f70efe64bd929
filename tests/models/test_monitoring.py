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
