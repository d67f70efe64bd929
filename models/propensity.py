"""Estimated propensities: P(action | customer features at decision time), for campaign
logs that do not record them -- which is how most CRM exports look (the retailer targeted
the campaign; nobody logged a probability).

Off-policy evaluation and the doubly-robust uplift learner weight each logged decision by
``1 / p(logged action)``. When ``p`` is missing it is estimated from the log itself:

* **Model.** A LightGBM multiclass classifier of the logged action on the decision's
  features (the spec's features as of the decision week, and the churn / value scores
  when those champions exist): the targeting rules of a campaign are a function of what
  was known about the customer then, which is what the features describe.
* **Cross-fitted.** The decisions are split in :data:`FOLDS` folds; each decision's
  propensity comes from a model fitted on the other folds, so no decision is scored by a
  model that saw it (an in-sample classifier is over-confident about its own rows, which
  shrinks the weights exactly where they matter).
* **Calibrated.** Each fold's model is early-stopped and temperature-scaled (the logits
  divided by one factor fitted by log loss) on a random fifth of its training folds:
  boosted probabilities tend to be too sharp, and ``1 / p`` magnifies that.
* Estimates are floored at :data:`FLOOR`, so one near-zero estimate cannot carry an
  estimate alone; :class:`Overlap` says how many decisions came near that.

**Overlap.** Weights are only trustworthy where every action had a fair chance. The
diagnostics are the share of decisions whose propensity for their own action is below
:data:`TINY`, and the effective sample size (Kish: ``(sum w)^2 / sum w^2`` with ``w = 1/p``)
of each action's decisions. Overlap is *poor* when more than :data:`MAX_TINY_SHARE` of the
decisions are tiny, or an action keeps less than :data:`MIN_RELATIVE_ESS` of its decisions
or fewer than :data:`MIN_ESS` effective decisions; the NBA promotion gate refuses a policy
whose evaluation rests on estimated propensities with poor overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from models.churn import FeatureEncoder, booster_predict

FOLDS = 5
#: share of each fold's training rows used for early stopping and the temperature
CALIBRATION_SHARE = 0.2
FLOOR = 1e-3
TINY = 0.01
MAX_TINY_SHARE = 0.05
MIN_RELATIVE_ESS = 0.1
MIN_ESS = 30.0
#: the column saying which rows' propensities were estimated (not logged)
ESTIMATED = "propensity_estimated"

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "learning_rate": 0.1,
    "num_leaves": 7,
    "min_data_in_leaf": 50,
    "lambda_l2": 5.0,
    "num_threads": 1,
    "verbose": -1,
}
NUM_BOOST_ROUND = 200
EARLY_STOPPING = 20


@dataclass(frozen=True)
class Overlap:
    """How well the logged actions cover the customers, from the propensities."""

    decisions: int
    #: decisions whose propensity was estimated (0: all logged)
    estimated: int
    #: share of decisions whose propensity for their own action is below :data:`TINY`
    share_tiny: float
    #: per action: (decisions, effective sample size of their 1/p weights)
    ess: dict[str, tuple[int, float]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        if self.share_tiny > MAX_TINY_SHARE:
            out.append(
                f"{self.share_tiny:.1%} of the decisions had a propensity below {TINY:g} for "
                f"their own action (at most {MAX_TINY_SHARE:.0%} allowed)"
            )
        for action, (n, ess) in sorted(self.ess.items()):
            if n and (ess < MIN_RELATIVE_ESS * n or ess < MIN_ESS):
                out.append(
                    f"action {action!r} keeps an effective sample size of {ess:,.0f} of its "
                    f"{n:,} decisions (at least {MIN_RELATIVE_ESS:.0%} and {MIN_ESS:.0f} needed)"
                )
        return out

    @property
    def poor(self) -> bool:
        return bool(self.problems())

    def summary(self) -> str:
        source = (
            f"estimated for {self.estimated:,} of {self.decisions:,} decisions (cross-fitted, "
            "calibrated model of the action given the features at decision time)"
            if self.estimated
            else "logged"
        )
        ess = ", ".join(f"{a} {e:,.0f}/{n:,}" for a, (n, e) in sorted(self.ess.items()))
        text = (
            f"propensities {source}; overlap: {self.share_tiny:.1%} below {TINY:g}, "
            f"effective sample size per action {ess}"
        )
        problems = self.problems()
        return text + ("; POOR: " + "; ".join(problems) if problems else "")

    def metrics(self) -> dict[str, float]:
        out = {
            "propensity_estimated_share": self.estimated / max(self.decisions, 1),
            "overlap_share_tiny": self.share_tiny,
        }
        out |= {f"overlap_ess_{a}": e for a, (_, e) in self.ess.items()}
        return out


def overlap(actions: Sequence[str] | np.ndarray, propensity: Any, estimated: Any) -> Overlap:
    """The diagnostics of one set of decisions (``estimated``: per row, or None)."""
    a = np.asarray(actions, dtype=object).astype(str)
    p = np.asarray(propensity, dtype="float64")
    est = np.zeros(len(a), dtype=bool) if estimated is None else np.asarray(estimated, dtype=bool)
    ess = {}
    for action in np.unique(a):
        w = 1.0 / p[a == action]
        ess[str(action)] = (len(w), float(w.sum() ** 2 / np.sum(w**2)))
    return Overlap(len(a), int(est.sum()), float(np.mean(p < TINY)) if len(p) else 0.0, ess)


def frame_overlap(frame: pd.DataFrame) -> Overlap:
    """:func:`overlap` of a log frame (``action``, ``propensity``, optional :data:`ESTIMATED`)."""
    estimated = frame[ESTIMATED] if ESTIMATED in frame.columns else None
    return overlap(frame["action"].to_numpy(), frame["propensity"].to_numpy(), estimated)


def cross_fitted(
    X: pd.DataFrame,
    actions: Sequence[str] | np.ndarray,
    seed: int = 0,
    folds: int = FOLDS,
    params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold ``P(action | X)``: ``[n, K]`` and the K action names (sorted)."""
    a = np.asarray(actions, dtype=object).astype(str)
    classes = sorted(set(a))
    if len(classes) == 1:
        return np.ones((len(a), 1)), classes
    counts = pd.Series(a).value_counts()
    if len(a) < 2 * folds or counts.min() < 2:
        raise ValueError(
            f"{len(a)} decisions ({counts.to_dict()}) are too few to estimate propensities: "
            "every action needs a few logged decisions"
        )
    y = np.searchsorted(classes, a)
    encoder = FeatureEncoder.fit(X)
    matrix = encoder.transform(X)
    rng = np.random.default_rng(seed)
    fold = rng.permutation(np.arange(len(a)) % folds)
    out = np.zeros((len(a), len(classes)))
    settings = {**DEFAULT_PARAMS, **(params or {}), "num_class": len(classes), "seed": seed}
    for k in range(folds):
        rest = np.flatnonzero(fold != k)
        calibrate = rng.random(len(rest)) < CALIBRATION_SHARE
        fit_rows, cal_rows = rest[~calibrate], rest[calibrate]
        booster = _fit(settings, matrix, y, fit_rows, cal_rows, encoder.categorical_indices)
        temperature = _temperature(
            booster_predict(booster, matrix[cal_rows], raw_score=True), y[cal_rows]
        )
        rows = np.flatnonzero(fold == k)
        out[rows] = _softmax(booster_predict(booster, matrix[rows], raw_score=True) / temperature)
    return out, classes


