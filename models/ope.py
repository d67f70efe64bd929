"""Off-policy evaluation: what a candidate policy would have earned, from the logs alone.

Before a new NBA policy replaces the champion, its value is estimated on decisions the old
(logging) policy made, using the logged propensities:

* IPS -- reweight each logged reward by ``pi(a|x) / p``: unbiased, high variance;
* SNIPS -- IPS normalised by the mean weight: slightly biased, much steadier;
* DR (doubly robust) -- a reward model's prediction for the candidate's choices plus the
  IPS-weighted residual of the logged action: unbiased if either the propensities or the
  reward model are right, and usually far less variance than IPS.

Every estimator is a ratio of means of per-decision terms, so the bootstrap resamples
those terms (seeded, vectorised in chunks) for percentile confidence intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

import numpy as np

#: bootstrap draws are processed in chunks of at most this many resampled terms
_CHUNK_TERMS = 4_000_000


@dataclass(frozen=True)
class OPEResult:
    """An estimate of a policy's mean reward per decision, with its bootstrap interval."""

    method: str
    estimate: float
    lo: float
    hi: float
    n: int
    effective_sample_size: float

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "method": self.method,
            "estimate": self.estimate,
            "lo": self.lo,
            "hi": self.hi,
            "n": self.n,
            "effective_sample_size": self.effective_sample_size,
        }


def encode_actions(
    actions: Sequence[str] | np.ndarray, catalog_actions: Sequence[str]
) -> np.ndarray:
    """Logged action ids -> column indices of ``pi``; unknown actions are an error."""
    lookup = {a: i for i, a in enumerate(catalog_actions)}
    logged = np.asarray(actions, dtype=object)
    unknown = sorted({str(a) for a in logged} - set(lookup))
    if unknown:
        raise ValueError(f"logged actions {unknown} are not in the policy's actions")
    return np.array([lookup[a] for a in logged], dtype=np.int64)


def reward_model_matrix(
    outcomes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    actions: Sequence[str],
    costs: Sequence[float],
) -> np.ndarray:
    """``q[n, K]`` = expected revenue - cost per action, from ``UpliftModel.predict_outcome``.

    An action without an outcome model (never logged) gets the control's revenue.
    """
    fallback = next(iter(outcomes.values()))[1]
    columns = [
        np.asarray(outcomes[a][1] if a in outcomes else fallback, dtype="float64") - c
        for a, c in zip(actions, costs, strict=True)
    ]
    return np.stack(columns, axis=1)


def _as_matrix(pi: np.ndarray, k: int | None) -> np.ndarray:
    """Probabilities ``[n, K]`` as given, or chosen indices ``[n]`` as a one-hot matrix."""
    pi = np.asarray(pi)
    if pi.ndim == 2:
        probs = pi.astype("float64")
        if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-6) or (probs < 0).any():
            raise ValueError("policy probabilities must be >= 0 and sum to 1 in every row")
        return probs
    if k is None:
        raise ValueError("a deterministic policy (action indices) needs the number of actions k")
    onehot = np.zeros((len(pi), k))
    onehot[np.arange(len(pi)), pi.astype(np.int64)] = 1.0
    return onehot


def _inputs(
    pi: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    k: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    probs = _as_matrix(pi, k)
    a = np.asarray(logged_action, dtype=np.int64)
    p = np.asarray(logged_propensity, dtype="float64")
    r = np.asarray(reward, dtype="float64")
    n = len(probs)
    for name, arr in (("logged_action", a), ("logged_propensity", p), ("reward", r)):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("logged propensities must be in (0, 1]")
    if a.min(initial=0) < 0 or a.max(initial=0) >= probs.shape[1]:
        raise ValueError("logged action index outside the policy's actions")
    if np.isnan(r).any():
        raise ValueError("reward has missing values")
    return probs, a, p, r


def _importance_weights(probs: np.ndarray, a: np.ndarray, p: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(a)), a] / p


def kish_ess(w: np.ndarray) -> float:
    """Kish effective sample size of the importance weights."""
    total = float(np.sum(w**2))
    return float(np.sum(w) ** 2 / total) if total > 0 else 0.0


