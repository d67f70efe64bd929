"""Sampling weights (training sets sampled on Spark): a weighted metric equals the metric
of the rows repeated as often as their weight, and the allocation's shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.metrics import classification_metrics, regression_metrics
from training.spark_datasets import allocate


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    n = 400
    y = (rng.random(n) < 0.3).astype(float)
    p = np.clip(0.3 * y + 0.6 * rng.random(n), 0, 1)
    spend = rng.gamma(1.0, 50.0, n) * (rng.random(n) < 0.4)
    weight = rng.integers(1, 5, n).astype(float)
    return y, p, spend, weight


def test_weighted_metrics_equal_the_rows_repeated(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    y, p, spend, weight = rows
    times = weight.astype(int)
    weighted = classification_metrics(y, p, weight=weight)
    repeated = classification_metrics(np.repeat(y, times), np.repeat(p, times))
    for metric in ("auc", "pr_auc", "base_rate", "brier", "log_loss"):
        assert weighted[metric] == pytest.approx(repeated[metric], rel=1e-9), metric
    guess = spend * 0.8 + 10.0 * p
    weighted = regression_metrics(spend, guess, weight=weight)
    repeated = regression_metrics(np.repeat(spend, times), np.repeat(guess, times))
    for metric in ("mae", "rmse", "spearman", "total_error"):
        assert weighted[metric] == pytest.approx(repeated[metric], rel=1e-9), metric


def test_unit_weights_change_nothing(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    y, p, spend, _ = rows
    ones = np.ones(len(y))
    assert classification_metrics(y, p, weight=ones) == pytest.approx(classification_metrics(y, p))
    guess = spend + p
    assert regression_metrics(spend, guess, weight=ones) == pytest.approx(
        regression_metrics(spend, guess)
    )


def test_weights_must_be_positive_and_finite() -> None:
    with pytest.raises(ValueError, match="weights"):
        classification_metrics([0, 1], [0.2, 0.7], weight=[1.0, 0.0])


def test_allocation_keeps_the_positives_up_to_their_share() -> None:
    sizes = pd.DataFrame(
        {"_cut": [1, 1, 2, 2], "_stratum": [0, 1, 0, 1], "rows": [9000, 500, 9000, 1500]}
    )
    out = allocate(sizes, limit=4000)
    assert out["keep"].tolist() == [1000, 500, 1000, 1500]  # every churner, the rest shared
    out = allocate(sizes, limit=2000)  # positives over half the limit: 1000 for them
    assert out["keep"].tolist() == [500, 250, 500, 750]
    assert (out["share"] == out["keep"] / out["rows"]).all()


def test_no_stratum_can_leave_the_weights() -> None:
    """A limit too small to give every stratum a floor is refused, naming the setting; a
    stratum drawn empty is an error, never a population silently dropped."""
    from training.spark_datasets import weigh

    sizes = pd.DataFrame({"_cut": [1] * 11, "_stratum": list(range(11)), "rows": [1000] * 11})
    with pytest.raises(ValueError, match="RAPPORT_TRAIN_MAX_ROWS"):
        allocate(sizes, limit=300)
    shares = allocate(sizes, limit=5000)
    drawn = pd.DataFrame({"_cut": [1] * 10, "_stratum": list(range(10)), "x": range(10)})
    with pytest.raises(ValueError, match="drew no row"):
        weigh(drawn, shares)
    full = pd.concat([drawn, pd.DataFrame({"_cut": [1], "_stratum": [10], "x": [10]})])
    assert weigh(full, shares)["weight"].sum() == sizes["rows"].sum()


def test_the_report_plots_a_sampled_holdout_as_the_base() -> None:
    """The plots beside weighted metrics draw the rows resampled by weight: a stratum
    kept at a tenth (weight 10) weighs in the curves as in the base."""
    from training.jobs import _Scored

    y = np.r_[np.ones(100), np.zeros(100)]  # 100 churners kept whole, 100 of 1,000 others
    weight = np.r_[np.ones(100), np.full(100, 10.0)]
    scores = {"model": np.linspace(0, 1, 200)}
    drawn = _Scored.of(y, scores, weight)
    assert len(drawn.y) == 200 and abs(drawn.y.mean() - 100 / 1100) < 0.06
    assert set(drawn.scores["model"]) <= set(scores["model"])
    plain = _Scored.of(y, scores, None)
    assert plain.y is y and plain.scores is scores
