"""Off-policy evaluation on synthetic bandit logs whose true policy values are known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from features.control import ControlGroup
from models.ope import (
    OPEResult,
    encode_actions,
    estimate,
    evaluate_policy,
    promotion_gate,
    random_policy,
    reward_model_matrix,
    single_action_policy,
)

K = 4


@dataclass
class Bandit:
    mean_reward: np.ndarray  # [n, K] true expected reward
    logging: np.ndarray  # [n, K] logging policy
    action: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray


def make_bandit(n: int, seed: int) -> Bandit:
    """Context-dependent rewards; the logger favours action 0 for low x and 3 for high x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    mean = np.stack([1.0 + 0 * x, 1.5 + x, 2.0 - x, 0.5 + 1.5 * np.abs(x)], axis=1)
    logits = 0.6 * np.stack([-x, 0 * x, 0.5 + 0 * x, x], axis=1)
    logging = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    action = (logging.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1)
    reward = mean[np.arange(n), action] + rng.normal(0, 1.0, n)
    return Bandit(mean, logging, action, logging[np.arange(n), action], reward)


def target_policy(b: Bandit) -> np.ndarray:
    """A stochastic candidate: mostly the truly best action, some mass on action 1."""
    best = b.mean_reward.argmax(axis=1)
    pi = np.full(b.mean_reward.shape, 0.1 / K)
    pi[np.arange(len(best)), best] += 0.7
    pi[:, 1] += 0.2
    return pi


def biased_reward_model(b: Bandit) -> np.ndarray:
    """A deliberately wrong reward model: DR must stay unbiased through the propensities."""
    return 0.8 * b.mean_reward + 0.2


def _estimates(seed: int) -> tuple[float, dict[str, OPEResult]]:
    b = make_bandit(3_000, seed)
    pi = target_policy(b)
    truth = float((pi * b.mean_reward).sum(axis=1).mean())
    results = evaluate_policy(
        pi, b.action, b.propensity, b.reward, q=biased_reward_model(b), seed=seed
    )
    return truth, results


@pytest.fixture(scope="module")
def replications() -> list[tuple[float, dict[str, OPEResult]]]:
    return [_estimates(seed) for seed in range(40)]


@pytest.mark.parametrize("method", ["ips", "snips", "dr"])
def test_estimators_are_unbiased_and_cover_the_truth(
    replications: list[tuple[float, dict[str, OPEResult]]], method: str
) -> None:
    truth = np.array([t for t, _ in replications])
    est = np.array([r[method].estimate for _, r in replications])
    covered = np.mean([r[method].lo <= t <= r[method].hi for t, r in replications])
    error = est - truth
    print(f"{method}: bias {error.mean():+.4f} sd {est.std():.4f} coverage {covered:.2f}")
    assert covered >= 0.8
    assert abs(error.mean()) < 3 * error.std() / np.sqrt(len(error)) + 0.01


def test_dr_has_lower_variance_than_ips(
    replications: list[tuple[float, dict[str, OPEResult]]],
) -> None:
    error = {m: np.array([r[m].estimate - t for t, r in replications]) for m in ("ips", "dr")}
    width = {m: np.mean([r[m].hi - r[m].lo for _, r in replications]) for m in ("ips", "dr")}
    print(f"sd ips {error['ips'].std():.4f} dr {error['dr'].std():.4f}; width {width}")
    assert error["dr"].std() < 0.8 * error["ips"].std()
    assert width["dr"] < 0.8 * width["ips"]


def test_logging_policy_and_effective_sample_size() -> None:
    b = make_bandit(2_000, seed=5)
    on_policy = estimate("snips", b.logging, b.action, b.propensity, b.reward)
    assert on_policy.estimate == pytest.approx(b.reward.mean())
    assert on_policy.effective_sample_size == pytest.approx(2_000)
    assert on_policy.n == 2_000
    narrow = estimate(
        "ips", single_action_policy(3, np.ones((2_000, K), bool)), b.action, b.propensity, b.reward
    )
    assert narrow.effective_sample_size < 0.5 * 2_000


def test_deterministic_policy_equals_one_hot() -> None:
    b = make_bandit(1_000, seed=2)
    chosen = b.mean_reward.argmax(axis=1)
    one_hot = np.eye(K)[chosen]
    q = biased_reward_model(b)
    by_index = estimate("dr", chosen, b.action, b.propensity, b.reward, q, k=K)
    by_matrix = estimate("dr", one_hot, b.action, b.propensity, b.reward, q)
    assert by_index == by_matrix
    with pytest.raises(ValueError, match="needs the number of actions"):
        estimate("ips", chosen, b.action, b.propensity, b.reward)


def test_bootstrap_is_seeded() -> None:
    b = make_bandit(1_000, seed=3)
    pi = target_policy(b)
    first = estimate("ips", pi, b.action, b.propensity, b.reward, seed=1)
    assert estimate("ips", pi, b.action, b.propensity, b.reward, seed=1) == first
    other = estimate("ips", pi, b.action, b.propensity, b.reward, seed=2)
    assert (other.lo, other.hi) != (first.lo, first.hi)
    assert other.estimate == first.estimate
    assert first.lo < first.estimate < first.hi