def _fit(
    params: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    fit_rows: np.ndarray,
    cal_rows: np.ndarray,
    categorical: list[int],
) -> lgb.Booster:
    train = lgb.Dataset(X[fit_rows], y[fit_rows], categorical_feature=categorical or "auto")
    valid = lgb.Dataset(X[cal_rows], y[cal_rows], reference=train)
    booster = lgb.train(
        dict(params),
        train,
        num_boost_round=NUM_BOOST_ROUND,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)],
    )
    return booster


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The factor dividing the logits that minimises the log loss of ``y``."""
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        p = _softmax(logits / np.exp(log_t))[rows, y]
        return float(-np.mean(np.log(np.maximum(p, 1e-12))))

    found = minimize_scalar(loss, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(found.x))


def fill_propensities(
    frame: pd.DataFrame,
    feature_names: Sequence[str],
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """The log with ``propensity`` estimated where it is missing (cross-fitted over every
    decision of ``frame``) and :data:`ESTIMATED` saying where; logged values are kept."""
    out = frame.copy()
    logged = (
        pd.to_numeric(out["propensity"], errors="coerce")
        if "propensity" in out.columns
        else pd.Series(np.nan, index=out.index)
    )
    missing = logged.isna().to_numpy()
    out[ESTIMATED] = missing
    if not missing.any():
        out["propensity"] = logged.to_numpy(dtype="float64")
        return out
    actions = out["action"].astype(str).to_numpy()
    probs, classes = cross_fitted(out[list(feature_names)], actions, seed, params=params)
    own = probs[np.arange(len(out)), np.searchsorted(classes, actions)]
    estimate = np.clip(own, FLOOR, 1.0)
    out["propensity"] = np.where(missing, estimate, logged.to_numpy(dtype="float64"))
    return out
