"""Per-action uplift (incremental conversion and revenue against the control) from logs.

The campaign log is not a randomised trial: the logging policy chose actions with
propensities that depend on the customer. Naively comparing treated and control outcomes
then mixes the action's effect with who was chosen. The doubly-robust (DR) learner fixes
this with the logged propensities: outcome models ``mu_a(x)`` per action (cross-fitted),
then the DR pseudo-outcome

    Gamma_a = mu_a(x) - mu_0(x) + 1[A=a] (Y - mu_a(x)) / p - 1[A=0] (Y - mu_0(x)) / p

is unbiased for the individual effect if either the outcome models or the propensities
are right, and a second-stage model regresses it on ``x``. The T-learner (optionally
inverse-propensity weighted) is kept as a baseline for comparison.

The module also holds the uplift evaluation metrics (uplift / Qini curves with IPW).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.contract import NO_ACTION
from models.churn import FeatureEncoder
from models.fastpredict import FAST_ROWS, RowBoosters, fast_predictor

Method = Literal["dr", "t", "ipw-t"]
METHODS: tuple[str, ...] = ("dr", "t", "ipw-t")

#: modest defaults (LightGBM's own parameter names): 100k decisions x 80 features fit in
#: under a minute. One thread per model: OpenMP threads that spin while other processes
#: hold the cores slowed fits ~8x on a busy 2-core machine.
DEFAULT_PARAMS: dict[str, Any] = {
    "num_iterations": 100,
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 100,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.8,
    "lambda_l2": 1.0,
    "num_threads": 1,
    "verbose": -1,
}
#: the DR second stage regresses noisy pseudo-outcomes: few, shallow, heavily pooled trees
#: (on the synthetic benchmark this cut the uplift MSE ~5x against stage-1 settings). The
#: leaf size and round count were chosen on two 20k-customer demo worlds (seeds 11 and 23,
#: not the quality test's): 1,000 rows a leaf and 50 rounds instead of 500 and 100 raised
#: the learned policy's true value from 83.3% / 81.9% to 86.1% / 83.5% of the oracle, with
#: half the trees to evaluate per score
DEFAULT_EFFECT_PARAMS: dict[str, Any] = {
    "num_iterations": 50,
    "learning_rate": 0.02,
    "num_leaves": 7,
    "min_data_in_leaf": 1000,
    "lambda_l2": 10.0,
}
#: parameters that shape the binned dataset rather than the trees
_DATASET_KEYS = frozenset({"max_bin", "min_data_in_bin", "bin_construct_sample_cnt"})


#: models pickled before the encoder was shared name it by this old name
_Encoder = FeatureEncoder


class UpliftPrediction:
    """Per-customer effects of each action against the control (columns follow ``actions``).

    The baselines may be given as the functions computing them, called on first read:
    the live arbitration reads neither, so one customer's score skips the control's
    revenue boosters under the DR learner (no other number depends on them: two of the
    largest of its ~7), and every booster when the catalog's rules allow none of the
    model's actions (:meth:`_OneRow.predict`). The numbers are the same either way.
    """

    __slots__ = (
        "_baseline_conversion",
        "_baseline_revenue",
        "actions",
        "incremental_conversion",
        "incremental_revenue",
    )

    def __init__(
        self,
        actions: list[str],
        incremental_conversion: np.ndarray,  # [n, k]
        incremental_revenue: np.ndarray,  # [n, k]
        baseline_conversion: np.ndarray | Callable[[], np.ndarray],  # [n]
        baseline_revenue: np.ndarray | Callable[[], np.ndarray],  # [n]
    ) -> None:
        self.actions = actions
        self.incremental_conversion = incremental_conversion
        self.incremental_revenue = incremental_revenue
        self._baseline_conversion = baseline_conversion
        self._baseline_revenue = baseline_revenue

    @property
    def baseline_conversion(self) -> np.ndarray:
        """Conversion probability without any action, per customer."""
        return self._read("_baseline_conversion")

    @property
    def baseline_revenue(self) -> np.ndarray:
        """Expected revenue without any action, per customer."""
        return self._read("_baseline_revenue")

    def _read(self, slot: str) -> np.ndarray:
        """A baseline's values, computed (and kept) at the first read when pending."""
        found = getattr(self, slot)
        if callable(found):
            found = found()
            setattr(self, slot, found)
        return found  # type: ignore[no-any-return]

    def _row_of(self, slot: str, at: slice) -> np.ndarray | Callable[[], np.ndarray]:
        """Rows ``at`` of a baseline: still pending when it is."""
        if callable(getattr(self, slot)):
            return lambda: self._read(slot)[at]
        return getattr(self, slot)[at]  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its numbers (a pending baseline computed first)."""
        return (
            UpliftPrediction,
            (
                self.actions,
                self.incremental_conversion,
                self.incremental_revenue,
                self.baseline_conversion,
                self.baseline_revenue,
            ),
        )

    def __repr__(self) -> str:
        return f"UpliftPrediction(actions={self.actions!r}, rows={len(self)})"

    def __len__(self) -> int:
        return len(self.incremental_conversion)

    def index(self, action: str) -> int:
        try:
            return self.actions.index(action)
        except ValueError:
            raise KeyError(f"no uplift estimate for action {action!r}") from None

    def row(self, i: int) -> UpliftPrediction:
        """The ``i``-th customer's prediction alone (one row of each array, as views); a
        baseline still pending stays so (computed when the row's is read)."""
        at = slice(i, i + 1)
        return UpliftPrediction(
            self.actions,
            self.incremental_conversion[at],
            self.incremental_revenue[at],
            self._row_of("_baseline_conversion", at),
            self._row_of("_baseline_revenue", at),
        )

    def to_frame(self, index: pd.Index | None = None) -> pd.DataFrame:
        """Columns ``uplift_conversion_<action>`` / ``uplift_revenue_<action>``."""
        data: dict[str, np.ndarray] = {}
        for j, action in enumerate(self.actions):
            data[f"uplift_conversion_{action}"] = self.incremental_conversion[:, j]
            data[f"uplift_revenue_{action}"] = self.incremental_revenue[:, j]
        return pd.DataFrame(data, index=index)


Model = lgb.Booster | float


class _Trainer:
    """One binned copy of the feature matrix shared by every model of a fit.

    Binning 100k x 80 features costs about as much as training one model, and a DR fit
    trains dozens; subsets of the shared dataset reuse its bins.
    """

    def __init__(self, Xm: np.ndarray, cats: list[int], params: dict[str, Any]) -> None:
        binning = {k: v for k, v in params.items() if k in _DATASET_KEYS}
        self.X = Xm
        self.full = lgb.Dataset(
            Xm,
            categorical_feature=cats or "auto",
            free_raw_data=False,
            params={"verbose": -1, "feature_pre_filter": False, **binning},
        ).construct()

    def fit(
        self,
        rows: np.ndarray | None,
        y: np.ndarray,
        weight: np.ndarray | None,
        objective: str,
        params: dict[str, Any],
        seed: int,
    ) -> Model:
        """A booster on ``rows`` (None: all), or a constant when there is too little to learn."""
        if len(y) < 2 * params.get("min_data_in_leaf", 20) or np.unique(y).size < 2:
            return float(np.average(y, weights=weight)) if len(y) else 0.0
        data = self.full if rows is None else self.full.subset(rows.tolist()).construct()
        data.set_label(y)
        if weight is not None:
            data.set_weight(weight)
        return lgb.train({**params, "objective": objective, "seed": seed}, data)


def _predict(model: Model, X: np.ndarray, threads: int, owner: Any = None) -> np.ndarray:
    """Predictions of one outcome / effect model; one row with an ``owner`` (the model
    holding the booster) takes the fast single-row path."""
    if isinstance(model, float):
        return np.full(len(X), model)
    if owner is not None and 0 < len(X) <= FAST_ROWS:
        return fast_predictor(owner, model).predict_rows(X)[:, 0]
    return np.asarray(model.predict(X, num_threads=threads), dtype="float64")


@dataclass
class _Arm:
    """Outcome models of one action (one per fold): conversion probability and revenue."""

    convert: list[Model]
    revenue: list[Model]

    def predict(
        self, X: np.ndarray, threads: int, owner: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        p = _fold_mean([_predict(m, X, threads, owner) for m in self.convert])
        r = _fold_mean([_predict(m, X, threads, owner) for m in self.revenue])
        return np.clip(p, 0.0, 1.0), r


def _fold_mean(predictions: list[np.ndarray]) -> np.ndarray:
    """``np.mean(predictions, axis=0)``'s numbers (its sum over the folds, then one
    division by their count) without its Python checks (per live score, per arm)."""
    return np.add.reduce(np.asarray(predictions), axis=0) / len(predictions)


#: up to this many folds numpy's sum over them (:func:`_fold_mean`) adds them one after
#: the other onto 0.0; from 8 on it sums in pairwise blocks (another rounding)
_SEQUENTIAL_FOLDS = 7


def _fold_mean_value(values: list[float]) -> float:
    """:func:`_fold_mean` of one row's fold predictions, in plain float arithmetic: the
    same operations in the same order (0.0 first: numpy's sum of -0.0 and -0.0 is 0.0),
    so the same number for up to :data:`_SEQUENTIAL_FOLDS` folds (tests tie them)."""
    total = 0.0
    for value in values:
        total += value
    return total / len(values)


def _clip_value(value: float, low: float, high: float) -> float:
    """``np.clip`` of one float64 as numpy's loop computes it: a NaN bound wins (the lower
    one first), a NaN value stays, and a value equal to a bound stays (``-0.0`` against
    ``0.0``); tests tie it to ``np.clip`` as :meth:`UpliftModel._predict_matrix` calls it."""
    if low != low:
        return low
    if high != high:
        return high
    value = low if value < low else value
    return high if value > high else value


class UpliftModel:
    """Uplift of every logged action against the control, from logged decisions.

    ``method``: ``"dr"`` (doubly-robust learner, cross-fitted over ``n_folds``), ``"t"``
    (T-learner) or ``"ipw-t"`` (T-learner with 1/propensity sample weights). ``params``
    override :data:`DEFAULT_PARAMS` for the outcome models and ``effect_params`` override
    :data:`DEFAULT_EFFECT_PARAMS` for the DR second stage (LightGBM's native names).
    Propensities are clipped at ``min_propensity`` to bound the DR weights.
    """

    def __init__(
        self,
        method: Method = "dr",
        params: dict[str, Any] | None = None,
        random_state: int = 0,
        control: str = NO_ACTION,
        n_folds: int = 2,
        min_propensity: float = 0.01,
        effect_params: dict[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if n_folds < 2:
            raise ValueError(f"cross-fitting needs n_folds >= 2, got {n_folds}")
        self.method = method
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.effect_params = {**self.params, **DEFAULT_EFFECT_PARAMS, **(effect_params or {})}
        self.random_state = random_state
        self.control = control
        self.n_folds = n_folds
        self.min_propensity = min_propensity

    # ---- fit -------------------------------------------------------------------------
    def fit(
        self,
        X: pd.DataFrame,
        action: np.ndarray | pd.Series | list[str],
        propensity: np.ndarray | pd.Series,
        outcome: np.ndarray | pd.Series,
        revenue: np.ndarray | pd.Series,
    ) -> UpliftModel:
        """Learn outcome models per action and (for DR) the second-stage effect models."""
        a, p, y, r = _check_inputs(X, action, propensity, outcome, revenue, self.control)
        p = np.clip(p, self.min_propensity, 1.0)
        self.encoder_ = FeatureEncoder.fit(X)
        Xm = self.encoder_.transform(X)
        self.actions_ = sorted(set(a.tolist()) - {self.control})
        self.feature_names_ = list(self.encoder_.columns)
        trainer = _Trainer(Xm, self.encoder_.categorical_indices, self.params)
        if self.method == "dr":
            self._fit_dr(trainer, a, p, y, r)
        else:
            weight = 1.0 / p if self.method == "ipw-t" else None
            self.arms_ = self._fit_arms(trainer, a, y, r, weight, np.ones(len(a), dtype=bool))
        return self

    def _fit_arms(
        self,
        trainer: _Trainer,
        a: np.ndarray,
        y: np.ndarray,
        r: np.ndarray,
        weight: np.ndarray | None,
        rows: np.ndarray,
    ) -> dict[str, _Arm]:
        """Outcome models per action (control included), fitted on ``rows`` only."""
        arms = {}
        for i, act in enumerate([self.control, *self.actions_]):
            sel = np.flatnonzero(rows & (a == act))
            w = None if weight is None else weight[sel]
            seed = self.random_state + i
            conv = trainer.fit(sel, y[sel], w, "binary", self.params, seed)
            rev = trainer.fit(sel, r[sel], w, "regression", self.params, seed)
            arms[act] = _Arm([conv], [rev])
        return arms

    def _fit_dr(
        self, trainer: _Trainer, a: np.ndarray, p: np.ndarray, y: np.ndarray, r: np.ndarray
    ) -> None:
        """Cross-fitted outcome models, then effect models on the DR pseudo-outcomes."""
        rng = np.random.default_rng(self.random_state)
        fold = rng.integers(0, self.n_folds, size=len(a))
        names = [self.control, *self.actions_]
        mu_y = np.zeros((len(a), len(names)))
        mu_r = np.zeros((len(a), len(names)))
        threads = self.params["num_threads"]
        fold_arms = []
        for k in range(self.n_folds):
            arms = self._fit_arms(trainer, a, y, r, None, fold != k)
            fold_arms.append(arms)
            held = fold == k
            Xh = trainer.X[held]
            for j, name in enumerate(names):
                mu_y[held, j], mu_r[held, j] = arms[name].predict(Xh, threads)
        # the served outcome models average the fold models (no refit on all rows)
        self.arms_ = {
            n: _Arm(
                [m for arms in fold_arms for m in arms[n].convert],
                [m for arms in fold_arms for m in arms[n].revenue],
            )
            for n in names
        }
        self.effects_: dict[str, tuple[Model, Model]] = {}
        for j, name in enumerate(self.actions_, start=1):
            gamma_y = dr_pseudo_outcome(y, a, p, name, self.control, mu_y[:, j], mu_y[:, 0])
            gamma_r = dr_pseudo_outcome(r, a, p, name, self.control, mu_r[:, j], mu_r[:, 0])
            seed = self.random_state + 100 + j
            self.effects_[name] = (
                trainer.fit(None, gamma_y, None, "regression", self.effect_params, seed),
                trainer.fit(None, gamma_r, None, "regression", self.effect_params, seed),
            )

    # ---- predict -----------------------------------------------------------------------
    def predict_outcome(self, X: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per action (control included): (conversion probability, expected revenue)."""
        Xm = self.encoder_.transform(X)
        threads = self.params["num_threads"]
        return {name: arm.predict(Xm, threads, self) for name, arm in self.arms_.items()}

    def predict(
        self,
        X: pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        actions: Collection[str] | None = None,
    ) -> UpliftPrediction:
        """Incremental conversion and revenue of every action against the control
        (``X``: a feature frame, one customer's ``{feature: value}`` dict or a list of them).

        ``actions``: predict only these (the live scorer passes the actions the catalog's
        rules allow the customer: the others' uplift is never part of its answer); the
        rest stay NaN. Each predicted value is the same as without ``actions``.

        One customer takes :class:`_OneRow` (the same numbers, bit for bit: tests tie
        it to :meth:`_predict_matrix`, the definition)."""
        Xm = self.encoder_.transform(X)
        if len(Xm) == 1:
            one = _OneRow.of(self)
            found = None if one is None else one.predict(Xm, actions)
            if found is not None:
                return found
        return self._predict_matrix(Xm, actions)

    def _predict_matrix(
        self, Xm: np.ndarray, actions: Collection[str] | None = None
    ) -> UpliftPrediction:
        """:meth:`predict` of an encoded matrix: every booster over all its rows."""
        threads = self.params["num_threads"]
        base_y, base_r = self.arms_[self.control].predict(Xm, threads, self)
        k = len(self.actions_)
        inc_y = np.zeros((len(Xm), k))
        inc_r = np.zeros((len(Xm), k))
        for j, name in enumerate(self.actions_):
            if actions is not None and name not in actions:
                inc_y[:, j] = inc_r[:, j] = np.nan
                continue
            if self.method == "dr":
                conv, rev = self.effects_[name]
                inc_y[:, j] = _predict(conv, Xm, threads, self)
                inc_r[:, j] = _predict(rev, Xm, threads, self)
            else:
                py, pr = self.arms_[name].predict(Xm, threads, self)
                inc_y[:, j], inc_r[:, j] = py - base_y, pr - base_r
        # a conversion probability cannot move outside [0, 1]
        inc_y = np.clip(inc_y, -base_y[:, None], 1.0 - base_y[:, None])
        return UpliftPrediction(list(self.actions_), inc_y, inc_r, base_y, base_r)


#: uplift model -> its :class:`_OneRow` (or None: it has none), beside (not in) the
#: pickled model, dropped with it
_ONE_ROW: weakref.WeakKeyDictionary[UpliftModel, _OneRow | None] = weakref.WeakKeyDictionary()


class _OneRow:
    """:meth:`UpliftModel._predict_matrix` for one encoded row, in plain float arithmetic.

    The live score predicts one customer: per booster the matrix path paid ~10 us of
    Python around a 1.5-4 us tree walk (one-element arrays, fold means, clips, lookups).
    Here the boosters of the control and of the wanted actions run back to back on the
    row (:class:`RowBoosters`) and the fold means and clips are the same float
    operations on their numbers (:func:`_fold_mean_value`, :func:`_clip_value`). Models
    that are constants are their value.
    """

    def __init__(self, model: UpliftModel) -> None:
        self.arms = model.arms_
        self.actions = list(model.actions_)
        self.dr = model.method == "dr"
        boosters: list[lgb.Booster] = []
        constants: list[float] = []
        slots: dict[int, int] = {}  # id(booster) -> position in the row's values

        def slot(m: Model) -> int:
            if isinstance(m, float):
                constants.append(m)
                return -len(constants)  # resolved after the boosters, below
            if id(m) not in slots:
                slots[id(m)] = len(boosters)
                boosters.append(m)
            return slots[id(m)]

        self.control = model.control
        control = model.arms_[model.control]
        self.convert = [slot(m) for m in control.convert]
        self.revenue = [slot(m) for m in control.revenue]
        #: per action: (its conversion slots, its revenue slots)
        self.models: list[tuple[list[int], list[int]]] = []
        for name in self.actions:
            if self.dr:
                conv, rev = model.effects_[name]
                self.models.append(([slot(conv)], [slot(rev)]))
            else:
                arm = model.arms_[name]
                self.models.append(([slot(m) for m in arm.convert], [slot(m) for m in arm.revenue]))
        count = len(boosters)

        def resolve(slots_: list[int]) -> list[int]:
            return [s if s >= 0 else count - s - 1 for s in slots_]

        self.convert, self.revenue = resolve(self.convert), resolve(self.revenue)
        self.models = [(resolve(c), resolve(r)) for c, r in self.models]
        self.constants = constants
        self.boosters = RowBoosters(boosters)
        self.owner = weakref.ref(model)
        # the DR baseline revenue feeds no other number: computed when read
        needed = self.convert if self.dr else self.convert + self.revenue
        self.base_run = sorted({s for s in needed if s < count})
        self.revenue_run = sorted({s for s in self.revenue if s < count})
        self.convert_run = sorted({s for s in self.convert if s < count})
        self.action_run = [
            [s for s in dict.fromkeys(c + r) if s < count and s not in self.base_run]
            for c, r in self.models
        ]

    @classmethod
    def of(cls, model: UpliftModel) -> _OneRow | None:
        """``model``'s :class:`_OneRow`, built on first use (None: one of its arms averages
        more folds than :func:`_fold_mean_value` matches numpy for)."""
        try:
            found = _ONE_ROW[model]
        except KeyError:
            found = None
        else:
            if found is None or found.arms is model.arms_:
                return found
        arms = model.arms_.values()
        folds = max(max(len(a.convert), len(a.revenue)) for a in arms)
        found = cls(model) if folds <= _SEQUENTIAL_FOLDS else None
        _ONE_ROW[model] = found
        return found

    def predict(self, Xm: np.ndarray, actions: Collection[str] | None) -> UpliftPrediction | None:
        """The prediction for ``Xm`` (one row), or None when another thread is using the
        boosters' handles (the caller takes the matrix path)."""
        wanted = [j for j, name in enumerate(self.actions) if actions is None or name in actions]
        if not wanted:  # the rules allow none of the model's actions: no booster is read
            missing = np.full((1, len(self.actions)), math.nan)
            return UpliftPrediction(
                list(self.actions),
                missing,
                missing.copy(),
                partial(self._baseline, Xm, False),
                partial(self._baseline, Xm, True),
            )
        run = self.base_run.copy()
        for j in wanted:
            run += self.action_run[j]
        values = self.boosters.predict(Xm, run)
        if values is None:
            return None
        values += self.constants
        base_y = _clip_value(_fold_mean_value([values[s] for s in self.convert]), 0.0, 1.0)
        low, high = -base_y, 1.0 - base_y
        # (DR: no effect reads it; the prediction computes it when read)
        base_r = 0.0 if self.dr else _fold_mean_value([values[s] for s in self.revenue])
        inc_y = [math.nan] * len(self.actions)
        inc_r = inc_y.copy()
        for j in wanted:
            conv, rev = self.models[j]
            if self.dr:
                y, r = values[conv[0]], values[rev[0]]
            else:
                y = _clip_value(_fold_mean_value([values[s] for s in conv]), 0.0, 1.0) - base_y
                r = _fold_mean_value([values[s] for s in rev]) - base_r
            inc_y[j] = _clip_value(y, low, high)
            inc_r[j] = r
        return UpliftPrediction(
            list(self.actions),
            np.array([inc_y]),
            np.array([inc_r]),
            np.array([base_y]),
            partial(self._baseline, Xm, True) if self.dr else np.array([base_r]),
        )

    def _baseline(self, Xm: np.ndarray, revenue: bool) -> np.ndarray:
        """The control's conversion (clipped) or revenue for ``Xm`` (one row), as
        :meth:`predict` would have computed it (the matrix path's when the boosters are
        busy)."""
        slots, run = (
            (self.revenue, self.revenue_run) if revenue else (self.convert, self.convert_run)
        )
        values = self.boosters.predict(Xm, run)
        if values is None:
            owner = self.owner()
            threads = 1 if owner is None else owner.params["num_threads"]
            return self.arms[self.control].predict(Xm, threads, owner)[1 if revenue else 0]
        values += self.constants
        mean = _fold_mean_value([values[s] for s in slots])
        return np.array([mean if revenue else _clip_value(mean, 0.0, 1.0)])


def dr_pseudo_outcome(
    y: np.ndarray,
    a: np.ndarray,
    p: np.ndarray,
    action: str,
    control: str,
    mu_a: np.ndarray,
    mu_0: np.ndarray,
) -> np.ndarray:
    """Doubly-robust individual effect of ``action`` vs ``control`` (``p``: logged propensity)."""
    treated = (a == action).astype("float64")
    untreated = (a == control).astype("float64")
    return mu_a - mu_0 + treated * (y - mu_a) / p - untreated * (y - mu_0) / p


def _check_inputs(
    X: pd.DataFrame,
    action: Any,
    propensity: Any,
    outcome: Any,
    revenue: Any,
    control: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = len(X)
    a = np.asarray(action, dtype=object).astype(str)
    p = np.asarray(propensity, dtype="float64")
    y = np.asarray(outcome, dtype="float64")
    r = np.asarray(revenue, dtype="float64")
    for name, arr in (("action", a), ("propensity", p), ("outcome", y), ("revenue", r)):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) like X")
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("propensity must be in (0, 1] for every logged decision")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("outcome must be 0/1 without missing values")
    if np.isnan(r).any():
        raise ValueError("revenue has missing values (use 0 for no revenue)")
    if not (a == control).any():
        raise ValueError(f"no logged decision for the control {control!r}")
    return a, p, y, r


# ---- metrics ---------------------------------------------------------------------------
@dataclass(frozen=True)
class UpliftCurve:
    """Incremental outcome per customer of the population when treating the top fraction."""

    fraction: np.ndarray
    gain: np.ndarray

    @property
    def auuc(self) -> float:
        """Area under the uplift curve (trapezoid over the population fraction)."""
        return float(np.trapezoid(self.gain, self.fraction))

    @property
    def qini(self) -> float:
        """Area between the curve and random targeting: > 0 means better than random."""
        random = self.fraction * self.gain[-1]
        return float(np.trapezoid(self.gain - random, self.fraction))


def uplift_curve(
    uplift_score: np.ndarray,
    treated: np.ndarray,
    outcome: np.ndarray,
    propensity: np.ndarray | None = None,
    n_points: int = 100,
) -> UpliftCurve:
    """Uplift curve of one action vs control, IPW-corrected with the logged propensities.

    Rows are those where the action or the control was logged. Customers are sorted by
    score; at each cut the gain is (weighted treated mean - weighted control mean) times
    the fraction targeted, i.e. incremental outcomes per customer of the population.
    """
    s = np.asarray(uplift_score, dtype="float64")
    t = np.asarray(treated, dtype=bool)
    y = np.asarray(outcome, dtype="float64")
    w = np.ones_like(s) if propensity is None else 1.0 / np.asarray(propensity, dtype="float64")
    order = np.argsort(-s, kind="stable")
    t, y, w = t[order], y[order], w[order]
    wt, wc = np.cumsum(w * t), np.cumsum(w * ~t)
    yt, yc = np.cumsum(w * y * t), np.cumsum(w * y * ~t)
    cuts = np.unique(np.linspace(0, len(s), n_points + 1).astype(int)[1:]) - 1
    mean_t = np.divide(yt[cuts], wt[cuts], out=np.zeros(len(cuts)), where=wt[cuts] > 0)
    mean_c = np.divide(yc[cuts], wc[cuts], out=np.zeros(len(cuts)), where=wc[cuts] > 0)
    share = (wt[cuts] + wc[cuts]) / (wt[-1] + wc[-1])
    gain = (mean_t - mean_c) * share
    return UpliftCurve(np.concatenate([[0.0], share]), np.concatenate([[0.0], gain]))