def test_policy_helpers_respect_eligibility() -> None:
    eligible = np.array([[True, True, False, True], [True, False, False, False]])
    uniform = random_policy(eligible)
    assert np.allclose(uniform, np.array([[1, 1, 0, 1], [3, 0, 0, 0]]) / 3)
    single = single_action_policy(1, eligible)
    assert np.array_equal(single, [[0, 1, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="at least one eligible"):
        random_policy(np.zeros((1, K), bool))


def test_input_validation() -> None:
    b = make_bandit(100, seed=4)
    with pytest.raises(ValueError, match="sum to 1"):
        estimate("ips", b.logging * 0.5, b.action, b.propensity, b.reward)
    with pytest.raises(ValueError, match=r"propensities must be in \(0, 1\]"):
        estimate("snips", b.logging, b.action, b.propensity * 0, b.reward)
    with pytest.raises(ValueError, match="reward model q has shape"):
        estimate("dr", b.logging, b.action, b.propensity, b.reward, np.zeros((100, 2)))
    with pytest.raises(ValueError, match="reward has shape"):
        estimate("ips", b.logging, b.action, b.propensity, b.reward[:-1])
    with pytest.raises(ValueError, match="needs a reward model q"):
        estimate("dr", b.logging, b.action, b.propensity, b.reward)
    with pytest.raises(ValueError, match="it does not take"):
        estimate("ips", b.logging, b.action, b.propensity, b.reward, np.zeros((100, K)))


def test_action_encoding_and_reward_model_matrix() -> None:
    actions = ["no_action", "cross_sell", "new_offer"]
    assert encode_actions(["cross_sell", "no_action"], actions).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\['mystery'\]"):
        encode_actions(["mystery"], actions)
    outcomes = {
        "no_action": (np.array([0.1, 0.2]), np.array([5.0, 6.0])),
        "cross_sell": (np.array([0.3, 0.4]), np.array([9.0, 7.0])),
    }
    q = reward_model_matrix(outcomes, actions, [0.0, 0.5, 2.0])
    # the never-logged action falls back to the control's revenue
    assert np.allclose(q, [[5.0, 8.5, 3.0], [6.0, 6.5, 4.0]])


def test_promotion_gate() -> None:
    candidate = OPEResult("dr", estimate=1.2, lo=1.05, hi=1.35, n=500, effective_sample_size=300)
    ok, reason = promotion_gate(candidate, champion_estimate=1.0)
    assert ok and "promote" in reason and "1.0500" in reason
    ok, reason = promotion_gate(candidate, champion_estimate=1.1)
    assert not ok and "keep champion" in reason
    ok, _ = promotion_gate(candidate, champion_estimate=1.0, margin=0.1)
    assert not ok


def test_gate_on_estimates_promotes_the_better_policy_only() -> None:
    b = make_bandit(3_000, seed=8)
    q = biased_reward_model(b)
    champion = float(b.reward.mean())  # the logging policy's own value, on-policy
    better = estimate("dr", target_policy(b), b.action, b.propensity, b.reward, q)
    worse = estimate("dr", np.zeros(3_000, int), b.action, b.propensity, b.reward, q, k=K)
    assert promotion_gate(better, champion)[0]
    assert not promotion_gate(worse, champion)[0]


def test_the_control_groups_mixture_propensity_keeps_ips_unbiased() -> None:
    """With a control group of share s (action 0 = no_action), the logged propensity is
    ``s [a = 0] + (1 - s) p(a|x)`` (features/control.py). IPS over all rows, control
    included, then recovers the target policy's value; logging 1 for control rows (the
    conditional) or ``(1 - s) p`` for treated ones alone counts no_action twice."""
    share = 0.2
    mixture, conditional = [], []
    truths = []
    for seed in range(30):
        b = make_bandit(20_000, seed)
        rng = np.random.default_rng(1000 + seed)
        control = rng.random(len(b.action)) < share
        action = np.where(control, 0, b.action)
        rows = np.arange(len(action))
        reward = b.mean_reward[rows, action] + rng.normal(0, 1.0, len(action))
        mixed = ControlGroup(share, "s").logging_probabilities(b.logging)
        pi = 0.5 * target_policy(b)
        pi[:, 0] += 0.5  # a policy that often does nothing: where the rule matters
        truths.append(float((pi * b.mean_reward).sum(axis=1).mean()))
        mixture.append(estimate("ips", pi, action, mixed[rows, action], reward, n_boot=10).estimate)
        naive = np.where(control, 1.0, (1 - share) * b.logging[rows, action])
        conditional.append(estimate("ips", pi, action, naive, reward, n_boot=10).estimate)
    truth = float(np.mean(truths))
    se = float(np.std(mixture) / np.sqrt(len(mixture)))
    assert abs(np.mean(mixture) - truth) < 3 * se + 0.01
    assert abs(np.mean(conditional) - truth) > 10 * se  # the double count shows