def _bootstrap(
    num: np.ndarray,
    den: np.ndarray,
    n_boot: int,
    alpha: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of ``sum(num) / sum(den)`` over resampled decisions."""
    n = len(num)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_TERMS // max(n, 1))
    stats = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        stats.append(num[idx].sum(axis=1) / den[idx].sum(axis=1))
    values = np.concatenate(stats)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


#: the estimators :func:`estimate` knows, by name
Method = Literal["ips", "snips", "dr"]


def estimate(
    method: Method,
    pi: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray | None = None,
    k: int | None = None,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> OPEResult:
    """One estimate of ``pi``'s mean reward, as ``sum(num) / sum(den)`` of per-decision terms.

    * ``ips``: ``mean(pi(a|x) / p * r)``;
    * ``snips``: ``sum(w r) / sum(w)``;
    * ``dr`` (needs the reward model ``q[n, K]``):
      ``mean(sum_a pi(a|x) q(x, a) + pi(a_i|x) / p (r - q(x, a_i)))``.
    """
    probs, a, p, r = _inputs(pi, logged_action, logged_propensity, reward, k)
    w = _importance_weights(probs, a, p)
    if method == "dr":
        if q is None:
            raise ValueError("the doubly robust estimate needs a reward model q")
        q = np.asarray(q, dtype="float64")
        if q.shape != probs.shape:
            raise ValueError(f"reward model q has shape {q.shape}, expected {probs.shape}")
        num, den = (probs * q).sum(axis=1) + w * (r - q[np.arange(len(a)), a]), np.ones_like(w)
    elif method not in ("ips", "snips") or q is not None:
        raise ValueError(f"unknown estimator {method!r} or a reward model q it does not take")
    else:
        num, den = w * r, (w if method == "snips" else np.ones_like(w))
    lo, hi = _bootstrap(num, den, n_boot, alpha, seed)
    return OPEResult(method, float(num.sum() / den.sum()), lo, hi, len(num), kish_ess(w))


class EstimateOptions(TypedDict, total=False):
    """:func:`estimate`'s optional arguments, which :func:`evaluate_policy` passes on."""

    k: int | None
    n_boot: int
    alpha: float
    seed: int


def evaluate_policy(
    pi: np.ndarray,
    logged_action: np.ndarray,
    logged_propensity: np.ndarray,
    reward: np.ndarray,
    q: np.ndarray | None = None,
    **options: Unpack[EstimateOptions],
) -> dict[str, OPEResult]:
    """IPS, SNIPS and (given a reward model ``q``) DR estimates of one policy."""
    methods: tuple[Method, ...] = ("ips", "snips") if q is None else ("ips", "snips", "dr")
    args = (pi, logged_action, logged_propensity, reward)
    return {m: estimate(m, *args, q if m == "dr" else None, **options) for m in methods}


def random_policy(eligible: np.ndarray) -> np.ndarray:
    """Uniform over each customer's eligible actions (a row with none eligible is an error)."""
    mask = np.asarray(eligible, dtype=bool)
    counts = mask.sum(axis=1, keepdims=True)
    if (counts == 0).any():
        raise ValueError("every customer needs at least one eligible action (the control)")
    return mask / counts


def single_action_policy(action: int, eligible: np.ndarray, fallback: int = 0) -> np.ndarray:
    """Always ``action`` where eligible, else ``fallback`` (the control, column 0 by default)."""
    mask = np.asarray(eligible, dtype=bool)
    chosen = np.where(mask[:, action], action, fallback)
    pi = np.zeros(mask.shape)
    pi[np.arange(len(mask)), chosen] = 1.0
    return pi


def promotion_gate(
    candidate: OPEResult, champion_estimate: float, margin: float = 0.0
) -> tuple[bool, str]:
    """Promote only if the candidate's lower bound beats the champion (by ``margin``)."""
    bar = champion_estimate + margin
    if candidate.lo > bar:
        return True, (
            f"promote: candidate {candidate.method} lower bound {candidate.lo:.4f} > "
            f"champion {champion_estimate:.4f} + margin {margin:g}"
        )
    return False, (
        f"keep champion: candidate {candidate.method} lower bound {candidate.lo:.4f} <= "
        f"champion {champion_estimate:.4f} + margin {margin:g} "
        f"(estimate {candidate.estimate:.4f}, n={candidate.n}, "
        f"ESS={candidate.effective_sample_size:.0f})"
    )
