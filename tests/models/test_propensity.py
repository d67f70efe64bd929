"""Estimated propensities on a targeted log whose true propensities and rewards are known:
cross-fitted and calibrated estimates close to the truth, an off-policy value resting on
them that covers the true value, and overlap diagnostics that flag a log without overlap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.ope import encode_actions, estimate
from models.propensity import ESTIMATED, cross_fitted, fill_propensities, frame_overlap

ACTIONS = ["call", "email", "no_action"]
FEATURES = ["x1", "x2", "region"]


def targeted_log(n: int, seed: int, sharpness: float = 1.0) -> tuple[pd.DataFrame, np.ndarray]:
    """(log with the true propensity, true mean reward per row and action ``[n, 3]``)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    region = rng.choice(["a", "b"], n)
    logits = np.stack([-0.8 * x1 + 1.0 * x2, 1.2 * x1 + 0.5 * (region == "a"), np.zeros(n)], axis=1)
    z = np.exp(sharpness * logits)
    true_p = z / z.sum(axis=1, keepdims=True)
    drawn = np.minimum((true_p.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), 2)
    # the reward depends on x1, which also drives who is targeted: a confounded log
    mu = np.stack([0.5 + 1.5 * x1, 1.5 + 0.5 * x1 + (x2 > 0), 1.0 + 0.5 * x1], axis=1)
    rows = np.arange(n)
    frame = pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "region": region,
            "action": np.array(ACTIONS)[drawn],
            "true_propensity": true_p[rows, drawn],
            "reward": mu[rows, drawn] + rng.normal(0.0, 1.0, n),
        }
    )
    return frame, mu


@pytest.fixture(scope="module")
def log() -> tuple[pd.DataFrame, np.ndarray]:
    frame, mu = targeted_log(6000, 1)
    filled = fill_propensities(frame.assign(propensity=np.nan), FEATURES, seed=0)
    return filled, mu


def test_estimates_are_close_to_the_true_propensities(log: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, _ = log
    assert frame[ESTIMATED].all()
    error = np.abs(frame["propensity"] - frame["true_propensity"])
    assert error.mean() < 0.05, error.mean()  # 0.039-0.042 over seeds 1-3
    # calibrated: the mean estimate per action matches how often it was logged
    share = frame["action"].value_counts(normalize=True)
    probs, classes = cross_fitted(frame[FEATURES], frame["action"].to_numpy())
    assert classes == ACTIONS
    np.testing.assert_allclose(probs.mean(axis=0), share[classes].to_numpy(), atol=0.02)


@pytest.mark.parametrize("policy", ["always email", "call when x2 > 0, else email"])
def test_dr_on_estimated_propensities_covers_the_true_value(
    log: tuple[pd.DataFrame, np.ndarray], policy: str
) -> None:
    frame, mu = log
    n = len(frame)
    chosen = np.full(n, ACTIONS.index("email"))
    if policy.startswith("call"):
        chosen = np.where(frame["x2"] > 0, ACTIONS.index("call"), chosen)
    pi = np.zeros((n, 3))
    pi[np.arange(n), chosen] = 1.0
    true_value = float((pi * mu).sum(axis=1).mean())
    logged = encode_actions(frame["action"].to_numpy(), ACTIONS)
    reward = frame["reward"].to_numpy()
    # a deliberately poor reward model (each action's mean reward): the weights must do the work
    q = np.tile([reward[logged == j].mean() for j in range(3)], (n, 1))
    estimated = estimate("dr", pi, logged, frame["propensity"], reward, q, n_boot=300, seed=2)
    known = estimate("dr", pi, logged, frame["true_propensity"], reward, q, n_boot=300, seed=2)
    naive = float(np.mean(reward[logged == chosen]))
    print(
        f"\n{policy}: truth {true_value:.3f}; DR estimated {estimated.estimate:.3f} "
        f"[{estimated.lo:.3f}, {estimated.hi:.3f}]; DR known {known.estimate:.3f} "
        f"[{known.lo:.3f}, {known.hi:.3f}]; unweighted {naive:.3f}"
    )
    assert estimated.lo <= true_value <= estimated.hi
    assert known.lo <= true_value <= known.hi
    assert not estimated.lo <= naive <= estimated.hi  # the confounding is real


def test_overlap_is_fine_for_a_targeted_log_and_poor_for_a_deterministic_one() -> None:
    frame, _ = targeted_log(3000, 3)
    fair = frame_overlap(fill_propensities(frame, FEATURES))
    assert not fair.poor and fair.estimated == 3000 and set(fair.ess) == set(ACTIONS)
    assert "estimated for 3,000 of 3,000 decisions" in fair.summary()
    sharp, _ = targeted_log(3000, 3, sharpness=8.0)
    poor = frame_overlap(fill_propensities(sharp.assign(propensity=None), FEATURES))
    assert poor.poor
    assert any("effective sample size" in p or "below 0.01" in p for p in poor.problems())
    assert "POOR" in poor.summary()


def test_logged_propensities_are_kept_and_only_missing_ones_estimated() -> None:
    frame, _ = targeted_log(2000, 4)
    half = frame.assign(propensity=np.where(np.arange(2000) % 2, frame["true_propensity"], np.nan))
    filled = fill_propensities(half, FEATURES)
    kept = ~filled[ESTIMATED]
    assert kept.sum() == 1000
    np.testing.assert_array_equal(
        filled.loc[kept, "propensity"], frame.loc[kept, "true_propensity"]
    )
    assert filled["propensity"].between(0.001, 1.0).all()
    assert frame_overlap(filled).estimated == 1000
